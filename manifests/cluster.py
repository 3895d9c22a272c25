"""A cluster through the ``kubernetes`` client: connect, server-side apply, read, list, delete, watch.

Every failure becomes a ``ClusterError`` with one line that says what to do (no kubeconfig or an
unreachable server, a kind whose CRD is missing with the operator that installs it, what RBAC
forbids, a field owned by another manager); ``manifests.commands`` prints it and exits 2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import config as kube_config
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient, Resource
from kubernetes.dynamic.exceptions import DynamicApiError, ResourceNotFoundError

Doc = dict[str, Any]

FIELD_MANAGER = "kzero"
INSTANCE_LABEL = "app.kubernetes.io/instance"
# Who installs the kinds the manifests use (said when a CRD is missing).
OPERATORS = {"serving.kserve.io": "KServe", "serving.knative.dev": "Knative Serving",
             "eventing.knative.dev": "Knative Eventing", "sources.knative.dev": "eventing-kafka-broker",
             "keda.sh": "KEDA", "kafka.strimzi.io": "Strimzi"}
KIND_OPERATORS = {"KafkaSink": "eventing-kafka-broker", "KafkaSource": "eventing-kafka-broker"}
# Changed by the API server on every write or by controllers: never part of a diff.
VOLATILE_METADATA = ("managedFields", "resourceVersion", "generation", "creationTimestamp", "uid")


class ClusterError(Exception):
    """A one-line, actionable failure to reach or change the cluster."""


class Unreachable(ClusterError, ConnectionError):
    pass


class MissingKind(ClusterError, LookupError):
    def __init__(self, api_version: str, kind: str) -> None:
        group = api_version.rpartition("/")[0]
        operator = KIND_OPERATORS.get(kind) or OPERATORS.get(group)
        install = f": install {operator}" if operator else ""
        super().__init__(f"the cluster has no {kind} ({api_version}){install} (its CRD is missing)")
        self.api_version, self.kind, self.operator = api_version, kind, operator


class Forbidden(ClusterError, PermissionError):
    pass


class Conflict(ClusterError):
    pass


class Invalid(ClusterError, ValueError):
    pass


@dataclass(frozen=True)
class Ref:
    api_version: str
    kind: str
    name: str
    namespace: str | None = None

    @classmethod
    def of(cls, doc: Doc) -> Ref:
        meta = doc["metadata"]
        return cls(doc["apiVersion"], doc["kind"], meta["name"], meta.get("namespace"))

    def __str__(self) -> str:
        group = self.api_version.rpartition("/")[0]
        return f"{self.kind.lower()}{'.' + group if group else ''}/{self.name}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _message(err: ApiException) -> str:
    try:
        return _one_line(json.loads(err.body).get("message", "")) or str(err.reason)
    except (ValueError, TypeError, AttributeError):
        return str(err.reason)


_FORBIDDEN = re.compile(r'User "(?P<user>[^"]*)" cannot (?P<verb>\S+) resource "(?P<resource>[^"]+)"'
                        r'(?: in API group "(?P<group>[^"]*)")?(?: in the namespace "(?P<ns>[^"]+)")?')


def translate(err: ApiException, verb: str, ref: Ref | None) -> ClusterError:
    """The API's error as a ClusterError that says what to do about it."""
    what = f"{ref.kind} {ref.namespace + '/' if ref.namespace else ''}{ref.name}" if ref else "the cluster"
    message = _message(err)
    if err.status == 401:
        return Forbidden(f"the cluster refused the credentials of this kubeconfig (401): {message}")
    if err.status == 403:
        if m := _FORBIDDEN.search(message):
            resource = m["resource"] + (f".{m['group']}" if m["group"] else "")
            where = f" in namespace {m['ns']}" if m["ns"] else " (cluster-wide)"
            return Forbidden(f"RBAC forbids user {m['user']!r} to {m['verb']} {resource}{where}: "
                             f"ask for a Role granting it")
        return Forbidden(f"forbidden to {verb} {what}: {message}")
    if err.status == 409:
        return Conflict(f"{what}: {message} (another field manager owns these fields: change them through it, "
                        "or rerun with --force-conflicts to take them over)")
    # Server-side apply reports a field the schema does not declare as a 500 "failed to create typed patch".
    if err.status in (400, 422) or (err.status == 500 and "typed patch" in message):
        return Invalid(f"{what} was refused: {message}")
    if err.status == 404 and (m := re.search(r'namespaces "([^"]+)" not found', message)):
        return ClusterError(f"namespace {m[1]} does not exist (apply creates it)")
    if err.status == 404 and ref is not None:
        return MissingKind(ref.api_version, ref.kind)
    return ClusterError(f"{verb} {what}: {err.status} {message}")


