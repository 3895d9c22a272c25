"""Running ``python -m manifests`` commands in the test process, on deploy configs of the tests' own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from manifests.__main__ import main
from tests.manifests.helpers import MANIFESTS

Doc = dict[str, Any]


def _merge(base: Doc, changes: Doc) -> Doc:
    return {**base, **{k: _merge(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in changes.items()}}


def deploy_config(tmp_path: Path, example: str, name: str, **changes: Any) -> Path:
    """An example config under another name, in namespaces of that name (``<name>``, ``<name>-kafka``)."""
    raw = yaml.safe_load((MANIFESTS / "examples" / f"{example}.yaml").read_text())
    raw = _merge(raw, {"name": name, "namespace": name, "kafka": {"namespace": f"{name}-kafka"}, **changes})
    path = tmp_path / f"{name}-{len(list(tmp_path.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], kubeconfig: Path) -> None:
        self.capsys, self.kubeconfig = capsys, kubeconfig

    def __call__(self, command: str, config: Path, *args: str, kubeconfig: Path | None = None) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of ``python -m manifests COMMAND --config CONFIG ARGS``."""
        self.capsys.readouterr()
        rc = main([command, "--config", str(config), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args])
        out, err = self.capsys.readouterr()
        return rc, out, err
