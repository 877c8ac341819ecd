"""The Iceberg catalog on PostgreSQL (``lake.catalog_uri``, issue 16 item 1), on a real server
(``scripts/postgres``): writers in separate processes without a shared ``flock`` still register every
file exactly once, a PostgreSQL lake reads back like a SQLite one, the password never shows, and a
server that is down or a malformed URI is one clear error line, not a traceback."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from support.postgres import PgServer

from ztaudit.core import iceberg, iceberg_publish, iceberg_snapshot
from ztaudit.core.config import load_config
from ztaudit.core.errors import ConfigError, LakeError
from ztaudit.core.lake import open_lake
from ztaudit.core.sink import LakeSink

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent.parent
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def _decisions(n: int, start: int = 0) -> pa.Table:
    return pa.table({
        "request_id": [f"r{start + i}" for i in range(n)],
        "decided_at": [T0 + timedelta(seconds=start + i) for i in range(n)],
        "email": ["alice@example.com"] * n,
        "is_allowed": [i % 2 == 0 for i in range(n)],
    })


@pytest.fixture
def pg_env(postgres: PgServer, monkeypatch: pytest.MonkeyPatch) -> PgServer:
    """``lake.catalog_uri`` = the server (no password in it), the password in libpq's password file:
    what a user of a shared catalog configures. Child processes inherit it."""
    monkeypatch.setenv("ZTAUDIT_LAKE_CATALOG_URI", postgres.uri)
    monkeypatch.setenv("PGPASSFILE", str(postgres.pgpass))
    return postgres


def _pg_lake(path: Path) -> Path:
    LakeSink(path, table_format="iceberg")
    assert iceberg.is_iceberg(path) and iceberg.is_shared(path)
    return path


def _writer_process(lake: str, who: int, n: int, shared: list[str], out: str, go: Any) -> None:
    """A separate process: ``n`` two-row files under its own keys, one publish per file, and between
    them a publish of each of the ``shared`` files (the same paths the other writer publishes). All
    writers start together (``go``, a barrier), so their commits overlap."""
    sink = LakeSink(Path(lake))
    iceberg.open_catalog(Path(lake))
    go.wait(timeout=120)
    retries = commits = 0
    for i in range(n):
        sink.write("proxy_decision", _decisions(2, start=1000 * who + 10 * i), f"w{who}-{i}")
        r = sink.publish()
        retries, commits = retries + r.retries, commits + r.commits
        if i < len(shared):
            r = iceberg_publish.publish(Path(lake), added=[Path(shared[i])])
            retries, commits = retries + r.retries, commits + r.commits
    Path(out).write_text(json.dumps({"retries": retries, "commits": commits}))


def test_two_processes_on_a_postgres_catalog_register_every_file_exactly_once(pg_env: PgServer,
                                                                              tmp_path: Path) -> None:
    lake = _pg_lake(tmp_path / "lake")
    # Files both writers publish (a replay on two machines): written once, registered once.
    seed = LakeSink(lake)
    shared = [str(seed.write("proxy_decision", _decisions(3, start=5000 + 10 * k), f"shared-{k}")[0])
              for k in range(12)]
    ctx = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"w{w}.json" for w in (0, 1)]
    go = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer_process, args=(str(lake), w, 12, shared, str(outs[w]), go))
             for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    stats = [json.loads(o.read_text()) for o in outs]
    files = iceberg_snapshot.snapshot_files(lake, "proxy_decision")
    assert len(files) == len(set(files)) == 24 + 12, "every file once, none lost, none doubled"
    assert set(shared) <= set(files)
    con = open_lake(lake)
    try:
        rows = con.execute("SELECT count(*), count(DISTINCT request_id) FROM proxy_decision").fetchone()
    finally:
        con.close()
    assert rows == (48 + 36, 48 + 36)
    tbl = iceberg.open_catalog(lake).load_table((iceberg.NAMESPACE, "proxy_decision"))
    # one snapshot per commit: each took the next sequence number (the snapshots themselves are expired
    # down to the bound as they go, by both writers, which may expire the same ones: no writer failed)
    assert tbl.metadata.last_sequence_number == sum(s["commits"] for s in stats) == 48, "one snapshot per commit"
    assert iceberg_publish.MAX_SNAPSHOTS <= len(tbl.snapshots()) < iceberg_publish.MAX_SNAPSHOTS + 10
    # No flock between them: the catalog's compare-and-swap refused some commits, which were redone.
    assert sum(s["retries"] for s in stats) > 0, stats


def test_a_commit_that_loses_the_race_to_the_same_file_is_redone_without_listing_it_twice(
        pg_env: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic form of the race above: after this writer read the snapshot, another OS process
    registers the same file; this writer's commit is refused by the catalog's compare-and-swap, and the
    retry (on the reloaded table) replaces that entry instead of appending the path a second time."""
    lake = _pg_lake(tmp_path / "lake")
    sink = LakeSink(lake)
    sink.write("proxy_decision", _decisions(2, start=50), "before")
    sink.publish()
    other = LakeSink(lake).write("proxy_decision", _decisions(4), "both")[0]  # durable, not yet published
    real = iceberg_publish._registered
    calls = []

    def registered_then_raced(tbl: Any, days: Any) -> Any:
        seen = real(tbl, days)
        if not calls:  # first attempt: the other writer commits the same path right now
            p = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                "from ztaudit.core import iceberg_publish; "
                                "print(iceberg_publish.publish(Path(sys.argv[1]), added=[Path(sys.argv[2])]).added)",
                                str(lake), str(other)], capture_output=True, text=True, cwd=tmp_path)
            assert p.returncode == 0 and p.stdout.strip() == "1", p.stderr
        calls.append(len(seen))
        return seen

    monkeypatch.setattr(iceberg_publish, "_registered", registered_then_raced)
    out = iceberg_publish.publish(lake, added=[other])
    files = iceberg_snapshot.snapshot_files(lake, "proxy_decision")
    assert len(files) == len(set(files)) == 2, "the path the other writer registered is listed once"
    assert (out.retries, out.commits, out.added) == (1, 1, 1)
    assert calls == [1, 2], "the retry read the snapshot again, with the other writer's entry"
    con = open_lake(lake)
    try:
        assert con.execute("SELECT count(*) FROM proxy_decision").fetchone() == (6,)
    finally:
        con.close()


