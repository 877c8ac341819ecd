"""The generator's main loop: plan incidents, then walk the period hour by hour and stream files.

Reads as: build the world, plan incidents (they change the world and pre-write their own lines),
then for each hour generate background traffic, and flush every line older than the hour's end to
its day file in time order. Lines may land in a later hour than the one that produced them (a
watch's ``ResponseComplete``); they wait in the buffer until their hour is flushed, so memory is
bounded by about an hour of traffic plus the incidents' few thousand lines.

Output (``ztaudit ingest DIR`` reads the log folders; the source kind is detected per record)::

    DIR/k8s_audit/<cluster>-<YYYY-MM-DD>.jsonl          audit.k8s.io/v1 Event lines
    DIR/proxy_decision/pomerium-<YYYY-MM-DD>.jsonl      Pomerium authorize (+ some envoy) lines
    DIR/idp_event/okta-<YYYY-MM-DD>.jsonl               Okta System Log events
    DIR/idp_event/pomerium-identity-<YYYY-MM-DD>.jsonl  Pomerium identity_manager deletions
    DIR/rbac_snapshot/<cluster>.json                    the cluster's RBAC snapshot at the end (:mod:`.rbac`)
    DIR/.ztaudit/labels.jsonl                           one line per labelled incident / near-miss
    DIR/.ztaudit/revocations.jsonl                      one line per IdP revocation: its expected status
    DIR/.ztaudit/manifest.json                          seed, options, counts, clusters, time span; ``rbac``:
                                                        per cluster and service account, grants vs use (the truth)
    DIR/.ztaudit/ztaudit.toml                           cluster from file path, proxy host -> cluster, networks

The generator's own files live in the hidden ``DIR/.ztaudit/`` (:func:`metadata_dir`) because
``ingest`` skips hidden entries: ``ztaudit ingest DIR`` then reads logs only, never the labels or
the manifest as if they were (quarantined) records.

Days are UTC days of each line's own instant. Identical options give identical bytes.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from io import TextIOWrapper
from pathlib import Path
from typing import Any, Final

from ztaudit.core.progress import ProgressCallback
from ztaudit.synth.clock import DAY, HOUR, day_str, iso_us, parse_day, weekday
from ztaudit.synth.events import emit_request
from ztaudit.synth.incident_context import ALL_KINDS, Label
from ztaudit.synth.incidents import plan_incidents
from ztaudit.synth.people import ci_hour, human_hour
from ztaudit.synth.rbac import DETECTOR as RIGHTS
from ztaudit.synth.rbac import RBAC_DIR, UsedPermissions, write_snapshots
from ztaudit.synth.revocation_truth import Observed, judge
from ztaudit.synth.traffic import (
    Actor,
    Buffers,
    control_plane_actors,
    node_actors,
    pod_actors,
    poisson,
    token_rotations,
)
from ztaudit.synth.world import World, build_world

#: Folder of ``--out`` holding the generator's metadata (hidden, so ``ingest OUT`` leaves it out).
META_DIR: Final = ".ztaudit"


def metadata_dir(out: Path) -> Path:
    """Where ``generate`` writes ``labels.jsonl``, ``manifest.json`` and ``ztaudit.toml`` for ``out``."""
    return out / META_DIR


@dataclass(frozen=True, slots=True)
class GenerateOptions:
    """What ``ztaudit generate`` was asked for."""

    out: Path
    days: int = 7
    scale: float = 1.0
    seed: int = 1
    clusters: tuple[str, ...] = ("prod", "staging", "dev")
    start: str = "2026-11-02"
    incidents: frozenset[str] = ALL_KINDS
    events: int | None = None


class _DayFiles:
    """One open file per stream for the current day; closed when the day moves on."""

    def __init__(self, root: Path, folder: str, prefix: str, counts: dict[str, int]) -> None:
        self.dir = root / folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.folder, self.prefix, self.counts = folder, prefix, counts
        self.day = -1
        self.fh: TextIOWrapper | None = None

    def write(self, items: list[tuple[int, str]]) -> None:
        """Write ``items`` (sorted by time) to their day files."""
        i, n = 0, len(items)
        while i < n:
            day = items[i][0] // DAY
            j = i
            while j < n and items[j][0] // DAY == day:
                j += 1
            if day != self.day:
                self.close()
                name = f"{self.prefix}-{day_str(day)}.jsonl"
                self.fh = open(self.dir / name, "a", encoding="utf-8", newline="\n")
                self.day = day
                self.counts.setdefault(f"{self.folder}/{name}", 0)
            assert self.fh is not None
            self.fh.write("\n".join(line for _, line in items[i:j]))
            self.fh.write("\n")
            self.counts[f"{self.folder}/{self.prefix}-{day_str(day)}.jsonl"] += j - i
            i = j

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _take(buf: list[tuple[int, str]], upto: int, start: int) -> list[tuple[int, str]]:
    """Remove and return (sorted) the items of ``buf`` before ``upto``; drop any before ``start``."""
    ready = [x for x in buf if x[0] < upto]
    if len(ready) == len(buf):
        buf.clear()
    else:
        buf[:] = [x for x in buf if x[0] >= upto]
    ready.sort()
    if ready and ready[0][0] < start:
        ready = [x for x in ready if x[0] >= start]
    return ready


def _diurnal(t: int) -> float:
    """Machine traffic: a gentle daily wave (busier in the US afternoon), 10 % lower at weekends."""
    hour = (t % DAY) / HOUR
    f = 1.0 + 0.15 * math.sin((hour - 12) / 24 * 2 * math.pi)
    return f * (0.9 if weekday(t) >= 5 else 1.0)


def _lines_per_request(a: Actor) -> float:
    return sum(3 if op.watch else 2 if op.exec_ else 1 for op in a.ops) / max(1, len(a.ops))


def _actors(world: World) -> dict[str, list[Actor]]:
    return {c.name: control_plane_actors(world, c) + node_actors(world, c) + pod_actors(world, c)
            for c in world.clusters}


def estimate_scale(opts: GenerateOptions) -> float:
    """The ``scale`` that yields about ``opts.events`` audit events over the period."""
    assert opts.events is not None
    world = build_world(opts.seed, list(opts.clusters), parse_day(opts.start), opts.days)
    machine = 0.0
    for actors in _actors(world).values():
        per_hour = sum(a.rate * _lines_per_request(a) for a in actors)
        machine += sum(per_hour * _diurnal(world.start + k * HOUR) for k in range(opts.days * 24))
    pods = sum(len(c.pods) for c in world.clusters)
    machine += pods * opts.days * 24 / 0.8 * 1.0  # kubelet TokenRequests, not scaled
    # people and CI scale with sqrt(scale) (bounded below), roughly 6 audit lines per command
    people = len(world.humans) * opts.days * 5 / 7 * 8.5 * 5.0 * 1.0 * 4.0
    ci = len(world.clusters) * opts.days * 5 / 7 * 10 * 1.6 * 7

    def total(s: float) -> float:
        return machine * s + people * max(0.3, math.sqrt(min(1.0, s))) + ci * max(0.25, math.sqrt(s))

    lo, hi = 1e-4, 1e4
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if total(mid) < opts.events else (lo, mid)
    return round(math.sqrt(lo * hi), 6)


@dataclass(slots=True)
class _Stale:
    label: Label
    since: int
    first: int | None = None
    last: int | None = None


@dataclass(slots=True)
class Result:
    """What was written: the manifest (also on disk) and the labels."""

    manifest: dict[str, Any]
    labels: list[Label] = field(default_factory=list)


def generate(opts: GenerateOptions, progress: ProgressCallback | None = None) -> Result:
    """Generate the data set described by ``opts`` into ``opts.out`` (created if needed).

    ``progress`` (``ztaudit generate``'s line on a terminal) is told ``(hours done, hours, day)``
    before each simulated hour; it does not change a byte of the output."""
    out_dir = opts.out
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("k8s_audit", "proxy_decision", "idp_event"):
        d = out_dir / sub
        if d.is_dir():
            for f in d.glob("*.jsonl"):
                f.unlink()
    if (out_dir / RBAC_DIR).is_dir():
        for f in (out_dir / RBAC_DIR).glob("*.json"):
            f.unlink()
    scale = estimate_scale(opts) if opts.events else opts.scale
    world = build_world(opts.seed, list(opts.clusters), parse_day(opts.start), opts.days)
    rng = random.Random(f"{opts.seed}/traffic")  # noqa: S311 - synthetic data, reproducible by seed
    bufs = Buffers(audit={c.name: [] for c in world.clusters})
    plan = plan_incidents(world, random.Random(f"{opts.seed}/incidents"), bufs, opts.incidents)  # noqa: S311
    actors = _actors(world)
    stale = {id(a): _Stale(lab, since) for lab, pod, since in plan.stale
             for a in actors[lab.cluster] if a.pod is pod}

    counts: dict[str, int] = {}
    audit_files = {c.name: _DayFiles(out_dir, "k8s_audit", c.name, counts) for c in world.clusters}
    proxy_files = _DayFiles(out_dir, "proxy_decision", "pomerium", counts)
    okta_files = _DayFiles(out_dir, "idp_event", "okta", counts)
    ident_files = _DayFiles(out_dir, "idp_event", "pomerium-identity", counts)
    obs = Observed()
    used = UsedPermissions()  # what each service account did, for the RBAC snapshot

    for h0 in range(world.start, world.end, HOUR):
        if progress is not None:
            progress((h0 - world.start) // HOUR, (world.end - world.start) // HOUR, day_str(h0 // DAY))
        h1 = h0 + HOUR
        factor = _diurnal(h0) * scale
        for c in world.clusters:
            emit = bufs.audit_to(c.name)
            for a in actors[c.name]:
                n = poisson(rng, a.rate * factor * (a.weekend_factor / 0.9 if weekday(h0) >= 5 else 1.0))
                ops, pod, st = a.ops, a.pod, stale.get(id(a))
                nops = len(ops)
                for _ in range(n):
                    t = h0 + int(rng.random() * HOUR)
                    if pod is not None and not pod.alive(t):
                        continue
                    extra = ""
                    if st is not None and t >= st.since:
                        st.first = t if st.first is None else min(st.first, t)
                        st.last = t if st.last is None else max(st.last, t)
                    if pod is not None and pod.frozen_at is not None and t >= pod.frozen_at:
                        extra = plan.stale_annotation(pod, t)
                    emit_request(emit, rng, t, ops[int(rng.random() * nops)], a.user(world, t), a.ips, a.ua,
                                 extra_ann=extra, end_limit=world.end)
            token_rotations(world, rng, emit, c, h0, h1)
            ci_hour(world, rng, bufs, c, h0, h1, scale)
        for h in world.humans:
            human_hour(world, rng, bufs, h, h0, h1, scale)
        for c in world.clusters:
            ready = _take(bufs.audit[c.name], h1, world.start)
            obs.seen(ready)
            used.observe(c.name, ready)
            audit_files[c.name].write(ready)
        ready = _take(bufs.proxy, h1, world.start)
        obs.seen(ready)
        if plan.revocations:
            obs.add_proxy(ready)
        proxy_files.write(ready)
        ready = _take(bufs.okta, h1, world.start)
        obs.seen(ready)
        okta_files.write(ready)
        ready = _take(bufs.pomerium_identity, h1, world.start)
        obs.seen(ready)
        if plan.revocations:
            obs.add_identity(ready)
        ident_files.write(ready)
    for files in [*audit_files.values(), proxy_files, okta_files, ident_files]:
        files.close()

    revocations = judge(plan.revocations, obs, bufs.uses, world.start, world.end)
    for rev, row in zip(plan.revocations, revocations, strict=True):
        if rev.label is not None:  # labels.jsonl follows the judged status
            rev.label.kind = "incident" if row["expected_status"] == "not_enforced" else "near_miss"
    labels = list(plan.labels)
    for st in stale.values():
        if st.first is not None and st.last is not None:
            st.label.first_seen, st.label.last_seen = st.first, st.last
            labels.append(st.label)
    rbac_labels, rbac_truth, rbac_files = write_snapshots(out_dir, world, used, opts.seed, RIGHTS in opts.incidents)
    labels += rbac_labels
    labels.sort(key=lambda lab: (lab.first_seen, lab.detector, lab.actor))
    meta = metadata_dir(out_dir)
    meta.mkdir(exist_ok=True)
    with open(meta / "labels.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for lab in labels:
            fh.write(json.dumps(lab.as_dict(), sort_keys=False) + "\n")
    with open(meta / "revocations.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for row in revocations:
            fh.write(json.dumps(row, sort_keys=False) + "\n")
    (meta / "ztaudit.toml").write_text(config_toml(world), encoding="utf-8")
    manifest = _manifest(opts, scale, world, counts, labels)
    manifest["ingest"]["rbac_snapshot"] = rbac_files
    manifest["counts"]["rbac"] = {"service_accounts": len(rbac_truth),
                                  "over_privileged": sum(1 for r in rbac_truth if r["over_privileged"]),
                                  "impersonation_rights": sum(1 for r in rbac_truth if r["impersonation_right"])}
    manifest["rbac"] = rbac_truth
    status: dict[str, int] = {}
    for row in revocations:
        status[row["expected_status"]] = status.get(row["expected_status"], 0) + 1
    manifest["counts"]["revocations"] = dict(sorted(status.items()))
    (meta / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return Result(manifest=manifest, labels=labels)


def config_toml(world: World) -> str:
    """A ``ztaudit.toml`` for this data set: proxy route hosts and each cluster's own networks.

    Plain audit JSON lines and RBAC snapshots carry no cluster name, so ``ingest.cluster_from_path``
    reads it from the file name (``k8s_audit/<cluster>-<day>.jsonl``, ``rbac_snapshot/<cluster>.json``)
    and ``ztaudit ingest --config
    DIR/.ztaudit/ztaudit.toml DIR`` takes the whole data set in one run; proxy lines name their route
    host, mapped here to the cluster.
    """
    hosts = ", ".join(f'"{c.host}" = "{c.name}"' for c in world.clusters)
    nets = ", ".join(f'"{c.name}" = ["10.{c.index}.0.0/16", "127.0.0.0/8", "::1/128"]' for c in world.clusters)
    return ("# Written by `ztaudit generate` for the data set in this directory.\n"
            "[ingest]\n"
            "# audit files are k8s_audit/<cluster>-<YYYY-MM-DD>.jsonl, RBAC snapshots rbac_snapshot/<cluster>.json\n"
            "cluster_from_path = '(?:^|/)(?:k8s_audit|rbac_snapshot)/(?P<cluster>[^/]+?)"
            "(?:-\\d{4}-\\d{2}-\\d{2}\\.jsonl|\\.json)$'\n\n"
            "[impersonation]\n"
            f"proxy_hosts = {{ {hosts} }}\n\n"
            "[credentials]\n"
            "# node, pod and control-plane addresses of each simulated cluster (pod CIDR 10.<n>.64.0/18)\n"
            f"cluster_networks = {{ {nets} }}\n")


def _manifest(opts: GenerateOptions, scale: float, world: World, counts: dict[str, int],
              labels: Iterable[Label]) -> dict[str, Any]:
    by_kind = {"k8s_audit": 0, "proxy_decision": 0, "idp_event": 0}
    for name, n in counts.items():
        by_kind[name.split("/", 1)[0]] += n
    lab_counts: dict[str, dict[str, int]] = {}
    for lab in labels:
        lab_counts.setdefault(lab.detector, {"incident": 0, "near_miss": 0})[lab.kind] += 1
    return {
        "generator": "ztaudit generate",
        "seed": opts.seed,
        "options": {"days": opts.days, "scale": scale, "clusters": list(opts.clusters), "start": opts.start,
                    "incidents": sorted(opts.incidents), "events": opts.events},
        "time_span": {"start": iso_us(world.start), "end": iso_us(world.end)},
        "clusters": [{"name": c.name, "proxy_host": c.host, "nodes": len(c.nodes) + 1,
                      "pod_cidr": f"10.{c.index}.0.0/16"} for c in world.clusters],
        "people": len(world.humans),
        "ingest": {"config": f"{META_DIR}/ztaudit.toml",
                   "k8s_audit": {c.name: f"k8s_audit/{c.name}-*.jsonl" for c in world.clusters},
                   "proxy_decision": "proxy_decision/*.jsonl", "idp_event": "idp_event/*.jsonl"},
        "counts": {"by_kind": by_kind, "by_file": dict(sorted(counts.items())), "labels": lab_counts},
    }
