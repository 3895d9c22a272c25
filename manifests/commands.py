"""``python -m manifests apply|status|diff|delete|rollout``: the rendered set on a cluster.

Exit codes: 0 done (or ready), 1 not ready, timed out, failed, or (diff) changes pending, 2 could
not do it (no kubeconfig, unreachable, a CRD missing, RBAC, a field-manager conflict, a refused
object), with one line on stderr saying why.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import yaml

from manifests.cluster import INSTANCE_LABEL, Cluster, ClusterError, Doc, Forbidden, MissingKind, Ref, comparable
from manifests.config import DeployConfig
from manifests.readiness import readiness
from manifests.render import OVERLAYS, overlay_documents
from manifests.serving import PROFILE_ANNOTATION
from manifests.waiting import FAILURE_WINDOW_S, wait_ready, waits_for

COMMANDS = ("apply", "status", "diff", "delete", "rollout")


def add_commands(sub: Any) -> None:
    """Add the cluster commands to ``python -m manifests``'s subparsers."""
    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, required=True, help="deploy config (see manifests/examples/)")
        p.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config")
        p.add_argument("--context", help="kubeconfig context (default: its current context)")
        return p

    p = command("apply", "server-side apply an overlay (field manager kzero), namespaces first")
    p.add_argument("--overlay", required=True, choices=OVERLAYS)
    p.add_argument("--wait", action="store_true", help="wait until the service (and its event route) is ready")
    p.add_argument("--timeout", type=float, default=600, help="seconds --wait waits (default 600)")
    p.add_argument("--failure-window", type=float, default=FAILURE_WINDOW_S, metavar="SECONDS",
                   help="seconds a failed condition must last before --wait gives up; some clear on their own "
                        f"(default {FAILURE_WINDOW_S:g})")
    p.add_argument("--force-conflicts", action="store_true", help="take over fields another manager owns")
    p = command("status", "a table of the deployed objects; exit 0 when all are ready")
    p.add_argument("--overlay", choices=OVERLAYS, help="the objects this overlay renders (default: all found)")
    p = command("diff", "what apply would change (server-side dry run); exit 1 when something would")
    p.add_argument("--overlay", required=True, choices=OVERLAYS)
    p = command("delete", "delete what apply created (by its instance label); never a namespace")
    p.add_argument("--wait", action="store_true", help="wait until everything is gone")
    p.add_argument("--timeout", type=float, default=300, help="seconds --wait waits (default 300)")
    p = command("rollout", "KServe canary rollout of a changed predictor (canaryTrafficPercent)")
    step = p.add_mutually_exclusive_group(required=True)
    step.add_argument("--canary-percent", type=int, choices=range(0, 101), metavar="N",
                      help="send N%% of the traffic to the new predictor revision")
    step.add_argument("--promote", action="store_true", help="all traffic to the new revision")
    step.add_argument("--rollback", action="store_true", help="all traffic back to the previous revision")
    p.add_argument("--overlay", choices=("cpu", "gpu"), help="profile to render (default: the deployed one)")


