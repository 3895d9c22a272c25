"""The real Knative Serving webhook and controllers on what kzero renders.

The knative-service overlay goes all the way: Service -> Configuration -> Revision -> Deployment ->
kwok pods -> PodAutoscaler -> ServerlessService -> Route, each Ready. And every pod spec the
InferenceService hands KServe goes through Knative's webhook as the Knative Service KServe would
make of it (a server-side dry run), so a spec Knative refuses fails here, not on a cluster; each rule
of the Python checker (tests/manifests/knative_rules.py) is refused by the webhook too.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from manifests.cluster import Cluster, Invalid, Ref
from manifests.readiness import readiness
from tests.cluster.cli import Cli, deploy_config
from tests.cluster.knative import NODE, KnativeServing
from tests.manifests import knative_rules
from tests.manifests.test_knative_rules import FLAGS, SERVICES, VIOLATIONS, _rag_predictor

Doc = dict[str, Any]
DRY_RUN_NAMESPACE = "knative-dry-run"


def test_the_knative_service_overlay_becomes_ready_with_every_link(knative: KnativeServing, cli: Cli,
                                                                  kube_api: client.ApiClient, tmp_path: Path) -> None:
    name = "kn-rag"
    config = deploy_config(tmp_path, "rag", name)
    rc, out, err = cli("apply", config, "--overlay", "knative-service", "--wait", "--timeout", "240")
    knative.check()
    assert rc == 0, out + err
    assert out.strip().splitlines()[-1].startswith(f"ready: http://{name}-transformer.{name}.")
    cluster = Cluster(kube_api)
    for component in ("predictor", "transformer"):
        service, revision = f"{name}-{component}", f"{name}-{component}-00001"
        chain = [Ref("serving.knative.dev/v1", "Configuration", service, name),
                 Ref("serving.knative.dev/v1", "Revision", revision, name),
                 Ref("autoscaling.internal.knative.dev/v1alpha1", "PodAutoscaler", revision, name),
                 Ref("networking.internal.knative.dev/v1alpha1", "ServerlessService", revision, name),
                 Ref("serving.knative.dev/v1", "Route", service, name)]
        for ref in chain:
            state = readiness(cluster.get(ref))
            assert state.ready, f"{ref}: {state.describe()}"
        (pod,) = client.CoreV1Api(kube_api).list_namespaced_pod(
            name, label_selector=f"serving.knative.dev/revision={revision}").items
        assert pod.spec.node_name == NODE and pod.status.phase == "Running"
        assert {c.name for c in pod.spec.containers} == {"kserve-container", "queue-proxy"}
        rendered = cluster.get(Ref("serving.knative.dev/v1", "Service", service, name))
        assert rendered is not None
        (user,) = [c for c in pod.spec.containers if c.name == "kserve-container"]
        assert user.image == rendered["spec"]["template"]["spec"]["containers"][0]["image"], "no digest resolution"
    _, out, _ = cli("status", config, "--overlay", "knative-service")
    rows = {tuple(line.split()[:3]) for line in out.splitlines()}
    assert {("Service", f"{name}/{name}-{c}", "True") for c in ("predictor", "transformer")} <= rows, out


@pytest.fixture(scope="module")
def dry_run(knative: KnativeServing, kube_api: client.ApiClient) -> Callable[[Doc, str], None]:
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": DRY_RUN_NAMESPACE}})
    # Knative's webhook dry-runs the pod itself, so the service accounts the pods name must exist.
    for account in {s["spec"]["template"]["spec"]["serviceAccountName"] for _, s in SERVICES}:
        core.create_namespaced_service_account(DRY_RUN_NAMESPACE, {"metadata": {"name": account}})
    cluster = Cluster(kube_api)

    def run(ksvc: Doc, name: str) -> None:
        doc = {**copy.deepcopy(ksvc), "metadata": {"name": name, "namespace": DRY_RUN_NAMESPACE}}
        cluster.apply(doc, dry_run=True)

    return run


def _slug(where: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in where.lower()).strip("-")[:50].strip("-")


@pytest.mark.parametrize("ksvc", [s for _, s in SERVICES], ids=[w for w, _ in SERVICES])
def test_knative_admits_every_rendered_pod(dry_run: Callable[[Doc, str], None], ksvc: Doc) -> None:
    dry_run(ksvc, "admitted")


@pytest.mark.parametrize(("mutate", "expected"), [(m, e) for _, m, e in VIOLATIONS], ids=[n for n, _, _ in VIOLATIONS])
def test_the_webhook_refuses_what_the_python_rules_refuse(dry_run: Callable[[Doc, str], None],
                                                          mutate: Callable[[Doc], object], expected: str) -> None:
    ksvc = copy.deepcopy(_rag_predictor())
    mutate(ksvc)
    # The field each Python error names (for a probe's handler, the webhook may name the probe instead).
    paths = [re.sub(r"\[.*?\]", "", e.split(": ")[0]).split(".") for e in knative_rules.check(ksvc, FLAGS)]
    fields = {p[-2] if p[-1] in knative_rules.HANDLER_ALLOWED else p[-1] for p in paths}
    assert fields, f"the Python rules no longer refuse this ({expected})"
    with pytest.raises(Invalid) as refused:
        dry_run(ksvc, "refused")
    # Refused by Knative's webhook, or by the API server for a field its CRD schema lacks; about the same field.
    assert any(field in str(refused.value) for field in fields), (fields, str(refused.value))