class Cluster:
    """One cluster, through ``DynamicClient`` (kinds are looked up by discovery, CRDs included)."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        try:
            self.dynamic = DynamicClient(api)
            # The client caches discovery in a file across runs; a CRD installed or removed since must count.
            self.dynamic.resources.invalidate_cache()
        except urllib3.exceptions.HTTPError as err:
            raise Unreachable(f"cannot reach the cluster at {api.configuration.host}: {_reason(err)}") from err
        except DynamicApiError as err:
            raise translate(err, "discover", None) from err

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> Cluster:
        try:
            api = kube_config.new_client_from_config(config_file=kubeconfig, context=context)
        except kube_config.ConfigException as err:
            where = kubeconfig or "$KUBECONFIG or ~/.kube/config"
            raise ClusterError(f"no usable kubeconfig ({where}): {_one_line(str(err))}") from err
        except OSError as err:
            raise ClusterError(f"cannot read kubeconfig {kubeconfig}: {err.strerror}") from err
        api.configuration.retries = 1  # an unreachable server fails in seconds, not after urllib3's backoff
        return cls(api)

    @property
    def host(self) -> str:
        return str(self.api.configuration.host)

    def resource(self, api_version: str, kind: str) -> Resource:
        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError as err:
            raise MissingKind(api_version, kind) from err
        except urllib3.exceptions.HTTPError as err:
            raise Unreachable(f"cannot reach the cluster at {self.host}: {_reason(err)}") from err

    def _call(self, verb: str, ref: Ref | None, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DynamicApiError as err:
            raise translate(err, verb, ref) from err
        except urllib3.exceptions.HTTPError as err:
            raise Unreachable(f"cannot reach the cluster at {self.host}: {_reason(err)}") from err

    def get(self, ref: Ref) -> Doc | None:
        resource = self.resource(ref.api_version, ref.kind)
        try:
            return resource.get(name=ref.name, namespace=ref.namespace).to_dict()
        except DynamicApiError as err:
            if err.status == 404:
                return None
            raise translate(err, "get", ref) from err
        except urllib3.exceptions.HTTPError as err:
            raise Unreachable(f"cannot reach the cluster at {self.host}: {_reason(err)}") from err

    def apply(self, doc: Doc, *, dry_run: bool = False, force: bool = False) -> Doc:
        """Server-side apply as field manager ``kzero``, unknown fields refused (strict validation)."""
        ref = Ref.of(doc)
        resource = self.resource(ref.api_version, ref.kind)
        params: dict[str, Any] = {"field_manager": FIELD_MANAGER, "query_params": [("fieldValidation", "Strict")]}
        if dry_run:
            params["dry_run"] = "All"
        result = self._call("apply", ref, self.dynamic.server_side_apply, resource, body=doc,
                            namespace=ref.namespace, force_conflicts=force or None, **params)
        return result.to_dict()

    def list(self, api_version: str, kind: str, namespace: str | None, label_selector: str) -> list[Doc]:
        resource = self.resource(api_version, kind)
        ref = Ref(api_version, kind, "*", namespace)
        found = self._call("list", ref, resource.get, namespace=namespace, label_selector=label_selector)
        return [item.to_dict() for item in found.items]

    def delete(self, ref: Ref) -> bool:
        """Delete; False when it was already gone."""
        resource = self.resource(ref.api_version, ref.kind)
        try:
            resource.delete(name=ref.name, namespace=ref.namespace)
        except DynamicApiError as err:
            if err.status == 404:
                return False
            raise translate(err, "delete", ref) from err
        except urllib3.exceptions.HTTPError as err:
            raise Unreachable(f"cannot reach the cluster at {self.host}: {_reason(err)}") from err
        return True

    def watch(self, ref: Ref, timeout_s: int) -> Iterator[Doc]:
        """The object's current state, then each change, for up to ``timeout_s`` seconds."""
        resource = self.resource(ref.api_version, ref.kind)
        events = self._call("watch", ref, self.dynamic.watch, resource, namespace=ref.namespace, name=ref.name,
                            timeout=max(1, timeout_s))
        try:
            for event in events:
                if event["type"] in ("ADDED", "MODIFIED"):
                    yield event["raw_object"]
        except ApiException as err:
            if err.status in (410, 504):
                return  # the watch expired or the server's cache lags: the caller starts a new one
            raise translate(err, "watch", ref) from err
        except urllib3.exceptions.HTTPError as err:
            raise Unreachable(f"cannot reach the cluster at {self.host}: {_reason(err)}") from err


def _reason(err: urllib3.exceptions.HTTPError) -> str:
    cause = getattr(err, "reason", None) or err
    return _one_line(str(cause))


def comparable(obj: Doc | None) -> Doc:
    """The object without what the API server changes on every write (for diffs and no-op checks)."""
    if obj is None:
        return {}
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in VOLATILE_METADATA}
    return {**obj, "metadata": meta}
