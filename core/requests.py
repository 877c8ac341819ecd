"""One row per Kubernetes API request over chosen columns: ``k8s_requests`` by aggregation.

The ``k8s_requests`` view (``core/views/k8s_requests.sql``) keeps, per request key (cluster,
audit_id, request_received_at), the most complete stage with a window over every column of
``k8s_audit``. A report that reads millions of requests and a few columns pays for sorting the whole
lake: at 10M audit events that window is most of ``report nhi``'s time. :func:`requests_select`
states the same choice as a hash aggregation (``arg_min`` over an ordering key) on only the columns
asked for, about 40 % less CPU there.

Same rows as the view, by construction and by test (``tests/core/test_requests.py`` compares the two
on drawn stages, ties, NULLs and duplicate origins): the key orders stage rank descending, then
``stage_at`` descending with NULL last, then ``origin`` ascending with NULL last, as the view's
``ORDER BY stage_rank(stage) DESC, stage_at DESC NULLS LAST, origin NULLS LAST`` does.
A full tie (two rows equal on all three) is settled arbitrarily by both, as it is by any window.

Called by reports with the columns they need and a WHERE clause on ``k8s_audit`` columns that are the
same for every stage of a request (actor, verb, time): a filter on a column that differs between
stages (``stage``, ``response_code``) would change which stage wins, so callers filter on those after.
"""

from __future__ import annotations

from typing import Final

from ztaudit.core.schema import TABLES

#: The request key: the stages of one request share it (docs/kubernetes-audit.md §9).
REQUEST_KEY: Final = ("cluster", "audit_id", "request_received_at")

# arg_min over this struct picks the row the view's ORDER BY puts first. Fields are never NULL:
# DuckDB orders a struct field's NULL below or above values depending on the context, so NULLs are
# turned into explicit "last" values (a flag that sorts after false, or the largest BIGINT).
_ORDER_KEY: Final = (
    "struct_pack(r := -stage_rank(stage), "
    "t := coalesce(-epoch_us(stage_at), 9223372036854775807), "
    "n := origin IS NULL, o := coalesce(origin, ''))"
)


def requests_select(columns: list[str], where: str = "true") -> str:
    """SQL for one row per request of ``k8s_audit`` with ``columns``, filtered by ``where`` first.

    ``columns`` are ``k8s_audit`` column names; ``where`` is SQL the caller owns (bind its values as
    parameters). Raises ``ValueError`` on an empty list or a name that is not a ``k8s_audit`` column
    (names are checked, not quoted: they come from our code, never from input).
    """
    known = {*TABLES["k8s_audit"].names, "dt"}  # dt: the partition day every file carries
    unknown = [c for c in columns if c not in known]
    if not columns or unknown:
        raise ValueError(f"requests_select: not k8s_audit columns: {unknown or 'none given'}")
    cols = ", ".join(columns)
    keys = ", ".join(REQUEST_KEY)
    return (f"SELECT unnest(arg_min(struct_pack({cols}), {_ORDER_KEY})) "
            f"FROM k8s_audit WHERE {where} GROUP BY {keys}")
