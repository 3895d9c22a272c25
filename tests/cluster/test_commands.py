"""``python -m manifests apply|status|diff|delete|rollout`` against a real API server.

No controller runs there: where a command waits on one, the test writes the status conditions it
would write (tests/cluster/controller.py). Apply, watches, conflicts, RBAC refusals and missing CRDs
are the API server's own behaviour. Each test deploys under a name (and namespaces) of its own.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.dynamic import DynamicClient

from manifests.cluster import Cluster, Ref
from tests.cluster import crds
from tests.cluster.cli import Cli, deploy_config
from tests.cluster.controller import Controller, condition, ready
from tests.cluster.local import LIMITED, ControlPlane
from tests.manifests.helpers import REPO_ROOT

Doc = dict[str, Any]
ISVC = "serving.kserve.io/v1beta1"


def _outcomes(out: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in out.splitlines())


def _route_refs(name: str) -> list[Ref]:
    ns = name
    return [Ref("eventing.knative.dev/v1", "Broker", name, ns),
            *(Ref("eventing.knative.dev/v1alpha1", "KafkaSink", f"{name}-{r}", ns) for r in ("results", "dlq")),
            *(Ref("eventing.knative.dev/v1", "Trigger", f"{name}-{r}", ns) for r in ("requests", "results", "errors")),
            Ref("sources.knative.dev/v1", "KafkaSource", f"{name}-requests", ns)]


def test_apply_reports_created_unchanged_and_configured(cli: Cli, tmp_path: Path) -> None:
    config = deploy_config(tmp_path, "rag", "cmd-apply")
    rc, out, err = cli("apply", config, "--overlay", "kafka-knative")
    assert rc == 0, err
    outcomes = _outcomes(out)
    assert list(outcomes)[:2] == ["namespace/cmd-apply", "namespace/cmd-apply-kafka"], "namespaces first"
    assert set(outcomes.values()) == {"created"}
    assert "inferenceservice.serving.kserve.io/cmd-apply" in outcomes
    assert "kafkasource.sources.knative.dev/cmd-apply-requests" in outcomes
    rc, out, _ = cli("apply", config, "--overlay", "kafka-knative")
    assert rc == 0 and set(_outcomes(out).values()) == {"unchanged"}
    changed = deploy_config(tmp_path, "rag", "cmd-apply", predictor={"max_replicas": 3})
    rc, out, _ = cli("apply", changed, "--overlay", "kafka-knative")
    assert rc == 0
    configured = {k for k, v in _outcomes(out).items() if v == "configured"}
    assert configured == {"inferenceservice.serving.kserve.io/cmd-apply"}


def test_status_reads_what_the_controllers_wrote(cli: Cli, controller: Controller, tmp_path: Path) -> None:
    config = deploy_config(tmp_path, "rag", "cmd-status")
    assert cli("apply", config, "--overlay", "cpu")[0] == 0
    rc, out, _ = cli("status", config, "--overlay", "cpu")
    assert rc == 1
    rows = {line.split()[1]: line.split() for line in out.splitlines()[1:] if line.split()[0] != "InferenceService:"}
    assert rows["cmd-status/cmd-status-settings"][2] == "True"  # a ConfigMap is ready once present
    assert rows["cmd-status/cmd-status"][2:4] == ["False", "NoStatus"]
    assert rows["cmd-status/cmd-status-model-cache"][2:4] == ["False", "Pending"]
    isvc = Ref(ISVC, "InferenceService", "cmd-status", "cmd-status")
    controller.write_status(isvc, {"conditions": [condition("Ready", "False", "IngressNotReady", "predictor starting"),
                                                  condition("PredictorReady", "Unknown", "RevisionMissing")]})
    rc, out, _ = cli("status", config, "--overlay", "cpu")
    assert rc == 1 and "IngressNotReady" in out and "predictor starting" in out
    controller.write_status(isvc, ready("http://cmd-status.cmd-status.example.com"))
    controller.write_status(Ref("v1", "PersistentVolumeClaim", "cmd-status-model-cache", "cmd-status"),
                            {"phase": "Bound"})
    rc, out, _ = cli("status", config)  # without --overlay: whatever carries the instance label
    assert rc == 0, out
    assert "http://cmd-status.cmd-status.example.com" in out
    assert {line.split()[0] for line in out.splitlines()[1:]} == {
        "ServiceAccount", "ConfigMap", "InferenceService", "NetworkPolicy", "PersistentVolumeClaim"}


def test_apply_wait_watches_the_service_and_its_event_route(cli: Cli, controller: Controller, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    name = "cmd-wait"
    config = deploy_config(tmp_path, "rag", name)
    isvc = Ref(ISVC, "InferenceService", name, name)
    watching = threading.Event()  # the service turns ready only once the command has seen it not ready
    follow = Cluster.watch

    def watch(self: Cluster, ref: Ref, timeout_s: int) -> Iterator[Doc]:
        for obj in follow(self, ref, timeout_s):
            yield obj
            if ref == isvc and obj.get("status"):
                watching.set()

    monkeypatch.setattr(Cluster, "watch", watch)
    steps = [(isvc, {"conditions": [condition("Ready", "Unknown", "PredictorNotReady")]}),
             *((ref, ready()) for ref in _route_refs(name)),
             (isvc, ready(f"http://{name}.{name}.example.com"))]
    join = controller.later(steps, last_after=watching)
    rc, out, err = cli("apply", config, "--overlay", "kafka-knative", "--wait", "--timeout", "120")
    join()
    assert rc == 0, out + err
    assert f"InferenceService {name}: not ready: PredictorNotReady" in out
    assert out.strip().endswith(f"ready: http://{name}.{name}.example.com")


def test_apply_wait_reports_a_failed_condition(cli: Cli, controller: Controller, tmp_path: Path) -> None:
    config = deploy_config(tmp_path, "embed", "cmd-failed")
    failed = {"conditions": [condition("Ready", "False", "RevisionFailed", "oops"),
                             condition("PredictorReady", "False", "RevisionFailed", "Container failed: exit 1")]}
    join = controller.later([(Ref(ISVC, "InferenceService", "cmd-failed", "cmd-failed"), failed)])
    rc, out, _ = cli("apply", config, "--overlay", "cpu", "--wait", "--timeout", "120", "--failure-window", "1")
    join()
    assert rc == 1
    assert "InferenceService cmd-failed/cmd-failed failed: RevisionFailed: Container failed: exit 1" in out


def test_apply_wait_times_out_naming_what_is_not_ready(cli: Cli, tmp_path: Path) -> None:
    config = deploy_config(tmp_path, "embed", "cmd-timeout")
    rc, out, _ = cli("apply", config, "--overlay", "cpu", "--wait", "--timeout", "2")
    assert rc == 1
    assert "timed out after 2s waiting for: InferenceService cmd-timeout" in out


def test_diff_shows_what_apply_would_change(cli: Cli, tmp_path: Path) -> None:
    config = deploy_config(tmp_path, "embed", "cmd-diff")
    rc, out, _ = cli("diff", config, "--overlay", "cpu")
    assert rc == 1 and "+ namespace/cmd-diff (created by apply)" in out
    assert cli("apply", config, "--overlay", "cpu")[0] == 0
    rc, out, _ = cli("diff", config, "--overlay", "cpu")
    assert (rc, out.strip()) == (0, "no changes")
    changed = deploy_config(tmp_path, "embed", "cmd-diff", predictor={"max_replicas": 7})
    rc, out, _ = cli("diff", changed, "--overlay", "cpu")
    assert rc == 1
    assert "-    maxReplicas: 4\n+    maxReplicas: 7" in out
    assert "1 object(s) would change" in out
    rc, out, _ = cli("diff", config, "--overlay", "cpu")
    assert rc == 0, "a dry run changes nothing"


def test_delete_removes_what_apply_created_and_keeps_namespaces(cli: Cli, controller: Controller,
                                                                 kube_api: client.ApiClient, tmp_path: Path) -> None:
    config = deploy_config(tmp_path, "rag", "cmd-delete")
    rc, applied, _ = cli("apply", config, "--overlay", "kafka-worker")
    assert rc == 0
    claim = Ref("v1", "PersistentVolumeClaim", "cmd-delete-model-cache", "cmd-delete")
    rc, out, _ = cli("delete", config, "--wait", "--timeout", "2")
    # The claim waits for its protection finalizer, which kube-controller-manager would remove.
    assert rc == 1 and out.splitlines()[-1] == "still present after 2s: persistentvolumeclaim/cmd-delete-model-cache"
    deleted = {line.removesuffix(" deleted") for line in out.splitlines()[:-1]}
    assert deleted == {k for k in _outcomes(applied) if not k.startswith("namespace/")}
    join = controller.finalize_once_deleted(claim)
    rc, out, _ = cli("delete", config, "--wait")
    join()
    assert rc == 0
    rc, out, _ = cli("status", config)
    assert rc == 1 and "nothing labelled" in out
    client.CoreV1Api(kube_api).read_namespace("cmd-delete")


def test_rollout_canary_promote_and_rollback(cli: Cli, kube_api: client.ApiClient, tmp_path: Path) -> None:
    name = "cmd-rollout"
    config = deploy_config(tmp_path, "embed", name)
    assert cli("apply", config, "--overlay", "cpu")[0] == 0
    rc, _, err = cli("rollout", config, "--canary-percent", "10")
    assert rc == 2 and "the predictor in the config is the one deployed" in err
    new = deploy_config(tmp_path, "embed", name, image="ghcr.io/kzero/kzero:0.2.0")
    isvcs = DynamicClient(kube_api).resources.get(api_version=ISVC, kind="InferenceService")

    def predictor() -> Doc:
        return isvcs.get(name=name, namespace=name).to_dict()["spec"]["predictor"]

    rc, out, err = cli("rollout", new, "--canary-percent", "10")
    assert rc == 0, err
    assert "10% of the traffic to the new predictor revision" in out
    assert predictor()["canaryTrafficPercent"] == 10
    assert predictor()["containers"][0]["image"] == "ghcr.io/kzero/kzero:0.2.0"
    assert "--device" in predictor()["containers"][0]["args"], "rendered on the deployed (cpu) profile"
    assert cli("rollout", new, "--rollback")[0] == 0
    assert predictor()["canaryTrafficPercent"] == 0
    assert cli("rollout", new, "--promote")[0] == 0
    assert "canaryTrafficPercent" not in predictor()


def test_a_field_manager_conflict_is_named(cli: Cli, kube_api: client.ApiClient, tmp_path: Path) -> None:
    name = "cmd-conflict"
    config = deploy_config(tmp_path, "embed", name)
    assert cli("apply", config, "--overlay", "cpu")[0] == 0
    isvcs = DynamicClient(kube_api).resources.get(api_version=ISVC, kind="InferenceService")
    edit = {"apiVersion": ISVC, "kind": "InferenceService", "metadata": {"name": name, "namespace": name},
            "spec": {"predictor": {"maxReplicas": 9}}}
    DynamicClient(kube_api).server_side_apply(isvcs, body=edit, namespace=name, field_manager="someone-else",
                                              force_conflicts=True)
    rc, _, err = cli("apply", config, "--overlay", "cpu")
    assert rc == 2
    assert "someone-else" in err and ".spec.predictor.maxReplicas" in err and "--force-conflicts" in err
    assert len(err.strip().splitlines()) == 1
    assert cli("apply", config, "--overlay", "cpu", "--force-conflicts")[0] == 0
    assert isvcs.get(name=name, namespace=name).spec.predictor.maxReplicas == 4


def test_rbac_refusals_name_the_verb_and_resource(cli: Cli, control_plane: ControlPlane, kube_api: client.ApiClient,
                                                  tmp_path: Path) -> None:
    name = "cmd-rbac"
    config = deploy_config(tmp_path, "embed", name)
    limited = control_plane.kubeconfig(LIMITED)
    rc, _, err = cli("apply", config, "--overlay", "cpu", kubeconfig=limited)
    assert rc == 2
    assert f"RBAC forbids user 'limited' to get serviceaccounts in namespace {name}" in err
    # Core kinds allowed in the namespace, KServe's not: the refusal moves to the InferenceService.
    client.CoreV1Api(kube_api).create_namespace({"metadata": {"name": name}})
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rules = [{"apiGroups": ["", "networking.k8s.io"], "resources": ["*"], "verbs": ["*"]}]
    rbac.create_namespaced_role(name, {"metadata": {"name": "core"}, "rules": rules})
    group = "rbac.authorization.k8s.io"
    rbac.create_namespaced_role_binding(name, {
        "metadata": {"name": "core"}, "roleRef": {"apiGroup": group, "kind": "Role", "name": "core"},
        "subjects": [{"kind": "User", "name": LIMITED, "apiGroup": group}]})
    rc, out, err = cli("apply", config, "--overlay", "cpu", kubeconfig=limited)
    assert rc == 2
    assert "serviceaccount/cmd-rbac-serving created" in out
    assert f"RBAC forbids user 'limited' to get inferenceservices.serving.kserve.io in namespace {name}" in err


def test_connection_errors_are_one_line(cli: Cli, control_plane: ControlPlane, tmp_path: Path) -> None:
    config = deploy_config(tmp_path, "embed", "cmd-unreachable")
    rc, _, err = cli("status", config, kubeconfig=tmp_path / "missing-kubeconfig")
    assert rc == 2 and "missing-kubeconfig" in err and len(err.strip().splitlines()) == 1
    closed = yaml.safe_load(control_plane.kubeconfig().read_text())
    closed["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    (tmp_path / "closed").write_text(yaml.safe_dump(closed))
    rc, _, err = cli("status", config, kubeconfig=tmp_path / "closed")
    assert rc == 2 and "cannot reach the cluster at https://127.0.0.1:1" in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_crd_names_its_operator_and_nothing_is_applied(cli: Cli, kube_api: client.ApiClient,
                                                                 tmp_path: Path) -> None:
    config = deploy_config(tmp_path, "rag", "cmd-nocrd")
    keda = [c for c in crds.upstream() if c["spec"]["group"] == "keda.sh"]
    for crd in keda:
        crds.remove(kube_api, crd["metadata"]["name"])
    try:
        rc, out, err = cli("apply", config, "--overlay", "kafka-worker")
    finally:
        crds.install(kube_api, keda)
    assert rc == 2
    assert "the cluster has no ScaledObject (keda.sh/v1alpha1): install KEDA" in err
    assert out == "", "nothing applied before the check"


def test_the_command_line_entry_point(control_plane: ControlPlane, tmp_path: Path) -> None:
    config = deploy_config(tmp_path, "embed", "cmd-cli")
    done = subprocess.run([sys.executable, "-m", "manifests", "apply", "--config", str(config), "--overlay", "cpu",
                           "--kubeconfig", str(control_plane.kubeconfig())], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "inferenceservice.serving.kserve.io/cmd-cli created" in done.stdout
