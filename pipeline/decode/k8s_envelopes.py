"""Rebuild Kubernetes audit Events from the envelopes they travel in.

Called by :meth:`ztaudit.pipeline.normalize.k8s_audit.K8sAuditNormalizer.unwrap` on every decoded
JSON value that the columnar fast path did not take. :func:`unwrap_k8s` returns ``None`` when the
value is not a Kubernetes audit shape at all (so the next normalizer can try), else a list of
:class:`~ztaudit.pipeline.normalize.base.Unwrapped` Events. A part that is recognisably Kubernetes but
unusable (a CloudWatch message cut at ``[Truncated...]``, an AKS ``properties.log`` that is not
JSON) becomes a *reject marker* (:func:`reject_marker`) in the list, which
:func:`ztaudit.pipeline.process.process` turns into a quarantine row; nothing here raises for bad
input.

Shapes (docs/kubernetes-audit.md §1, §8):

* ``Event`` (``audit.k8s.io/v1``; v1beta1 records may lack ``kind``/``apiVersion``);
* webhook ``EventList`` ``{"kind":"EventList","items":[...]}`` (kubernetes/kubernetes
  ``staging/src/k8s.io/apiserver/pkg/apis/audit/v1/types.go``);
* GKE Cloud Logging ``LogEntry`` with an ``AuditLog`` ``protoPayload`` whose ``serviceName`` is
  ``k8s.io`` -- rebuilt field by field like falcosecurity/plugins
  ``plugins/k8saudit-gke/pkg/k8sauditgke/convert.go``;
* AKS diagnostic records (``category`` ``kube-audit``/``kube-audit-admin``, Event in
  ``properties.log`` as a JSON string or object) and Event Hub batches ``{"records":[...]}``
  (falcosecurity/plugins ``shared/go/azure/eventhub/processor.go``);
* EKS CloudWatch log events (``message`` = Event JSON string) and subscription envelopes
  ``{"logGroup":"/aws/eks/<cluster>/cluster","logEvents":[{"message":...}]}``
  (falcosecurity/plugins ``plugins/k8saudit-eks/pkg/k8sauditeks/k8sauditeks.go``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from ztaudit.core.quarantine import IgnoreReason, Reason
from ztaudit.pipeline.decode.values import CLOUDWATCH_TRUNCATED, json_failure, loads
from ztaudit.pipeline.normalize.base import Unwrapped, ignored_entry

REJECT_KEY: Final = "\x00ztaudit_reject"
_MAX_ITEMS_DEPTH = 4

#: gRPC status code -> HTTP status, for GKE's ``protoPayload.status.code`` (not an HTTP code;
#: docs/kubernetes-audit.md §8.1). 0 OK, 7 PERMISSION_DENIED, 5 NOT_FOUND, 16 UNAUTHENTICATED;
#: anything else is reported as 500 and the original code is kept in an annotation.
GRPC_TO_HTTP: Final = {0: 200, 7: 403, 5: 404, 16: 401}
#: Annotation ztaudit adds to rebuilt GKE events so the mapped response code can be traced back.
GKE_STATUS_ANNOTATION: Final = "ztaudit/gke-grpc-status-code"

_EKS_LOG_GROUP = re.compile(r"^/aws/eks/([^/]+)/cluster/?$")
_AKS_CLUSTER = re.compile(r"/managedclusters/([^/]+)", re.IGNORECASE)
_AKS_CATEGORIES: Final = frozenset({"kube-audit", "kube-audit-admin"})


def reject_marker(reason: Reason, detail: str, raw: str | bytes | None = None) -> dict[str, Any]:
    """A placeholder record that process() turns into a quarantine row (see module docstring)."""
    return {REJECT_KEY: str(reason), "detail": detail, "raw": raw}


def is_event(value: Mapping[str, Any]) -> bool:
    """An audit Event: ``kind`` Event, or (v1beta1-era) no ``kind`` but an ``auditID``."""
    kind = value.get("kind")
    if kind == "Event":
        return True
    return kind is None and "auditID" in value and ("verb" in value or "stage" in value or "user" in value)


def unwrap_k8s(value: Any, depth: int = 0) -> list[Unwrapped] | None:
    """The Events inside ``value``, or None when ``value`` is not a Kubernetes audit shape."""
    if not isinstance(value, dict) or depth > _MAX_ITEMS_DEPTH:
        return None
    if is_event(value):
        return [Unwrapped(value, None, "raw")]
    kind = value.get("kind")
    if kind == "EventList" and isinstance(value.get("items"), list):
        out: list[Unwrapped] = []
        for item in value["items"]:
            if isinstance(item, dict) and is_event(item):
                out.append(Unwrapped(item, None, "eventlist"))
            else:
                out.append(Unwrapped(reject_marker(Reason.UNKNOWN_SHAPE, "EventList item is not an Event",
                                                   _dump(item)), None, "eventlist"))
        return out
    proto = value.get("protoPayload")
    if isinstance(proto, dict) and proto.get("serviceName") == "k8s.io":
        return [_from_gke(value, proto)]
    if isinstance(value.get("records"), list):
        # Event Hub batch (AKS diagnostic settings). Other categories (guard, klog text) in the same
        # batch are not audit events: quarantined as unknown_shape, the audit ones kept.
        # Records of other diagnostic categories (kube-apiserver, guard, ...) are valid AKS
        # control-plane logs, not audit Events: counted ignored, not quarantined.
        recs = [unwrap_k8s(r, depth + 1) for r in value["records"]]
        if not any(r is not None for r in recs):
            if value["records"] and all(_is_aks_record(r) and _AKS_CLUSTER.search(r["resourceId"])
                                        for r in value["records"]):
                # a batch of only other AKS categories (an Entra batch has no managedClusters ids)
                return [ignored_entry(IgnoreReason.NOT_AN_EVENT, "aks") for _ in value["records"]]
            return None
        return [u for r, raw in zip(recs, value["records"], strict=True)
                for u in (r if r is not None else [ignored_entry(IgnoreReason.NOT_AN_EVENT, "aks")]
                          if _is_aks_record(raw) else [Unwrapped(
                    reject_marker(Reason.UNKNOWN_SHAPE, "Event Hub record is not a Kubernetes audit record",
                                  _dump(raw)), None, "aks")])]
    props = value.get("properties")
    if isinstance(props, dict) and "log" in props and (
        str(value.get("category")) in _AKS_CATEGORIES or "managedClusters" in str(value.get("operationName", ""))
    ):
        return [_from_aks(value, props)]
    if isinstance(value.get("logEvents"), list) and isinstance(value.get("logGroup"), str):
        m = _EKS_LOG_GROUP.match(value["logGroup"])
        cluster = m.group(1) if m else None
        messages = [e.get("message") if isinstance(e, dict) else None for e in value["logEvents"]]
        events = [_from_cloudwatch_message(msg, cluster) for msg in messages]
        if m is None and all(e is None for e in events):
            return None  # not an EKS log group: another service's subscription (see ignore_k8s)
        # An EKS control-plane log group also streams authenticator, scheduler and controller
        # manager text lines: valid, not audit Events.
        return [e if e is not None else ignored_entry(IgnoreReason.NOT_AN_EVENT, "eks")
                if isinstance(msg, str) and not msg.lstrip().startswith("{") else Unwrapped(
            reject_marker(Reason.UNKNOWN_SHAPE, "CloudWatch log event without an audit Event message"),
            cluster, "eks") for e, msg in zip(events, messages, strict=True)]
    if isinstance(value.get("message"), str):
        one = _from_cloudwatch_message(value["message"], None)
        return [one] if one is not None else None
    return None


def _is_aks_record(value: Any) -> bool:
    """An Azure diagnostic record (``category`` and ``resourceId`` strings, as AKS writes them)."""
    return isinstance(value, dict) and isinstance(value.get("category"), str) and isinstance(
        value.get("resourceId"), str)


def ignore_k8s(value: Any) -> IgnoreReason | None:
    """Why a JSON value that no normalizer claimed is a valid record of a Kubernetes log carrier
    that is not for ztaudit, or None.

    * A Cloud Logging ``LogEntry`` (``logName`` and a payload) of another service: a GCP log
      export holds every service's entries, ``protoPayload.serviceName`` ``k8s.io`` are the
      Kubernetes ones (docs/kubernetes-audit.md §8.1) -> ``not_kubernetes``.
    * An AKS diagnostic record of another category (``kube-apiserver``, ``guard``, ...) ->
      ``not_an_event``.
    * A CloudWatch subscription envelope of a log group that is not an EKS cluster's ->
      ``not_kubernetes``.
    """
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("logName"), str) and any(
            k in value for k in ("protoPayload", "jsonPayload", "textPayload")):
        return IgnoreReason.NOT_KUBERNETES
    if _is_aks_record(value) and value.get("category") not in _AKS_CATEGORIES:
        return IgnoreReason.NOT_AN_EVENT
    if isinstance(value.get("logEvents"), list) and isinstance(value.get("logGroup"), str):
        return IgnoreReason.NOT_KUBERNETES
    return None


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (envelope fields can be anything)."""
    return value if isinstance(value, dict) else {}