def test_a_lake_on_postgres_reads_back_like_the_same_lake_on_sqlite(pg_env: PgServer, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pg = _pg_lake(tmp_path / "pg")
    monkeypatch.delenv("ZTAUDIT_LAKE_CATALOG_URI")
    lite = tmp_path / "lite"
    LakeSink(lite, table_format="iceberg")
    assert iceberg.is_iceberg(lite) and not iceberg.is_shared(lite)
    for lake in (pg, lite):
        sink = LakeSink(lake)
        sink.write("proxy_decision", _decisions(7), "a")
        sink.write("proxy_decision", _decisions(5, start=100), "b")
        sink.publish()
        sink.write("proxy_decision", _decisions(9, start=200), "a")  # a rewrite replaces its entry
        sink.publish()
    got = {}
    for lake in (pg, lite):
        con = open_lake(lake)
        try:
            got[lake] = con.execute("SELECT * EXCLUDE (dt), dt FROM proxy_decision ORDER BY request_id").fetchall()
        finally:
            con.close()
    assert got[pg] == got[lite] and len(got[pg]) == 14
    # The catalog is in PostgreSQL, the metadata and data in the lake, no password in the lake.
    assert not iceberg.catalog_file(pg).exists()
    ref = json.loads(iceberg.catalog_ref(pg).read_text())
    assert ref["uri"] == pg_env.uri
    tbl = iceberg.open_catalog(pg).load_table((iceberg.NAMESPACE, "proxy_decision"))
    assert iceberg.local_path(tbl.location()).startswith(str(pg.resolve() / "_iceberg") + "/")
    import sqlalchemy

    engine = sqlalchemy.create_engine(pg_env.uri)
    try:
        with engine.connect() as c:
            names = c.execute(sqlalchemy.text("SELECT table_name FROM iceberg_tables WHERE catalog_name = :n"),
                              {"n": ref["name"]}).scalars().all()
    finally:
        engine.dispose()
    assert "proxy_decision" in names and len(names) == len(iceberg.TABLES)
    # A reader in a fresh process needs no configuration: the lake names its catalog.
    monkeypatch.delenv("ZTAUDIT_LAKE_CATALOG_URI", raising=False)
    p = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                        "from ztaudit.core.lake import open_lake; "
                        "print(open_lake(Path(sys.argv[1])).execute('SELECT count(*) FROM proxy_decision')"
                        ".fetchone()[0])", str(pg)], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "14"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ztaudit(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("ZTAUDIT_LAKE", "PG"))}
    full.update(env)
    return subprocess.run([str(ROOT / ".venv" / "bin" / "ztaudit"), "-vv", *args], capture_output=True,
                          text=True, env=full, cwd=cwd)


