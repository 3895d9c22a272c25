"""Session fixtures: a real kube-apiserver (with etcd) holding the operators' upstream CRDs, and on
demand the real Knative Serving controller, webhook and autoscaler with kube-controller-manager and
kwok. Everything runs in a loopback-only network namespace (tests/cluster/netns.py); the binaries
come from ``scripts/kube.sh build``, which builds whatever is missing (minutes, the first time: the
first test here then gets a longer timeout, and the build's progress is printed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.dynamic import DynamicClient

from manifests.config import load_config
from tests.cluster import crds
from tests.cluster.cli import Cli
from tests.cluster.controller import Controller
from tests.cluster.knative import KnativeServing
from tests.cluster.local import ADMIN, ControlPlane, kube_binaries
from tests.manifests.helpers import EXAMPLES
from tests.manifests.test_knative_rules import documented_flags

HERE = Path(__file__).resolve().parent
BUILD_TIMEOUT_S = 5400  # a cold build of every binary on 2 cores, with room (docs/deploy.md has the times)


def _is_cluster_test(item: pytest.Item) -> bool:
    return HERE in Path(str(item.fspath)).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The first test here builds the binaries when they are missing: give it the time a cold build takes."""
    first = next((item for item in items if _is_cluster_test(item)), None)
    if first is None:
        return
    try:
        kube_binaries(lambda _: None, build=False)
    except RuntimeError:
        first.add_marker(pytest.mark.timeout(BUILD_TIMEOUT_S))


@pytest.fixture(scope="session")
def kube_binaries_paths(request: pytest.FixtureRequest) -> dict[str, str]:
    # Straight to the terminal: pytest would hold captured output until the test ends.
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    return kube_binaries(reporter.write_line if reporter is not None else print)


@pytest.fixture(scope="session")
def control_plane(kube_binaries_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[ControlPlane]:
    upstream = crds.upstream()  # fails with a clear message when the CRDs directory is missing
    plane = ControlPlane(kube_binaries_paths, tmp_path_factory.mktemp("kube")).start()
    try:
        crds.install(admin_client(plane), upstream)
        yield plane
    finally:
        plane.stop()


def admin_client(plane: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(plane.kubeconfig(ADMIN)))


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> client.ApiClient:
    return admin_client(control_plane)


def image_registries() -> set[str]:
    """The registries of every image the examples render (Knative must not resolve their tags)."""
    images = {img for p in EXAMPLES for c in [load_config(p)]
              for img in (c.image, c.profiles.cpu.image, c.profiles.gpu.image) if img}
    return {i.split("/")[0] if "/" in i and ("." in i.split("/")[0] or ":" in i.split("/")[0]) else "index.docker.io"
            for i in images}


@pytest.fixture(scope="session")
def knative(control_plane: ControlPlane, kube_binaries_paths: dict[str, str], kube_api: client.ApiClient
            ) -> Iterator[KnativeServing]:
    """Knative Serving's controller, webhook and autoscaler (with the feature flags of docs/deploy.md),
    kube-controller-manager and kwok, on the session's control plane."""
    serving = KnativeServing(control_plane, kube_binaries_paths, kube_api, features=documented_flags(),
                             registries=image_registries()).start()
    try:
        yield serving
    finally:
        serving.close()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], control_plane: ControlPlane) -> Cli:
    """``python -m manifests`` as the admin of the session's cluster."""
    return Cli(capsys, control_plane.kubeconfig())


@pytest.fixture
def controller(kube_api: client.ApiClient) -> Controller:
    """Writes status where a controller would (none runs on the plain control plane)."""
    return Controller(DynamicClient(kube_api))
