"""The text rules (docs/redaction.md §2) on quoted values, array/object values, percent-encoded JSON
keys and the short credential names that count only as whole names (issue: hostile review of the
redaction policy). Each secret is a planted marker; every input is generated here."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztaudit.pipeline.ingest import ingest_paths
from ztaudit.pipeline.redact import mask_text, mask_texts, redact_table, scrub_raw

M = "SEKRET-MARKER-Q"


# --- quoted values (rules 1 and 3) ------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    (f'token="{M}" next', 'token="***" next'),
    (f"apikey='{M}'", "apikey='***'"),
    (f"password='{M} with blanks' x=1", "password='***' x=1"),
    (f'password="a\\"b {M}"', 'password="***"'),                       # an escaped quote inside
    (f"password='it\"s {M}'", "password='***'"),                        # the other quote inside
    (f'refresh_token=\\"{M}\\"', 'refresh_token=\\"***\\"'),            # JSON-escaped quotes, kept as text
    (f'reason="token=\\"{M}\\"", code="x"', 'reason="token=\\"***\\"", code="***"'),  # Keycloak jboss text
    (f'token="{M}', 'token="***'),                                      # unclosed: to the end of the line
    (f'token="{M}\nnext line', 'token="***\nnext line'),
    (f'"client_secret": "{M} \'x\' y"', '"client_secret": "***"'),      # JSON key form
    (f'refresh_token: "{M}" rest', 'refresh_token: "***" rest'),        # header form
    (f'{{\\"api_key\\":\\"{M}\\"}}', '{\\"api_key\\":\\"***\\"}'),      # a JSON key inside a JSON string
])
def test_a_quoted_value_is_masked_to_its_closing_quote(text: str, want: str) -> None:
    assert mask_text(text) == want


@pytest.mark.parametrize(("text", "want"), [
    (f'Authorization: Digest username="x", response="{M}", opaque="{M}"', "Authorization: ***"),
    (f'Authorization: Digest username="x", response="{M}"\nnext line', "Authorization: ***\nnext line"),
    (f'proxy-authorization:Digest response="{M}"', "proxy-authorization:***"),
    (f'X-Forwarded-Authorization: Basic {M} "{M}"', "X-Forwarded-Authorization: ***"),
    (f'Cookie: a="{M}"; _pomerium={M}', "Cookie: ***"),
    (f'kubectl/1.31 Authorization: Bearer {M} x-token={M}', "kubectl/1.31 Authorization: ***"),
])
def test_an_authorization_or_cookie_header_is_masked_to_the_end_of_the_line(text: str, want: str) -> None:
    assert mask_text(text) == want


# --- array and object values (rule 1) ---------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    (f'{{"api_key":["{M}"]}}', '{"api_key":***'),  # the '}' goes too: up to a quote or line end
    (f'{{"api_key":["a", "{M}"],"n":1}}', '{"api_key":***"n":1}'),  # then up to a quote, as a bare value
    (f'{{"api_key":[["a"],["{M}"]],"n":1}}', '{"api_key":***"n":1}'),        # nested
    (f'{{"api_key":["a]b", "{M}"],"n":1}}', '{"api_key":***"n":1}'),        # a bracket inside a string
    (f'{{"token":{{"a":"{M}"}},"n":1}}', '{"token":***"n":1}'),              # an object
    (f'{{\\"api_key\\":[\\"{M}\\"]}}', '{\\"api_key\\":***'),               # inside a JSON string
    (f'{{"token":[[[["{M}"]]], "{M}"], "n": 1', '{"token":***'),            # deeper than 3: line end
    (f'{{"token":["{M}"', '{"token":***'),                                  # unclosed
    (f"token=[{M}]&x=1", "token=***&x=1"),
    (f"token=[a]{M}&x=1", "token=***&x=1"),
])
def test_an_array_or_object_value_is_masked_whole(text: str, want: str) -> None:
    assert mask_text(text) == want
    assert mask_text(want) == want  # idempotent


# --- names the word list missed -----------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    (f"SAMLResponse={M}&RelayState=abc", "SAMLResponse=***&RelayState=abc"),
    (f"/cas/login?service=x&ticket=ST-{M}", "/cas/login?service=x&ticket=***"),
    (f"otp={M}&pin={M}&nonce=n", "otp=***&pin=***&nonce=n"),
    (f"/x?PIN={M}", "/x?PIN=***"),
    (f"/x?user_pin={M}&x-otp={M}&mfa.totp={M}&a[hotp]={M}", "/x?user_pin=***&x-otp=***&mfa.totp=***&a[hotp]=***"),
    (f'{{"otp":"{M}","pin": 1234}}', '{"otp":"***","pin": ***'),
    (f"pin: {M}", "pin: ***"),
    (f"q=%7B%22access_token%22%3A%22{M}%22%7D&limit=1", "q=%7B%22access_token%22%3A***&limit=1"),
    (f"q=%7B%22a%22%3A1%2C%22pin%22%3A%22{M}%22%7D", "q=%7B%22a%22%3A1%2C%22pin%22%3A***"),
    (f"x=%257B%2522token%2522%253A%2522{M}%2522%257D", "x=%257B%2522token%2522%253A***"),  # encoded twice
])
def test_assertions_tickets_and_one_time_codes_are_credential_names(text: str, want: str) -> None:
    assert mask_text(text) == want


@pytest.mark.parametrize("text", [
    "spinner mapping pinned opinion shipping",
    "/api/v1/pods?pinned=true&spinner=1&mapping=x&shipping=2&rootPath=/a&footprint=3&hotplug=1",
    "opinion: fine; mapping: a -> b",
    'kubectl/v1.31.2 (linux/amd64) "pinned"',
    "filter=%7B%22status%22%3A%22active%22%7D",       # percent-encoded JSON without a credential key
    "/api/v1/namespaces/default/pods?labelSelector=app%3Dx&fieldSelector=x",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert mask_text(text) == text


def test_a_number_under_a_credential_substring_name_is_masked_as_documented() -> None:
    """docs/redaction.md §2.1: names are matched by substring, so ``tokens_total`` is a credential
    name and its value is masked; this over-masking is the documented price of substrings."""
    assert mask_text('{"tokens_total": 3, "n": 1}') == '{"tokens_total": ***"n": 1}'


# --- the same policy on every path ----------------------------------------------------------------

_COLUMN_VALUES = [
    f'token="{M}"', f"apikey='{M}'", f'refresh_token=\\"{M}\\"', f'{{"api_key":["{M}"]}}',
    f"SAMLResponse={M}", f"ticket=ST-{M}", f"otp={M}&pin={M}", f"q=%7B%22access_token%22%3A%22{M}%22%7D",
    f'Authorization: Digest username="x", response="{M}"', "spinner", "x", "s", "pin=1", "&",
]


@pytest.mark.parametrize("kind,column", [("proxy_decision", "query"), ("proxy_decision", "allow_reasons"),
                                         ("idp_event", "reason"), ("k8s_audit", "user_agent")])
def test_columns_are_masked_like_single_values(kind: str, column: str) -> None:
    """The central step (whole-buffer prefilter, then the matching rows) masks exactly like
    :func:`mask_text`, also for a short name at the start of a value, right after another value
    in the buffer (``s`` + ``pin=1``)."""
    values = pa.array(_COLUMN_VALUES, pa.string())
    if column == "allow_reasons":
        col: pa.Array = pa.array([[v] for v in _COLUMN_VALUES], pa.list_(pa.string()))
        got = [v[0] for v in redact_table(kind, pa.table({column: col})).column(column).to_pylist()]
    else:
        got = redact_table(kind, pa.table({column: values})).column(column).to_pylist()
    assert got == [mask_text(v) for v in _COLUMN_VALUES]
    assert not any(M in str(v) for v in got)


@pytest.mark.parametrize("record", [
    {"time": "bad", "type": "LOGIN", "details": {"code": M, "otp": M, "ticket": M, "user_pin": M},
     "error": f"token='{M}'"},
    {"kind": "Event", "stage": "ResponseComplete", "message": f'x refresh_token="{M}"'},
    {"level": "info", "message": "authorize check", "time": "bad", "query": f"SAMLResponse={M}",
     "allow-why-false": [f'{{"api_key":["{M}"]}}'], "ua": f'Authorization: Digest response="{M}"'},
])
def test_quarantine_raw_gets_the_same_rules(record: dict[str, object]) -> None:
    raw = orjson.dumps(record)
    for parse in (True, False):
        assert M.encode() not in scrub_raw(raw, parse=parse), parse
        assert M.encode() not in scrub_raw(raw[:-1], parse=parse), parse  # truncated: never parses
    kept = orjson.loads(scrub_raw(raw))
    assert set(kept) == set(record)  # the keys stay, only values go


def test_quarantined_bytes_keep_escaped_quoted_values_masked() -> None:
    """A message kept by the loose path (``message`` is a :data:`_LOOSE_KEEP` key) with a
    JSON-escaped quoted value: the value is masked, not only the empty part before its quote."""
    raw = (b'{"kind":"Event","stage":"ResponseComplete","message":"' + M.encode()
           + b'-a refresh_token=\\"' + M.encode() + b'-b\\"", "x":"\xff"}')
    out = scrub_raw(raw)
    assert b"refresh_token=\\\"***\\\"" in out and M.encode() + b"-b" not in out


def test_planted_markers_never_reach_the_lake(tmp_path: Path) -> None:
    """End to end through ``ingest_paths``: a Pomerium log, a Keycloak server log (jboss text) and
    a Keycloak event that is quarantined; no marker reaches any column or quarantined byte."""
    base = {"level": "info", "service": "authorize", "request-id": "r", "method": "GET", "path": "/api/v1/pods",
            "host": "k8s.example.com", "ip": "198.51.100.5", "session-id": "s1", "user": "u1",
            "email": "dave@example.com", "allow": True, "deny": False, "time": "2026-11-20T09:39:55+01:00",
            "message": "authorize check"}
    queries = [f"SAMLResponse={M}1&RelayState=abc", f"ticket=ST-{M}2", f'token="{M}3"',
               f"q=%7B%22access_token%22%3A%22{M}4%22%7D", f"apikey='{M}5'", f"otp={M}6&pin={M}7&nonce=n"]
    lines = [orjson.dumps({**base, "query": q}) for q in queries]
    lines.append(orjson.dumps({**base, "allow": False, "allow-why-false": [f'{{"api_key":["{M}8"]}}']}))
    (tmp_path / "pomerium.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "keycloak-server.log").write_text(
        '2026-11-24 07:58:10,402 WARN  [org.keycloak.events] (executor-thread-7) type="LOGIN_ERROR", '
        'realmId="r", realmName="lab", clientId="pomerium", userId="u4", ipAddress="198.51.100.122", '
        f'error="invalid_user_credentials", reason="token=\\"{M}9\\"", password="{M}10"\n')
    (tmp_path / "keycloak.jsonl").write_bytes(orjson.dumps(
        {"time": "bad", "type": "LOGIN", "realmId": "r", "userId": "u",
         "details": {"code": f"{M}11", "otp": f"{M}12", "ticket": f"{M}13"}, "error": f"token='{M}14'"}) + b"\n")
    lake = tmp_path / "lake"
    stats = ingest_paths(sorted(tmp_path.glob("*.*")), lake)
    assert stats.rows.get("proxy_decision", 0) == len(lines) and stats.rows.get("idp_event", 0) >= 1
    files = [p for p in lake.rglob("*.parquet")]
    assert files
    for p in files:
        assert M.encode() not in p.read_bytes(), p
        assert M not in repr(pq.read_table(p).to_pylist()), p


# --- properties -----------------------------------------------------------------------------------

_NAMES = ["token", "access_token", "apikey", "password", "client_secret", "SAMLResponse", "ticket", "otp",
          "pin", "user_pin", "X-Api-Key"]
_SECRET = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789_-.+/= &;'\"", min_size=4, max_size=40)


@given(prefix=st.text(max_size=20), name=st.sampled_from(_NAMES),
       form=st.sampled_from(["=", "%3D", ": ", '":', '": ', "':"]), quote=st.sampled_from(['"', "'", '\\"']),
       secret=_SECRET, lead=st.sampled_from([" ", "?", "&", "\n", '{"', '"']),
       suffix=st.text(max_size=20))
@settings(max_examples=300, deadline=None)
def test_property_a_quoted_credential_value_never_survives(prefix: str, name: str, form: str, quote: str,
                                                           secret: str, lead: str, suffix: str) -> None:
    """Whatever the quote, the separator and what surrounds it, a quoted value under a credential
    name is gone (the secret may hold blanks, ``&``, ``;`` and the other quote); masking is
    idempotent. ``lead`` is a delimiter, so a short name (``pin``) is a whole name."""
    inner = M + secret.replace(quote[-1], "")  # the alphabet has no backslash: no escape inside
    text = f"{prefix}{lead}{name}{form}{quote}{inner}{quote}{suffix}"
    out = mask_text(text)
    assert out is not None
    assert inner not in out, out
    assert mask_text(out) == out


@given(st.lists(st.one_of(st.none(), st.text(max_size=12),
                          st.sampled_from(["pin=", "otp", "=1", "s", "&", '"', "'", "\\", '\\"', "[", "]", "{",
                                           "token=", '"api_key":', "Authorization:", "%22token%22%3A", "\n",
                                           "ticket", "saml", "pinned=1", "x-pin=2"])), max_size=14))
@settings(max_examples=200, deadline=None)
def test_property_column_path_equals_value_path_with_short_names(values: list[str | None]) -> None:
    """The whole-buffer prefilter never skips a value the rules would mask: short names count only
    after a delimiter or at the start of a value, which the buffer does not show (values meet
    there), so the prefilter drops that condition."""
    table = pa.table({"user_agent": pa.array(values, pa.string())})
    got = redact_table("proxy_decision", table).column("user_agent").to_pylist()
    assert got == [mask_text(v) for v in values]


# --- linear time ------------------------------------------------------------------------------------

@pytest.mark.parametrize("unit", ['token="', 'token=\\"', "token='", '"api_key":[', '"api_key":["a",[',
                                  "&pin=", "pin=", "%22token%22%3A", "Authorization: ", 'token="\\',
                                  '"token":{"a":[', '\\\\\\"'])
def test_masking_hostile_quotes_brackets_and_names_is_linear_time(unit: str) -> None:
    """RE2 is linear by construction; this holds the ratio on inputs that would make a
    backtracking pattern for quotes, brackets or guarded names quadratic (no newline, no close)."""
    def cost(n: int) -> float:
        values = pa.array([unit * (n // len(unit))], pa.large_string())
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            mask_texts(values)
            best = min(best, time.perf_counter() - t0)
        return best

    small, big = cost(64 * 1024), cost(1024 * 1024)
    assert big < 2.0, (small, big)
    assert big / max(small, 1e-4) < 64, (small, big)  # linear: ~16; quadratic: ~256