def _no_trace(p: subprocess.CompletedProcess[str], *needles: str) -> str:
    out = p.stdout + p.stderr
    assert "Traceback" not in out, out
    for needle in needles:
        assert needle not in out, f"a planted secret was printed:\n{out}"
    return out


def test_the_password_never_appears_in_output_logs_errors_or_the_lake(postgres: PgServer, tmp_path: Path) -> None:
    planted = "ZTMARK-pw-" + os.urandom(6).hex()
    sample = str(ROOT / "sample_logs" / "proxy_decision")
    base = {"ZTAUDIT_LAKE_FORMAT": "iceberg"}
    # 1. The real password in the URI ($ZTAUDIT_LAKE_CATALOG_URI), debug logging, a real ingest.
    ok = _ztaudit(["ingest", "--lake", str(tmp_path / "ok"), sample],
                  {**base, "ZTAUDIT_LAKE_CATALOG_URI": postgres.uri_with_password()}, tmp_path)
    assert ok.returncode == 0, _no_trace(ok, postgres.password)
    _no_trace(ok, postgres.password)
    for f in (tmp_path / "ok").rglob("*"):
        if f.is_file():
            assert postgres.password.encode() not in f.read_bytes(), f"the password is in {f}"
    shown = _ztaudit(["config", "check"], {**base, "ZTAUDIT_LAKE_CATALOG_URI": postgres.uri_with_password()},
                     tmp_path)
    assert "catalog_uri" in _no_trace(shown, postgres.password)
    # 2. A planted password the server refuses.
    user_host = postgres.uri.split("://", 1)[1]
    wrong = f"postgresql+psycopg2://{user_host.replace('@', ':' + planted + '@', 1)}"
    bad = _ztaudit(["ingest", "--lake", str(tmp_path / "bad"), sample],
                   {**base, "ZTAUDIT_LAKE_CATALOG_URI": wrong}, tmp_path)
    assert bad.returncode == 2
    assert "cannot open the Iceberg catalog" in _no_trace(bad, planted)
    # 3. The server down (nothing listens on the port), the planted password in the URI.
    down = f"postgresql+psycopg2://ztaudit:{planted}@127.0.0.1:{_free_port()}/ztaudit"
    gone = _ztaudit(["ingest", "--lake", str(tmp_path / "gone"), sample],
                    {**base, "ZTAUDIT_LAKE_CATALOG_URI": down}, tmp_path)
    assert gone.returncode == 2
    assert "cannot open the Iceberg catalog" in _no_trace(gone, planted)
    assert "ztaudit:***@127.0.0.1" in gone.stderr or "ztaudit@127.0.0.1" in gone.stderr
    # 4. Malformed URIs holding the planted password: a config error naming the key, nothing more.
    for uri in (f"postgresql+psycopg2://ztaudit:{planted}@127.0.0.1:notaport/ztaudit",
                f"mysql://ztaudit:{planted}@127.0.0.1/ztaudit",
                f"postgresql://ztaudit:{planted}",
                f"postgresql+psycopg2://ztaudit:{planted}@127.0.0.1:5432"):
        p = _ztaudit(["ingest", "--lake", str(tmp_path / "m"), sample], {**base, "ZTAUDIT_LAKE_CATALOG_URI": uri},
                     tmp_path)
        assert p.returncode == 2
        assert "lake.catalog_uri" in _no_trace(p, planted)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").rglob("*.parquet"))