def _dump(value: Any) -> bytes:
    from ztaudit.pipeline.decode.values import dumps

    return dumps(value)


def _from_cloudwatch_message(message: Any, cluster: str | None) -> Unwrapped | None:
    """One CloudWatch log event ``message``: an Event JSON string, possibly cut by CloudWatch."""
    if not isinstance(message, str):
        return None
    text = message.strip()
    if not text.startswith("{"):
        return None
    if text.endswith(CLOUDWATCH_TRUNCATED):
        return Unwrapped(reject_marker(Reason.TRUNCATED, "CloudWatch cut the message ([Truncated...])", text),
                         cluster, "eks")
    try:
        inner = loads(text)
    except ValueError as exc:
        if '"auditID"' not in text:
            return None
        reason, detail = json_failure(text, exc)
        return Unwrapped(reject_marker(reason, f"EKS message: {detail}", text), cluster, "eks")
    if isinstance(inner, dict) and is_event(inner):
        return Unwrapped(inner, cluster, "eks")
    return None


def _from_aks(value: Mapping[str, Any], props: Mapping[str, Any]) -> Unwrapped:
    """AKS diagnostic record: the Event is ``properties.log`` (string as shipped, or object)."""
    found = _AKS_CLUSTER.findall(str(value.get("resourceId", "")))
    cluster = found[-1] if found else None  # the last managedClusters segment names the cluster
    log = props.get("log")
    if isinstance(log, str):
        try:
            log = loads(log)
        except ValueError as exc:
            reason, detail = json_failure(log, exc)
            return Unwrapped(reject_marker(reason, f"AKS properties.log: {detail}", log), cluster, "aks")
    if isinstance(log, dict) and is_event(log):
        return Unwrapped(log, cluster, "aks")
    return Unwrapped(reject_marker(Reason.UNKNOWN_SHAPE, "AKS properties.log is not an audit Event",
                                   _dump(log)), cluster, "aks")


