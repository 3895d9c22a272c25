"""Read a server's Prometheus metrics as the tests need them."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(url + "/metrics", timeout=10).text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float | None:
    for sample_labels, sample_value in samples.get(name, []):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return sample_value
    return None


@dataclass(frozen=True)
class BatchStats:
    count: float
    sum: float
    multi: float
    """Batches of more than one item."""


def batch_histogram(url: str, model: str) -> BatchStats:
    samples = scrape(url)
    count = value(samples, "kzero_batch_size_count", model=model) or 0.0
    singles = value(samples, "kzero_batch_size_bucket", model=model, le="1.0") or 0.0
    return BatchStats(count, value(samples, "kzero_batch_size_sum", model=model) or 0.0, count - singles)