def run(args: argparse.Namespace, config: DeployConfig, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    handlers: dict[str, Callable[[Cluster, argparse.Namespace, DeployConfig, TextIO], int]] = {
        "apply": apply, "status": status, "diff": diff, "delete": delete, "rollout": rollout}
    try:
        cluster = Cluster.connect(args.kubeconfig, args.context)
        return handlers[args.command](cluster, args, config, out)
    except (ClusterError, ValueError) as e:
        print(f"python -m manifests {args.command}: {e}", file=err)
        return 2


def namespaces(docs: list[Doc]) -> list[str]:
    return list(dict.fromkeys(d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace")))


def check_kinds(cluster: Cluster, docs: list[Doc]) -> None:
    """Every kind is served, before anything is written (so nothing is half-applied)."""
    missing = []
    for api_version, kind in dict.fromkeys((d["apiVersion"], d["kind"]) for d in docs):
        try:
            cluster.resource(api_version, kind)
        except MissingKind as e:
            missing.append(str(e))
    if missing:
        raise ClusterError("; ".join(missing))


def _namespace_doc(name: str) -> Doc:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def ensure_namespaces(cluster: Cluster, docs: list[Doc], out: TextIO) -> None:
    for name in namespaces(docs):
        ref = Ref.of(_namespace_doc(name))
        try:
            present = cluster.get(ref) is not None
        except Forbidden:
            continue  # a namespaced user: if it is missing, the first object in it says so
        if not present:
            cluster.apply(_namespace_doc(name))
            print(f"{ref} created", file=out)
        else:
            print(f"{ref} unchanged", file=out)


def apply_docs(cluster: Cluster, docs: list[Doc], out: TextIO, *, force: bool = False) -> None:
    for doc in docs:
        ref = Ref.of(doc)
        before = cluster.get(ref)
        after = cluster.apply(doc, force=force)
        if before is None:
            outcome = "created"
        elif comparable(before) == comparable(after):  # not the resourceVersion: a PVC's moves on every apply
            outcome = "unchanged"
        else:
            outcome = "configured"
        print(f"{ref} {outcome}", file=out)


def apply(cluster: Cluster, args: argparse.Namespace, config: DeployConfig, out: TextIO) -> int:
    docs = overlay_documents(config, args.overlay)
    check_kinds(cluster, docs)
    ensure_namespaces(cluster, docs, out)
    apply_docs(cluster, docs, out, force=args.force_conflicts)
    if not args.wait:
        return 0
    entry = Ref("serving.knative.dev/v1", "Service", f"{config.name}-{config.entry_component}", config.namespace)
    return wait_ready(cluster, [Ref.of(d) for d in docs if waits_for(d)], args.timeout, out,
                      url_of=entry if args.overlay == "knative-service" else None, failure_window_s=args.failure_window)


def _found(cluster: Cluster, config: DeployConfig) -> list[Doc]:
    """Everything labelled as this deployment, of every kind any overlay renders."""
    docs = [d for overlay in OVERLAYS for d in overlay_documents(config, overlay)]
    found: dict[tuple[str, str, str, str], Doc] = {}
    selector = f"{INSTANCE_LABEL}={config.name}"
    for api_version, kind in dict.fromkeys((d["apiVersion"], d["kind"]) for d in docs):
        for namespace in namespaces([d for d in docs if d["kind"] == kind]):
            try:
                items = cluster.list(api_version, kind, namespace, selector)
            except MissingKind:
                continue  # its operator is not installed, so nothing of that kind was applied
            for item in items:
                meta = item["metadata"]
                found[(api_version, kind, meta["namespace"], meta["name"])] = {
                    **item, "apiVersion": api_version, "kind": kind}
    return list(found.values())


def status(cluster: Cluster, args: argparse.Namespace, config: DeployConfig, out: TextIO) -> int:
    if args.overlay:
        refs = [Ref.of(d) for d in overlay_documents(config, args.overlay)]
        objects = [(ref, cluster.get(ref)) for ref in refs]
    else:
        objects = [(Ref.of(d), d) for d in _found(cluster, config)]
        if not objects:
            print(f"nothing labelled {INSTANCE_LABEL}={config.name} in the cluster", file=out)
            return 1
    rows = [("KIND", "NAME", "READY", "REASON", "URL", "REPLICAS")]
    notes = []
    all_ready = True
    for ref, obj in objects:
        state = readiness(obj)
        all_ready &= state.ready
        ready = "True" if state.ready else ("Failed" if state.failed else "False")
        rows.append((ref.kind, f"{ref.namespace}/{ref.name}", ready, state.reason, state.url, state.replicas))
        if not state.ready and state.message:
            notes.append(f"{ref.kind} {ref.namespace}/{ref.name}: {state.message}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)
    for note in notes:
        print(note, file=out)
    return 0 if all_ready else 1


def _yaml(obj: Doc) -> list[str]:
    return yaml.safe_dump(comparable(obj), sort_keys=True, width=120).splitlines(keepends=True) if obj else []


def diff(cluster: Cluster, args: argparse.Namespace, config: DeployConfig, out: TextIO) -> int:
    docs = overlay_documents(config, args.overlay)
    check_kinds(cluster, docs)
    changed = 0
    missing_namespaces = set()
    for name in namespaces(docs):
        if cluster.get(Ref.of(_namespace_doc(name))) is None:
            missing_namespaces.add(name)
            print(f"+ namespace/{name} (created by apply)", file=out)
            changed += 1
    for doc in docs:
        ref = Ref.of(doc)
        live = None if ref.namespace in missing_namespaces else cluster.get(ref)
        # Without its namespace the server cannot dry-run the object: show it as rendered.
        after = doc if ref.namespace in missing_namespaces else cluster.apply(doc, dry_run=True)
        before_lines, after_lines = _yaml(live or {}), _yaml(after)
        if before_lines == after_lines:
            continue
        changed += 1
        out.writelines(difflib.unified_diff(before_lines, after_lines, f"live/{ref}", f"applied/{ref}"))
    print(f"{changed} object(s) would change" if changed else "no changes", file=out)
    return 1 if changed else 0


def delete(cluster: Cluster, args: argparse.Namespace, config: DeployConfig, out: TextIO) -> int:
    found = _found(cluster, config)
    for obj in reversed(found):
        if cluster.delete(Ref.of(obj)):
            print(f"{Ref.of(obj)} deleted", file=out)
    if not found:
        print(f"nothing labelled {INSTANCE_LABEL}={config.name} to delete", file=out)
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while left := [Ref.of(o) for o in found if cluster.get(Ref.of(o)) is not None]:
        if time.monotonic() > deadline:
            print(f"still present after {args.timeout:g}s: {', '.join(map(str, left))}", file=out)
            return 1
        time.sleep(0.5)
    return 0


def rollout(cluster: Cluster, args: argparse.Namespace, config: DeployConfig, out: TextIO) -> int:
    ref = Ref("serving.kserve.io/v1beta1", "InferenceService", config.name, config.namespace)
    live = cluster.get(ref)
    if live is None:
        raise ClusterError(f"InferenceService {config.namespace}/{config.name} is not deployed: apply it first")
    profile = args.overlay or live["metadata"].get("annotations", {}).get(PROFILE_ANNOTATION)
    if profile not in ("cpu", "gpu"):
        raise ClusterError(f"cannot tell which profile is deployed (no {PROFILE_ANNOTATION} annotation): "
                           "give --overlay cpu or gpu")
    isvc = next(d for d in overlay_documents(config, profile) if d["kind"] == "InferenceService")
    predictor = isvc["spec"]["predictor"]
    if args.canary_percent is not None:
        unchanged = _predictor(cluster.apply(isvc, dry_run=True)) == _predictor(live)
        if unchanged:
            raise ClusterError("the predictor in the config is the one deployed: change its image, model or args "
                               "for a canary (apply changes nothing else here)")
        predictor["canaryTrafficPercent"] = args.canary_percent
        what = f"{args.canary_percent}% of the traffic to the new predictor revision"
    elif args.rollback:
        predictor["canaryTrafficPercent"] = 0
        what = "all traffic to the previous predictor revision (apply the previous config to make it current)"
    else:
        what = "all traffic to the latest predictor revision"
    cluster.apply(isvc)
    print(f"{ref} configured: {what}", file=out)
    return 0


def _predictor(isvc: Doc) -> Doc:
    return {k: v for k, v in isvc["spec"]["predictor"].items() if k != "canaryTrafficPercent"}
