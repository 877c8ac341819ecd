"""File names of lake chunks (core/files.py ``safe_key``)."""

from __future__ import annotations

from ztaudit.core.files import MAX_KEY, safe_key
from ztaudit.core.keys import file_key


def test_a_long_topic_keeps_its_offsets_apart_in_file_names() -> None:
    """Kafka allows 249-character topic names; cutting the key at the length limit cut off the offset,
    and every chunk of the partition had one name (each replacing the last)."""
    topic = "a" * 249
    names = {off: safe_key(file_key(topic, 0, off)) for off in (0, 1000, 2000, 10**12)}
    assert len(set(names.values())) == 4
    assert all(len(n) <= MAX_KEY and n.endswith(f"+{off:020d}") for off, n in names.items())
    # distinct long topics stay apart too, and short keys are unchanged
    assert safe_key(file_key("b" + topic[1:], 0, 0)) != safe_key(file_key(topic, 0, 0))
    assert safe_key(file_key("audit", 3, 7)) == "audit+3+00000000000000000007"


def test_unsafe_and_hidden_keys() -> None:
    assert safe_key(".hidden/../x") == "_hidden_.._x"
    assert safe_key("") == "_"
