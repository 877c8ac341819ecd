"""Configuration: ``ztaudit.toml``, then ``ZTAUDIT_*`` environment overrides, then CLI flags.

Where the file is: ``--config PATH``, else ``$ZTAUDIT_CONFIG``, else ``./ztaudit.toml`` if it exists,
else the defaults below. Every default carries a one-line reason (``why``), printed by
``ztaudit config check``. Environment overrides are ``ZTAUDIT_<SECTION>_<KEY>`` (upper case), for
example ``ZTAUDIT_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092``; lists are comma-separated and tables
are JSON. Validation errors raise :class:`ConfigError` naming the key and the fix.

Secrets (Kafka SASL password) are never stored in the file: the file names an environment
variable or a file that holds them, and :meth:`KafkaSettings.password` reads it when needed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from ztaudit.core import warehouse
from ztaudit.core.catalog_uri import mask_uri, query_secrets, remember_file_setting
from ztaudit.core.errors import ConfigError, ConfigErrors
from ztaudit.core.names import did_you_mean
from ztaudit.core.proxy_hosts import host_map

log = logging.getLogger(__name__)

#: Settings that take one of a fixed set of words (checked when the config is loaded).
ReachWindow = Literal["hour", "day"]
KafkaBackend = Literal["kafka-python", "confluent"]
StartFrom = Literal["earliest", "latest"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
TableFormat = Literal["parquet", "iceberg"]
DetectEngine = Literal["duckdb", "spark"]


#: ``ingest.cluster_fields`` by default: where shippers' users put the cluster name (Fluent Bit
#: ``record_modifier`` and Vector ``remap`` examples add ``cluster``; OpenTelemetry names it
#: ``k8s.cluster.name``); neither shipper's own Kubernetes metadata has one (docs/shippers.md).
DEFAULT_CLUSTER_FIELDS = ("cluster", "cluster_name", "kubernetes.cluster_name", "k8s.cluster.name")

#: A fix that says more than "use one of ..." for a fixed-word setting.
_CHOICE_FIX: dict[str, str] = {
    "kafka.backend": "use kafka-python (default) or confluent (pip install 'ztaudit[confluent]')",
}


def _opt(default: Any, why: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata={"why": why})
    return field(default=default, metadata={"why": why})


@dataclass(frozen=True)
class IngestSettings:
    max_record_bytes: int = _opt(1024 * 1024, "1 MiB: the API server's own audit truncation keeps events "
                                 "well below it; anything larger is hostile or broken")
    cluster_from_path: str = _opt(
        r"(?:^|/)cluster=(?P<cluster>[^/]+)/",
        "audit lines carry no cluster name; a shipper that writes one folder per cluster "
        "(hive-style cluster=NAME/) names it; a regex with a (?P<cluster>...) group, matched on the input path")
    cluster_fields: list[str] = _opt(
        list(DEFAULT_CLUSTER_FIELDS),
        "audit events name no cluster; a log shipper's record can (a field its config adds): the first of "
        "these dotted paths that holds a name gives k8s_audit rows their cluster (docs/shippers.md)")
    chunk_bytes: int = _opt(64 * 1024 * 1024, "64 MiB per columnar parse: large enough for DuckDB-sized row "
                            "groups, small enough to bound memory whatever the input size")


@dataclass(frozen=True)
class ImpersonationSettings:
    approved_impersonators: dict[str, list[str]] = _opt(
        {"*": ["system:serviceaccount:pomerium:pomerium-authorize"]},
        "per cluster ('*' = all): the proxy service accounts allowed to impersonate people; "
        "the default is the Pomerium authorize service account")
    proxy_hosts: dict[str, str] = _opt(
        {}, "proxy route host -> cluster it fronts; empty means one cluster, named by --cluster")
    break_glass: list[str] = _opt(
        [], "identities allowed to reach the API directly in an emergency; each use is still reported at "
        "severity low")


@dataclass(frozen=True)
class IdentitySettings:
    human_user_patterns: list[str] = _opt(
        [r"^[^@\s:]+@[^@\s]+\.[^@\s]+$", r"^(oidc|okta|azure|google|sso):"],
        "people log in with an email or an OIDC-prefixed name; machines are system:* identities")
    username_prefixes: list[str] = _opt(
        ["oidc:", "okta:", "azure:", "google:", "sso:"],
        "prefixes an API server adds to people's names (--oidc-username-prefix); a revoked IdP login is "
        "also looked for behind them in the audit log (an issuer-URL prefix such as "
        "'https://idp.example.com#' can be listed too)")
    human_group_patterns: list[str] = _opt([], "groups that only people are in (e.g. an IdP group prefix)")
    system_user_patterns: list[str] = _opt(
        [r"^system:(kube-|apiserver|volume-scheduler|admin$|anonymous$)", r"^(eks|aks|gke)[:-]",
         r"^aksService$", r"^kubernetes-admin$"],
        "control-plane components and cloud-provider agents")


@dataclass(frozen=True)
class CorrelationSettings:
    match_window_seconds: float = _opt(
        3.0, "Pomerium logs whole seconds (up to 1 s lost) and proxy and API-server clocks drift up to "
        "~1.5 s; 3 s covers both without pairing unrelated requests")
    proxy_utc_offset: str = _opt(
        "", "offset for proxy lines whose time has no zone (e.g. '+02:00'); empty = the line's own "
        "offset, else UTC")
    idp_utc_offset: str = _opt(
        "", "offset for identity-provider events whose time has no zone (Keycloak's jboss-logging text "
        "lines, in the Keycloak server's own time zone; Okta, Entra, Google times carry one); empty = UTC. "
        "The proxy's lines (Pomerium, Teleport) and the revocation list use proxy_utc_offset")
    exact_id_window_seconds: float = _opt(
        300.0, "tier A (Audit-ID == proxy request id) is exact; the time check only guards against "
        "client-chosen Audit-IDs reused much later, so it can be generous")
    max_clock_skew_seconds: float = _opt(
        120.0, "a proxy whose clock is off the API server's by more than the match window (a host without "
        "NTP) left every request unpaired; ztaudit then measures the offset on the unpaired requests (the "
        "median of at least 10 rank pairs of one user, method and path, 80 % of them within the match window "
        "of it) and pairs them again with it, up to this many seconds; 0 = never")
    unaudited_paths: list[str] = _opt(
        ["/version", "/healthz*", "/livez*", "/readyz*"],
        "paths (globs) the audit policy does not log: readable by everyone (ClusterRole "
        "system:public-info-viewer) and dropped by most audit policies, so no audit event is expected for "
        "them and neither side's requests to them are paired or judged")
    session_extra_key: str = _opt(
        "", "tier B: the audit user.extra key that carries the proxy session id (the API server's "
        "AuthenticationConfiguration claimMappings.extra mapping Pomerium's 'sid' claim); empty = off")


@dataclass(frozen=True)
class RevocationSettings:
    grace_seconds: int = _opt(
        900, "Pomerium re-checks the IdP every 10 min by default and at token refresh; 15 min covers it")
    lookback_days: int = _opt(
        30, "how far back detect looks for revocations whose enforcement is still being judged")
    activity_days: int = _opt(
        7, "a subject counts as active if seen at the proxy or the API server this long before the "
        "revocation; uses this long after it are judged")
    notice_window_hours: float = _opt(
        24.0, "a proxy session deletion for the subject this long after the revocation is the proxy "
        "noticing it (Pomerium polls user info every 10 min and refreshes at token expiry)")
    objective_seconds: int = _opt(
        900, "the enforcement objective: enforced, and no allowed use, within 15 minutes")


@dataclass(frozen=True)
class CredentialSettings:
    max_age_hours: dict[str, float] = _opt(
        {"jti": 48.0, "x509": 24.0 * 400, "legacy_secret": 24.0 * 365},
        "bound tokens are rotated hourly by the kubelet (48 h flags a token read once and never "
        "reloaded); client certs are commonly issued for 1 year; legacy tokens never expire")
    dormancy_days: float = _opt(
        30.0, "a credential unused for a month and then used again is worth a look")
    cluster_networks: dict[str, list[str]] = _opt(
        {"*": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8", "127.0.0.0/8", "::1/128",
               "169.254.0.0/16", "fe80::/10"]},
        "pod, node and control-plane networks are private ranges in nearly every cluster, and link-local "
        "addresses never leave the host or link (OpenShift OVN-Kubernetes' host address is 169.254.169.1); "
        "set the exact CIDRs per cluster for precision")
    shared_window_seconds: int = _opt(
        300, "one credential seen from several places within 5 min is concurrent use, not travel")


@dataclass(frozen=True)
class ReachSettings:
    baseline_days: int = _opt(14, "two weeks of history covers weekly rhythms")
    window: ReachWindow = _opt("day", "feature window: 'hour' or 'day'; a day smooths bursts, an hour reacts faster")
    contamination: float = _opt(0.001, "expected share of anomalous actor-windows in the baseline")
    min_history_windows: int = _opt(3, "below this an actor is judged against its peers only")
    random_state: int = _opt(7, "fixed so scores are reproducible run to run")
    model_top_share: float = _opt(
        0.05, "a reach finding needs the model to rank the window among the most unusual 5 % of the baseline's "
        "actor-windows; the robust per-feature gate (margins over the actor's usual and its peers' maximum) "
        "gives the precision")


@dataclass(frozen=True)
class DetectSettings:
    streaming_lookback_seconds: int = _opt(
        3600, "after each consumer flush, detectors re-judge the last hour so proxy and audit lines that "
        "arrive minutes apart still pair up")
    lock_timeout_seconds: float = _opt(
        120.0, "batch detect and the streaming consumer take turns on the findings files; waiting 2 min "
        "covers a full detect run on a day of data")
    max_evidence: int = _opt(50, "event references kept per finding: enough to investigate, small enough "
                             "to read")
    memory_limit: str = _opt("2GB", "DuckDB spills to disk beyond this, so detect over a week of a busy "
                             "cluster stays within a 4 GiB host; empty = DuckDB's default (80% of RAM)")
    engine: DetectEngine = _opt(
        "duckdb", "DuckDB is embedded and fastest on one machine; spark runs the same SQL on a Spark "
        "cluster (or local[N]) over an Iceberg lake too big for one (`ztaudit migrate` first)")
    spark_master: str = _opt("local[2]", "with engine = spark: Spark in this process on two cores; a "
                             "cluster's master URL (spark://HOST:7077, ...) spreads the work")
    spark_jars: str = _opt("", "with engine = spark: the Iceberg runtime and SQLite JDBC jars as a classpath; "
                           "empty = the cache scripts/spark-jars fills from Maven Central")


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = _opt("127.0.0.1:9092", "a local broker, as started by `make kafka`")
    group: str = _opt("ztaudit", "one consumer group; more processes in it scale ingest out")
    backend: KafkaBackend = _opt(
        "kafka-python", "kafka-python is a core dependency; confluent (librdkafka, the optional "
        "ztaudit[confluent] extra) decodes records in C and is faster per process")
    session_timeout_ms: int = _opt(
        10_000, "a killed consumer holds its partitions until this expires; 10 s fails over quickly and "
        "heartbeats run on kafka-python's IO thread, so long flushes do not expire it")
    topics: list[str] = _opt([], "NAME or NAME=SOURCE_KIND; empty means --topic must be given")
    start_from: StartFrom = _opt("earliest", "a new lake wants history, not only what arrives from now on")
    flush_records: int = _opt(100_000, "about one DuckDB row group per file")
    flush_bytes: int = _opt(128 * 1024 * 1024, "bounds memory per partition buffer")
    flush_seconds: float = _opt(30.0, "a quiet topic still reaches the lake within half a minute")
    security_protocol: SecurityProtocol = _opt("PLAINTEXT", "loopback development broker")
    sasl_mechanism: SaslMechanism = _opt("", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with SASL_* protocols")
    sasl_username: str = _opt("", "SASL user name")
    sasl_password_env: str = _opt("ZTAUDIT_KAFKA_PASSWORD", "the password comes from this environment variable")
    sasl_password_file: str = _opt("", "or from this file (first line), e.g. a mounted Kubernetes secret")
    ssl_cafile: str = _opt("", "CA bundle for SSL/SASL_SSL; empty = system trust store")
    ssl_certfile: str = _opt("", "client certificate for mutual TLS")
    ssl_keyfile: str = _opt("", "client key for mutual TLS")
    findings_topic: str = _opt("", "when set, streaming findings are also produced to this topic")
    cluster_header: str = _opt(
        "cluster", "a producer can name a message's cluster in this Kafka header (after a shipper field, "
        "before kafka.topic_clusters); empty = headers are not read")
    topic_clusters: dict[str, str] = _opt(
        {}, "topic -> cluster its audit events come from, for topics that carry one cluster's events "
        "(after a shipper field and the header, before --cluster)")

    def password(self) -> str | None:
        """The SASL password from the file or environment variable named in the config, or None."""
        if self.sasl_password_file:
            try:
                return Path(self.sasl_password_file).read_text().splitlines()[0]
            except (OSError, IndexError) as exc:
                raise ConfigError("kafka.sasl_password_file", f"cannot read {self.sasl_password_file}: {exc}",
                                  fix="point it at a readable file whose first line is the password") from exc
        value = os.environ.get(self.sasl_password_env) if self.sasl_password_env else None
        return value or None


@dataclass(frozen=True)
class ServeSettings:
    listen: str = _opt("127.0.0.1:8443", "loopback: an API server on the same host reaches it; another address "
                       "exposes it to the network and is logged as a warning")
    tls_cert: str = _opt("", "server certificate (PEM), required: the API server verifies it against the "
                         "kubeconfig's certificate-authority")
    tls_key: str = _opt("", "the server certificate's private key (PEM, unencrypted)")
    client_ca: str = _opt("", "CA of the API server's client certificate (mTLS); empty = no client certificates")
    token_file: str = _opt("", "bearer tokens, one TOKEN or TOKEN,CLUSTER per line; empty = no tokens")
    max_body_bytes: int = _opt(16 * 1024 * 1024, "above the API server's largest truncated batch "
                               "(--audit-webhook-truncate-max-batch-size, 10 MiB) and 400 Metadata events; "
                               "bounds memory per post")
    max_concurrent: int = _opt(4, "the API server sends batches concurrently; memory stays below about this "
                               "many bodies, and more posts get 503 + Retry-After and are re-sent")
    summary_seconds: float = _opt(60.0, "one summary line a minute at info level")


@dataclass(frozen=True)
class TriageSettings:
    suppress: list[dict[str, Any]] = _opt(
        [], "[[triage.suppress]] rules: detector (id or glob), actor and/or namespace globs, reason, optional "
        "expires; matching findings are hidden from reports and the findings topic (docs/triage.md)")


@dataclass(frozen=True)
class LakeSettings:
    format: TableFormat = _opt(
        "parquet", "the format of a lake ingest/consume/serve create: plain hive-partitioned Parquet, or "
        "Apache Iceberg v2 tables over the same files (docs/iceberg.md); an existing lake keeps its own")
    publish_seconds: float = _opt(
        10.0, "an Iceberg lake being ingested shows new rows within ten seconds, in few commits")
    retention_days: int = _opt(
        0, "0 keeps every day; `ztaudit maintain` drops older days of the event and derived tables "
        "(never findings, triage or RBAC snapshots)")
    catalog_uri: str = _opt(
        "", "empty = the Iceberg catalog is a SQLite file inside the lake: nothing to start, one machine; "
        "postgresql+psycopg2://USER@HOST:PORT/DB shares it among writers on several machines (password from "
        "~/.pgpass or $PGPASSFILE, or in the URI of $ZTAUDIT_LAKE_CATALOG_URI; never in this file)")
    warehouse: str = _opt(
        "", "empty = an Iceberg lake keeps its files in the lake folder; s3://BUCKET/PREFIX keeps its data files "
        "and table metadata on S3-compatible storage (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
        "or AWS_SHARED_CREDENTIALS_FILE, never from here); applies to lakes created with it (docs/iceberg.md)")
    s3_endpoint: str = _opt(
        "", "empty = AWS S3 itself; http(s)://HOST:PORT of an S3-compatible store (MinIO, Ceph, S3Proxy), "
        "reached with path-style addressing")
    s3_region: str = _opt("us-east-1", "the S3 region requests are signed for (most S3-compatible stores "
                                       "accept us-east-1)")


@dataclass(frozen=True)
class Config:
    lake: LakeSettings = field(default_factory=LakeSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    impersonation: ImpersonationSettings = field(default_factory=ImpersonationSettings)
    identities: IdentitySettings = field(default_factory=IdentitySettings)
    correlation: CorrelationSettings = field(default_factory=CorrelationSettings)
    revocation: RevocationSettings = field(default_factory=RevocationSettings)
    credentials: CredentialSettings = field(default_factory=CredentialSettings)
    reach: ReachSettings = field(default_factory=ReachSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    detect: DetectSettings = field(default_factory=DetectSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    triage: TriageSettings = field(default_factory=TriageSettings)
    source_path: str | None = None
    #: where each setting came from: "default", "file PATH:LINE", "environment $NAME" or "flag"
    origins: dict[str, str] = field(default_factory=dict, compare=False)
    #: what loading noticed but did not refuse (an unknown ``ZTAUDIT_*`` variable)
    warnings: tuple[str, ...] = ()

    # --- helpers the detectors use -------------------------------------------------------
    def approved_for(self, cluster: str | None) -> list[str]:
        """Approved impersonators for ``cluster`` (its own list plus the '*' list)."""
        m = self.impersonation.approved_impersonators
        return sorted(set(m.get("*", [])) | set(m.get(cluster or "", [])))

    def networks_for(self, cluster: str | None) -> list[str]:
        m = self.credentials.cluster_networks
        return list(m.get(cluster or "", m.get("*", [])))


_SECTIONS = [f.name for f in fields(Config) if f.name not in ("source_path", "origins", "warnings")]


#: A time-span setting's unit, from its name's suffix; such settings also take a duration like ``15m``.
_FIELD_UNITS: dict[str, tuple[float, str]] = {
    "_ms": (0.001, "milliseconds"), "_seconds": (1.0, "seconds"), "_hours": (3600.0, "hours"),
    "_days": (86400.0, "days"),
}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


#: The longest time span a flag takes: 100 years (``datetime`` arithmetic overflows past year 9999).
_DURATION_MAX_S = 100 * 366 * 86400.0


def parse_duration_seconds(name: str, value: str) -> float:
    """``value`` like ``15m``, ``12h``, ``7d`` (ms, s, m, h, d, w) in seconds; a flag's time span.

    Raises :class:`ConfigError` naming ``name`` when it is not such a span."""
    m = _DURATION.fullmatch(value)
    if m is None:
        raise ConfigError(name, f"{value!r} is not a time span", fix="write it like 30m, 12h or 7d")
    seconds = float(m.group(1)) * _DURATION_SECONDS[m.group(2)]
    if seconds > _DURATION_MAX_S:  # a date that far back or ahead is out of Python's range
        raise ConfigError(name, f"{value!r} is longer than 100 years", fix="write a shorter span, like 3650d")
    return seconds


def _unit(key: str) -> tuple[float, str] | None:
    """(seconds per unit, unit name) for a time-span setting, else None."""
    return next((u for suffix, u in _FIELD_UNITS.items() if key.endswith(suffix)), None)


def _expected(origin: Any, from_env: bool, unit: tuple[float, str] | None) -> str:
    """What a setting of this type must be, in words."""
    if origin is int:
        words = "a whole number" + (f" of {unit[1]}" if unit else "")
    elif origin is float:
        words = "a number" + (f" of {unit[1]}" if unit else "")
    elif origin is bool:
        words = "true or false"
    elif origin is str:
        words = "a string"
    elif origin is list:
        words = "a list of strings" + (" (comma-separated in an environment variable)" if from_env else "")
    elif origin is dict:
        words = "a table" + (" (JSON in an environment variable)" if from_env else "")
    else:
        words = str(origin)
    if unit and origin in (int, float):
        words += " or a duration like 15m, 2h, 7d"
    return words


def _coerce(key: str, value: Any, typ: Any, from_env: bool, where: str = "") -> Any:
    origin = getattr(typ, "__origin__", typ)
    if origin is Literal:
        choices = get_args(typ)
        if value not in choices:
            words = "|".join(str(c) for c in choices if c)
            raise ConfigError(key, f"{value!r} is not {words}" + (" (or empty)" if "" in choices else "") + where,
                              fix=_CHOICE_FIX.get(key, f"use one of: {', '.join(repr(c) for c in choices)}"))
        return value
    unit = _unit(key)
    try:
        if origin in (int, float) and unit and isinstance(value, str) and _DURATION.fullmatch(value):
            m = _DURATION.fullmatch(value)
            assert m is not None
            amount = float(m.group(1)) * _DURATION_SECONDS[m.group(2)] / unit[0]
            if origin is int:
                if abs(amount - round(amount)) > 1e-9:
                    raise ValueError(value)
                return round(amount)
            return amount
        if origin is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, bool):
                raise TypeError
            return value
        if origin is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if origin is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if origin is str:
            if not isinstance(value, str):
                raise TypeError
            return value
        if origin is list and get_args(typ) and getattr(get_args(typ)[0], "__origin__", None) is dict:
            # an array of tables ([[triage.suppress]]); JSON in an environment variable
            if from_env and isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(key, f"must be an array of tables, got {value!r}{where}",
                                  fix=f"write [[{key}]] tables (docs/triage.md)")
            # a TOML date-time becomes its ISO text, so `config check` can print it and rules parse it
            return [{k: x.isoformat() if isinstance(x, (datetime, date)) else x for k, x in v.items()}
                    for v in value]
        if origin is list:
            if from_env and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return list(value)
        if origin is dict:
            if from_env and isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, dict):
                raise TypeError
            return {str(k): v for k, v in value.items()}
    except (TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(key, f"must be {_expected(origin, from_env, unit)}, got {value!r}{where}",
                          fix="see `ztaudit config check --defaults` for the expected form") from exc
    return value


def _env_name(section: str, key: str) -> str:
    return f"ZTAUDIT_{section.upper()}_{key.upper()}"


def _key_lines(text: str) -> dict[str, int]:
    """``section.key`` -> line number of its assignment in a TOML file (plain tables only)."""
    out: dict[str, int] = {}
    section = ""
    for n, line in enumerate(text.splitlines(), 1):
        if m := re.match(r"\s*\[\s*([A-Za-z0-9_-]+)\s*\]", line):
            section = m.group(1)
        elif (m := re.match(r"\s*([A-Za-z0-9_-]+)\s*=", line)) and section:
            out.setdefault(f"{section}.{m.group(1)}", n)
    return out


def _build(section_cls: type, name: str, raw: Mapping[str, Any], env: Mapping[str, str],
           flags: Mapping[str, Any], file_origin: Mapping[str, str], origins: dict[str, str],
           errors: list[ConfigError]) -> Any:
    """One section from the file's values, then ``ZTAUDIT_*`` variables, then flags; a bad value
    is recorded in ``errors`` (and left at its default) so that every error is reported at once."""
    hints = get_type_hints(section_cls)
    known = {f.name for f in fields(section_cls)}
    for key in sorted(set(raw) - known):
        errors.append(ConfigError(f"{name}.{key}", f"unknown key{did_you_mean(key, known)}",
                                  fix=f"valid keys in [{name}]: {', '.join(sorted(known))}"))
    kwargs: dict[str, Any] = {}
    for f in fields(section_cls):
        key = f"{name}.{f.name}"
        env_name = _env_name(name, f.name)
        origins[key] = "default"
        try:
            if f.name in flags and flags[f.name] is not None:
                kwargs[f.name] = _coerce(key, flags[f.name], hints[f.name], from_env=False)
                origins[key] = "flag"
            elif env_name in env:
                kwargs[f.name] = _coerce(key, env[env_name], hints[f.name], from_env=True,
                                         where=f" (from ${env_name})")
                origins[key] = f"environment ${env_name}"
            elif f.name in raw:
                kwargs[f.name] = _coerce(key, raw[f.name], hints[f.name], from_env=False)
                origins[key] = file_origin.get(key, "file")
        except ConfigError as exc:
            errors.append(exc)
    return section_cls(**kwargs)


#: ``ZTAUDIT_*`` variables that are not settings but are read elsewhere (or by the test suite).
_OTHER_ENV: frozenset[str] = frozenset({"ZTAUDIT_CONFIG", "ZTAUDIT_LAKE", "ZTAUDIT_SAMPLE_LOGS", "ZTAUDIT_BENCH_DIR",
                                        "ZTAUDIT_SHARED", "ZTAUDIT_KAFKA_PASSWORD", "ZTAUDIT_ACTOR",
                                        # the test broker's (scripts/kafka-broker)
                                        "ZTAUDIT_KAFKA_CACHE", "ZTAUDIT_KAFKA_VERSION", "ZTAUDIT_KEEP_KAFKA_DIR",
                                        "ZTAUDIT_KAFKA_SCRAM_PASSWORD"})
_OTHER_ENV_PREFIXES: tuple[str, ...] = ("ZTAUDIT_TEST_", "ZTAUDIT_CONSUME_KILL_")


def _unknown_env(env: Mapping[str, str], cfg: Config) -> list[str]:
    """A warning for each ``ZTAUDIT_*`` variable that names no setting (a typo is otherwise ignored)."""
    settings = [_env_name(name, f.name) for name in _SECTIONS for f in fields(getattr(cfg, name))]
    known = set(settings) | _OTHER_ENV | {cfg.kafka.sasl_password_env}
    out = []
    for var in sorted(env):
        if var.startswith("ZTAUDIT_") and var not in known and not var.startswith(_OTHER_ENV_PREFIXES):
            out.append(f"${var} is not a ztaudit setting and is ignored{did_you_mean(var, settings, n=1)}")
    return out


#: URI schemes ``lake.catalog_uri`` accepts (pyiceberg's SQL catalog on PostgreSQL through psycopg2).
CATALOG_URI_SCHEMES: tuple[str, ...] = ("postgresql+psycopg2", "postgresql")


def _check_catalog_uri(cfg: Config, errors: list[ConfigError]) -> None:
    """``lake.catalog_uri``: empty, or a PostgreSQL URI with a host and a database; a password only
    from the environment (secrets are never stored in the file). Messages never hold the password."""
    from urllib.parse import urlsplit

    uri = cfg.lake.catalog_uri
    if not uri:
        return
    fix = "write it like postgresql+psycopg2://USER@HOST:5432/DB, or leave it empty for the lake's own SQLite catalog"
    # The URI itself is never repeated: a malformed one may hold the password where no parser finds it.
    try:
        parts = urlsplit(uri)
        _ = parts.port  # ValueError for a port that is not a number
    except ValueError:
        errors.append(ConfigError("lake.catalog_uri", "is not a URI (its port is not a number)", fix=fix))
        return
    if parts.scheme not in CATALOG_URI_SCHEMES:
        errors.append(ConfigError("lake.catalog_uri", f"scheme {parts.scheme[:40]!r} is not PostgreSQL's "
                                  f"({' or '.join(CATALOG_URI_SCHEMES)})", fix=fix))
    elif not parts.hostname or not parts.path.strip("/"):
        errors.append(ConfigError("lake.catalog_uri", "names no " + ("host" if not parts.hostname else "database"),
                                  fix=fix))
    elif query_secrets(uri):
        errors.append(ConfigError("lake.catalog_uri", "holds a password query parameter (password= or "
                                  "sslpassword=), which would be recorded and printed with the URI",
                                  fix="put the password in ~/.pgpass (or the file $PGPASSFILE names, mode 0600), "
                                      "or as USER:PASSWORD@ in the URI of $ZTAUDIT_LAKE_CATALOG_URI"))
    elif parts.password is not None and cfg.origins.get("lake.catalog_uri", "").startswith("file"):
        errors.append(ConfigError("lake.catalog_uri", "holds a password, and secrets are never stored in the "
                                  "config file", fix="drop it from the URI and put it in ~/.pgpass (or the file "
                                  "$PGPASSFILE names, mode 0600), or set the whole URI in $ZTAUDIT_LAKE_CATALOG_URI"))


def _check_warehouse(cfg: Config, errors: list[ConfigError]) -> None:
    """``lake.warehouse`` and ``lake.s3_endpoint``: an ``s3://BUCKET/PREFIX`` and an ``http(s)://HOST:PORT``
    without credentials (:mod:`ztaudit.core.warehouse`). Messages never repeat the values."""
    fix = "write lake.warehouse like s3://BUCKET/PREFIX and lake.s3_endpoint like http://HOST:PORT"
    if cfg.lake.warehouse:
        problem = warehouse.uri_problem(cfg.lake.warehouse)
        if problem:
            errors.append(ConfigError("lake.warehouse", problem, fix=fix))
        elif cfg.lake.format != "iceberg":
            errors.append(ConfigError("lake.warehouse", "is set, and lake.format is not iceberg: only an Iceberg "
                                      "lake can keep its files on S3", fix="set lake.format = \"iceberg\""))
    if cfg.lake.s3_endpoint:
        problem = warehouse.endpoint_problem(cfg.lake.s3_endpoint)
        if problem:
            errors.append(ConfigError("lake.s3_endpoint", problem, fix=fix))


def _validate(cfg: Config, errors: list[ConfigError]) -> None:
    _check_catalog_uri(cfg, errors)
    _check_warehouse(cfg, errors)
    for key, patterns in (("identities.human_user_patterns", cfg.identities.human_user_patterns),
                          ("identities.human_group_patterns", cfg.identities.human_group_patterns),
                          ("identities.system_user_patterns", cfg.identities.system_user_patterns)):
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                errors.append(ConfigError(key, f"bad regular expression {p!r}: {exc}"))
    for cluster, nets in cfg.credentials.cluster_networks.items():
        for n in nets:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                errors.append(ConfigError(f"credentials.cluster_networks.{cluster}", f"bad CIDR {n!r}",
                                          fix="write networks like '10.0.0.0/8'"))
    for cluster, ids in cfg.impersonation.approved_impersonators.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            errors.append(ConfigError(f"impersonation.approved_impersonators.{cluster}",
                                      "must be a list of usernames"))
    if cfg.kafka.session_timeout_ms < 1000:
        errors.append(ConfigError("kafka.session_timeout_ms",
                                  "must be >= 1000 (brokers reject less by default: 6000)"))
    if cfg.revocation.grace_seconds < 0:
        errors.append(ConfigError("revocation.grace_seconds", "must be >= 0"))
    if cfg.correlation.match_window_seconds <= 0:
        errors.append(ConfigError("correlation.match_window_seconds", "must be > 0"))
    if cfg.correlation.exact_id_window_seconds <= 0:
        errors.append(ConfigError("correlation.exact_id_window_seconds", "must be > 0"))
    if cfg.correlation.max_clock_skew_seconds < 0:
        errors.append(ConfigError("correlation.max_clock_skew_seconds", "must be >= 0"))
    if cfg.detect.streaming_lookback_seconds < 0:
        errors.append(ConfigError("detect.streaming_lookback_seconds", "must be >= 0"))
    if cfg.detect.lock_timeout_seconds <= 0:
        errors.append(ConfigError("detect.lock_timeout_seconds", "must be > 0"))
    if cfg.detect.max_evidence < 1:
        errors.append(ConfigError("detect.max_evidence", "must be >= 1"))
    if cfg.detect.memory_limit and not re.fullmatch(r"\d+(\.\d+)?\s*([KMGT]i?B|B)", cfg.detect.memory_limit):
        errors.append(ConfigError("detect.memory_limit", f"{cfg.detect.memory_limit!r} is not a size",
                                  fix="write it like '2GB' or '1500MiB', or '' for DuckDB's default"))
    for cluster in cfg.impersonation.proxy_hosts.values():
        if not isinstance(cluster, str) or not cluster.strip() or not cluster.isprintable():
            errors.append(ConfigError("impersonation.proxy_hosts", "each host must map to a cluster name",
                                      fix='write proxy_hosts = { "k8s.example.com" = "prod" }'))
    for problem in host_map(cfg.impersonation.proxy_hosts)[1]:
        errors.append(ConfigError("impersonation.proxy_hosts", problem,
                                  fix="write the route's host as the proxy logs it, e.g. k8s.example.com, "
                                      "k8s.example.com:443 or [2001:db8::1]:6443; hosts are compared in lower "
                                      "case without the port, so keep one cluster per host"))
    try:
        if cfg.ingest.cluster_from_path and "cluster" not in re.compile(cfg.ingest.cluster_from_path).groupindex:
            errors.append(ConfigError("ingest.cluster_from_path", "the pattern has no (?P<cluster>...) group",
                                      fix="name the part of the path that is the cluster, "
                                          "e.g. cluster=(?P<cluster>[^/]+)/"))
    except re.error as exc:
        errors.append(ConfigError("ingest.cluster_from_path", f"bad regular expression: {exc}"))
    for topic, name in cfg.kafka.topic_clusters.items():
        if not isinstance(name, str) or not name.strip():
            errors.append(ConfigError(f"kafka.topic_clusters.{topic}", "must map the topic to a cluster name",
                                      fix='write topic_clusters = { "audit-prod" = "prod" }'))
    if any(not f.strip() for f in cfg.ingest.cluster_fields):
        errors.append(ConfigError("ingest.cluster_fields", "an empty field path",
                                  fix='write dotted paths like ["cluster", "kubernetes.cluster_name"]'))
    if cfg.ingest.max_record_bytes < 1024:
        errors.append(ConfigError("ingest.max_record_bytes", "must be at least 1024"))
    if cfg.serve.max_body_bytes < 1024:
        errors.append(ConfigError("serve.max_body_bytes", "must be at least 1024"))
    if cfg.serve.max_concurrent < 1:
        errors.append(ConfigError("serve.max_concurrent", "must be at least 1"))
    if cfg.serve.summary_seconds <= 0:
        errors.append(ConfigError("serve.summary_seconds", "must be > 0"))
    try:
        from ztaudit.core.triage import parse_rules  # here: core.triage imports the sink, which the config must not

        parse_rules(cfg.triage.suppress)
    except ConfigError as exc:
        errors.append(exc)


def find_config_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The config file to read: --config, $ZTAUDIT_CONFIG, ./ztaudit.toml, or None for defaults."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("ZTAUDIT_CONFIG"):
        return Path(env["ZTAUDIT_CONFIG"])
    local = Path("ztaudit.toml")
    return local if local.exists() else None


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Mapping[str, Any]] | None = None, *, warn: bool = True) -> Config:
    """Load and validate the configuration. ``overrides`` are CLI flags: {section: {key: value}}; they
    win over ``ZTAUDIT_*`` variables, which win over the file.

    Raises :class:`ConfigError` for a missing file or bad TOML, and for an unknown key or a bad
    value (:class:`ConfigErrors` when there are several: all of them at once). Unknown ``ZTAUDIT_*``
    variables are logged as warnings (``warn``) and kept in :attr:`Config.warnings`.
    """
    own_env = env is None
    env = os.environ if env is None else env
    cfg_path = find_config_path(path, env)
    raw: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if cfg_path is not None:
        try:
            text = cfg_path.read_text()
            raw = tomllib.loads(text)
        except FileNotFoundError as exc:
            raise ConfigError("--config", f"{cfg_path} does not exist",
                              fix="create it (see `ztaudit config check --defaults`) or drop --config") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(cfg_path), f"invalid TOML: {exc}") from exc
        lines = _key_lines(text)
    errors: list[ConfigError] = []
    for name in sorted(set(raw) - set(_SECTIONS)):
        errors.append(ConfigError(name, f"unknown section{did_you_mean(name, _SECTIONS)}",
                                  fix=f"valid sections: {', '.join(_SECTIONS)}"))
    sections: dict[str, Any] = {}
    origins: dict[str, str] = {}
    file_origin = {key: f"file {cfg_path}:{n}" for key, n in lines.items()}
    hints = get_type_hints(Config)
    for name in _SECTIONS:
        section_raw = raw.get(name, {})
        if not isinstance(section_raw, dict):
            errors.append(ConfigError(name, f"must be a [{name}] table, got {section_raw!r}"))
            section_raw = {}
        flags = (overrides or {}).get(name, {})
        sections[name] = _build(hints[name], name, section_raw, env, flags, file_origin, origins, errors)
    cfg = Config(**sections, source_path=str(cfg_path) if cfg_path else None, origins=origins)
    _validate(cfg, errors)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)
    warnings = _unknown_env(env, cfg)
    if warn:
        for w in warnings:
            log.warning("config: %s", w)
    if own_env:  # a command's configuration: its file's lake.catalog_uri is the one core.iceberg uses
        from_file = cfg.origins.get("lake.catalog_uri", "").startswith("file")
        remember_file_setting(cfg.lake.catalog_uri if from_file else "")
        warehouse.remember_file_settings(cfg.lake.warehouse, cfg.lake.s3_endpoint, cfg.lake.s3_region)
    return dataclasses.replace(cfg, warnings=tuple(warnings))


def effective_settings(cfg: Config) -> list[tuple[str, Any, str]]:
    """(key, value, why) for every setting, secrets masked; for ``ztaudit config check``."""
    out = []
    for name in _SECTIONS:
        section = getattr(cfg, name)
        for f in fields(section):
            value = getattr(section, f.name)
            if isinstance(value, str) and "://" in value:
                value = mask_uri(value)
            out.append((f"{name}.{f.name}", value, f.metadata.get("why", "")))
    return out


def replace(cfg: Config, section: str, **changes: Any) -> Config:
    """A copy of ``cfg`` with keys of one section changed (tests and CLI flags)."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})
