"""The renderer: the committed tree is current, the CLI works, overlays build with kustomize as rendered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from manifests.config import load_config
from manifests.render import MANAGED_DIRS, OVERLAYS, overlay_documents, render_tree, write_tree
from tests.manifests.helpers import COMMITTED_SOURCE, EXAMPLES, MANIFESTS, REPO_ROOT

RENDER = [sys.executable, "-m", "manifests", "render"]


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for d in MANAGED_DIRS for p in sorted((root / d).rglob("*.yaml"))}


def test_committed_tree_is_what_the_example_config_renders(tmp_path: Path) -> None:
    source = str(COMMITTED_SOURCE.relative_to(REPO_ROOT))
    write_tree(render_tree(load_config(COMMITTED_SOURCE)), tmp_path, source)
    assert _tree(MANIFESTS) == _tree(tmp_path), (
        f"manifests/ is stale: run `python -m manifests render --config {source} --out manifests`")


def test_cli_writes_a_tree_and_prints_an_overlay(tmp_path: Path) -> None:
    config = MANIFESTS / "examples" / "embed.yaml"
    written = subprocess.run([*RENDER, "--config", str(config), "--out", str(tmp_path)], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True)
    assert "kubectl apply -k" in written.stdout
    assert (tmp_path / "overlays" / "gpu" / "kustomization.yaml").is_file()
    printed = subprocess.run([*RENDER, "--config", str(config), "--overlay", "kafka-worker"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True)
    docs = list(yaml.safe_load_all(printed.stdout))
    assert docs == overlay_documents(load_config(config), "kafka-worker")


def test_rerendering_replaces_stale_files(tmp_path: Path) -> None:
    stale = tmp_path / "base" / "inferenceservice-old.yaml"
    stale.parent.mkdir(parents=True)
    stale.write_text("kind: Old\n")
    keep = tmp_path / "examples" / "mine.yaml"
    keep.parent.mkdir()
    keep.write_text("name: mine\n")
    write_tree(render_tree(load_config(COMMITTED_SOURCE)), tmp_path, "x.yaml")
    assert not stale.exists()
    assert keep.exists()  # only the rendered directories are managed


def test_cli_names_the_bad_field(tmp_path: Path) -> None:
    bad = tmp_path / "deploy.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "namespace": "y", "image": "i",
                                   "predictor": {"model_name": "m", "task": "embed", "model_id": "all-minilm-l6-v2",
                                                 "max_batch_size": 64, "max_queue": 32}}))
    done = subprocess.run([*RENDER, "--config", str(bad), "--overlay", "cpu"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "predictor" in done.stderr and "max_queue" in done.stderr, done.stderr


def _key(doc: dict) -> tuple[str, str, str, str]:
    meta = doc["metadata"]
    return doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"]


@pytest.mark.parametrize("config_path", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_builds_each_overlay_as_rendered(
    kustomize: list[str], tmp_path: Path, config_path: Path, overlay: str
) -> None:
    config = load_config(config_path)
    write_tree(render_tree(config), tmp_path, str(config_path))
    built = subprocess.run([*kustomize, str(tmp_path / "overlays" / overlay)], capture_output=True, text=True,
                           check=False)
    assert built.returncode == 0, built.stderr
    from_kustomize = {_key(d): d for d in yaml.safe_load_all(built.stdout) if d}
    from_python = {_key(d): d for d in overlay_documents(config, overlay)}
    assert from_kustomize == from_python