def test_a_server_that_is_down_is_one_clear_error_for_readers_and_writers(pg_env: PgServer, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    lake = _pg_lake(tmp_path / "lake")
    sink = LakeSink(lake)
    sink.write("proxy_decision", _decisions(3), "a")
    sink.publish()
    # The same lake, its catalog.json now naming a port nothing listens on (a server that is down).
    ref = json.loads(iceberg.catalog_ref(lake).read_text())
    port = _free_port()
    ref["uri"] = ref["uri"].replace(pg_env.uri.rsplit(":", 1)[1].split("/")[0], str(port))
    iceberg.catalog_ref(lake).write_text(json.dumps(ref))
    monkeypatch.delenv("ZTAUDIT_LAKE_CATALOG_URI")
    iceberg.forget_catalog(lake)
    with pytest.raises(LakeError, match=f"cannot open the Iceberg catalog of .* at .*127.0.0.1:{port}/") as err:
        iceberg_snapshot.snapshot_files(lake, "proxy_decision")
    assert "check that PostgreSQL is up" in str(err.value)
    p = _ztaudit(["sql", "--lake", str(lake), "SELECT count(*) FROM proxy_decision"], {}, tmp_path)
    assert p.returncode == 2
    assert "cannot open the Iceberg catalog" in _no_trace(p)
    # A configured URI naming another database than the lake's is refused, not silently used.
    monkeypatch.setenv("ZTAUDIT_LAKE_CATALOG_URI", pg_env.uri)
    iceberg.forget_catalog(lake)
    with pytest.raises(LakeError, match=r"lake\.catalog_uri names"):
        iceberg.open_catalog(lake)
    iceberg.forget_catalog(lake)


def test_a_password_in_the_config_file_is_refused_without_being_repeated(tmp_path: Path) -> None:
    cfg = tmp_path / "ztaudit.toml"
    cfg.write_text('[lake]\ncatalog_uri = "postgresql+psycopg2://u:ZTMARK-file-pw@127.0.0.1:5432/db"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg, env={})
    assert "never stored in the config file" in str(err.value)
    assert "ZTMARK-file-pw" not in str(err.value)
    cfg.write_text('[lake]\ncatalog_uri = "postgresql+psycopg2://u@127.0.0.1:5432/db"\n')
    assert load_config(cfg, env={}).lake.catalog_uri.endswith("@127.0.0.1:5432/db")
    assert load_config(env={}).lake.catalog_uri == "", "empty by default: the lake's own SQLite catalog"


def test_the_commands_config_file_puts_a_new_lake_on_postgres_and_readers_follow_the_lake(postgres: PgServer,
                                                                                         tmp_path: Path) -> None:
    """``--config FILE`` with ``[lake] catalog_uri`` (no password: libpq's password file has it) reaches
    the catalog of the lake ``ingest`` creates; ``sql`` then reads it with no setting at all."""
    cfg = tmp_path / "shared.toml"
    cfg.write_text(f'[lake]\nformat = "iceberg"\ncatalog_uri = "{postgres.uri}"\n')
    lake = tmp_path / "lake"
    sample = ROOT / "sample_logs" / "proxy_decision"
    ing = _ztaudit(["ingest", "--config", str(cfg), "--lake", str(lake), str(sample)],
                   {"PGPASSFILE": str(postgres.pgpass)}, tmp_path)
    assert ing.returncode == 0, ing.stderr
    assert iceberg.is_shared(lake) and not iceberg.catalog_file(lake).exists()
    q = _ztaudit(["sql", "--lake", str(lake), "--format", "csv", "SELECT count(*) AS n FROM proxy_decision"],
                 {"PGPASSFILE": str(postgres.pgpass)}, tmp_path)
    assert q.returncode == 0, q.stderr
    n = int(q.stdout.strip().splitlines()[-1])
    # the same ingest into a lake with its own SQLite catalog gives the same rows
    lite = tmp_path / "lite"
    assert _ztaudit(["ingest", "--lake", str(lite), str(sample)], {"ZTAUDIT_LAKE_FORMAT": "iceberg"},
                    tmp_path).returncode == 0
    assert iceberg.catalog_file(lite).is_file() and not iceberg.is_shared(lite)
    con = open_lake(lite)
    try:
        assert con.execute("SELECT count(*) FROM proxy_decision").fetchone() == (n,) and n > 0
    finally:
        con.close()


def test_migrate_follows_the_config_file_and_a_sqlite_lake_says_it_ignores_the_setting(postgres: PgServer,
                                                                                       tmp_path: Path) -> None:
    """``migrate --config`` puts the catalog it creates on PostgreSQL (before, only the environment
    variable counted); a lake that already has its own SQLite catalog keeps it, and says so."""
    cfg = tmp_path / "shared.toml"
    cfg.write_text(f'[lake]\ncatalog_uri = "{postgres.uri}"\n')
    sample = ROOT / "sample_logs" / "proxy_decision"
    env = {"PGPASSFILE": str(postgres.pgpass)}
    lake = tmp_path / "lake"
    assert _ztaudit(["ingest", "--lake", str(lake), str(sample)], {}, tmp_path).returncode == 0
    mig = _ztaudit(["migrate", "--config", str(cfg), "--lake", str(lake)], env, tmp_path)
    assert mig.returncode == 0, mig.stderr
    assert iceberg.is_shared(lake) and not iceberg.catalog_file(lake).exists()
    lite = tmp_path / "lite"
    assert _ztaudit(["ingest", "--lake", str(lite), str(sample)], {"ZTAUDIT_LAKE_FORMAT": "iceberg"},
                    tmp_path).returncode == 0
    again = _ztaudit(["ingest", "--config", str(cfg), "--lake", str(lite), str(sample)], env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "keeps its own SQLite catalog" in again.stderr and not iceberg.is_shared(lite)
