"""Nothing the cluster runs can send a packet beyond 127.0.0.0/8: every process lives in a network
namespace whose only interface is loopback, with no route anywhere else."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cluster.knative import KnativeServing


def _interfaces(pid: int) -> set[str]:
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]  # two header lines
    return {line.split(":")[0].strip() for line in lines}


def _routes(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/net/route").read_text().splitlines()[1:]


def test_every_cluster_process_has_loopback_only(knative: KnativeServing) -> None:
    names = set()
    for process in knative.plane.processes:
        if "relay" in process.name:
            continue  # the relays accept on the host's loopback and connect inside: by design in both
        pid = process.proc.pid
        assert _interfaces(pid) == {"lo"}, process.name
        assert _routes(pid) == [], process.name  # the IPv4 table; loopback's routes live in the local table
        names.add(process.name)
    assert {"etcd", "kube-apiserver", "kube-controller-manager", "kwok", "knative-controller", "knative-webhook",
            "knative-autoscaler"} <= names
    # The autoscaler (whose stats server takes :8080, like the controller's probes) has its own namespace.
    by_name = {p.name: p.proc.pid for p in knative.plane.processes}
    assert knative.autoscaler_namespace is not None
    assert _namespace(by_name["knative-autoscaler"]) == os.readlink(knative.autoscaler_namespace.path)
    assert _namespace(by_name["knative-controller"]) == os.readlink(knative.plane.namespace.path)
    assert _namespace(by_name["knative-autoscaler"]) != _namespace(by_name["knative-controller"])
    assert _namespace(os.getpid()) not in {_namespace(by_name["knative-autoscaler"]),
                                            _namespace(by_name["knative-controller"])}


def _namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")