def parse_gke_resource_name(resource_name: str) -> dict[str, str] | None:
    """``objectRef`` from ``<group>/<version>/[namespaces/<ns>/]<resource>[/<name>[/<sub>]]``.

    The core group is written ``core`` (-> ``""``). Non-resource paths (``readyz``, ``HNAP1``)
    give None.
    """
    parts = [p for p in resource_name.split("/") if p != ""]
    if len(parts) < 3:
        return None
    group, version, rest = parts[0], parts[1], parts[2:]
    ref: dict[str, str] = {"apiGroup": "" if group == "core" else group, "apiVersion": version}
    if rest[0] == "namespaces" and len(rest) >= 3:
        ref["namespace"] = rest[1]
        rest = rest[2:]
    ref["resource"] = rest[0]
    if len(rest) > 1:
        ref["name"] = rest[1]
    if len(rest) > 2:
        ref["subresource"] = rest[2]
    if len(rest) > 3:
        # what follows the subresource (``nodes/n/proxy/metrics/cadvisor``, ``services/s/proxy/x``):
        # not part of objectRef, but of the request path (see _gke_uri)
        ref["rest"] = "/".join(rest[3:])
    return ref


def _gke_uri(ref: Mapping[str, str] | None, resource_name: str) -> str:
    """A request path equivalent to the GKE resource (GKE does not log requestURI)."""
    if ref is None:
        return "/" + resource_name.lstrip("/")
    base = "/api/" + ref["apiVersion"] if ref["apiGroup"] == "" else f"/apis/{ref['apiGroup']}/{ref['apiVersion']}"
    path = [base]
    if "namespace" in ref:
        path.append(f"namespaces/{ref['namespace']}")
    path.extend(ref[k] for k in ("resource", "name", "subresource", "rest") if k in ref)
    return "/".join(path)


def _from_gke(entry: Mapping[str, Any], proto: Mapping[str, Any]) -> Unwrapped:
    """Rebuild an Event from a GKE ``LogEntry`` (mapping table: docs/kubernetes-audit.md §8.1).

    GKE has no groups, extras (so no credential-id), impersonation, stage or HTTP status. Stage
    is inferred from ``operation.last`` and level from which bodies are present, as Falco's
    converter does; bodies themselves are never copied.
    """
    auth = _obj(proto.get("authenticationInfo"))
    meta = _obj(proto.get("requestMetadata"))
    method = str(proto.get("methodName") or "")
    resource_name = str(proto.get("resourceName") or "")
    # Non-resource methods are io.k8s.<verb>; resource methods io.k8s.<group>.<version>.<res>[.<sub>].<verb>.
    ref = parse_gke_resource_name(resource_name) if method.count(".") > 2 else None
    grpc = _obj(proto.get("status")).get("code", 0)
    grpc = grpc if isinstance(grpc, int) and not isinstance(grpc, bool) else -1
    annotations = {str(k): str(v) for k, v in _obj(entry.get("labels")).items()}
    annotations[GKE_STATUS_ANNOTATION] = str(grpc)
    operation = _obj(entry.get("operation"))
    labels = _obj(_obj(entry.get("resource")).get("labels"))
    user = auth.get("principalEmail") or auth.get("principalSubject")
    ts = entry.get("timestamp")
    level = "RequestResponse" if "response" in proto else "Request" if "request" in proto else "Metadata"
    event: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": level,
        "auditID": entry.get("insertId") or operation.get("id"),
        "stage": "ResponseComplete" if operation.get("last", True) else "ResponseStarted",
        "requestURI": _gke_uri(ref, resource_name),
        "verb": method.rsplit(".", 1)[-1] if method else None,
        "user": {"username": user} if user else {},
        "sourceIPs": [meta["callerIp"]] if meta.get("callerIp") else None,
        "userAgent": meta.get("callerSuppliedUserAgent"),
        "objectRef": {k: v for k, v in ref.items() if k != "rest"} if ref is not None else None,
        "responseStatus": {"code": GRPC_TO_HTTP.get(grpc, 500)},
        "requestReceivedTimestamp": ts,
        "stageTimestamp": ts,
        "annotations": annotations,
    }
    cluster = labels.get("cluster_name")
    return Unwrapped(event, str(cluster) if cluster else None, "gke")
