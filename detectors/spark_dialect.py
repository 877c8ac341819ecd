"""The detectors' DuckDB SQL rewritten for Apache Spark: a project-owned sqlglot dialect (issue 17).

Called by the Spark side of the engine seam (``detect --engine spark``) once per statement, before
``spark.sql(..., args=)``, through :func:`transpile_statement` (or :func:`transpile` for the SQL
alone); the DuckDB side runs the statements unchanged. Failure: a statement that sqlglot cannot
parse, or that uses a DuckDB idiom the dialect has no rewrite for, raises :class:`UnsupportedIdiom`
naming the idiom (a key of :data:`RULES`, or ``unreviewed:<construct>`` for one no rule covers yet)
and what to do instead; nothing is half-translated.

How it works: the statement is parsed as DuckDB (sqlglot, ``ErrorLevel.RAISE``). Every node of the
tree must be either a construct that means the same on both engines (:data:`PORTABLE`, checked by
the differential tests) or matched by a rule of :data:`RULES`, the registry keyed by the idiom's
name. A rule either rewrites its node into Spark's equivalent (each rewrite's docstring says what
DuckDB does, what Spark does and why the result is the same, with the engines' docs) or, where a
rewrite is impractical, is *reported*: it raises with the portable form to write instead. The
rewritten tree is printed by :class:`ZtauditSpark`, a subclass of sqlglot's Spark dialect.

Statements that create or fill temp tables are returned as a plain ``SELECT`` with what to do with
its rows (:class:`SparkStatement`): a Spark temp view is recomputed at every reference, so the seam
materialises it (``localCheckpoint()``) instead of relying on ``CREATE TEMP VIEW``.

Why sqlglot and not regular expressions: the idioms nest (a ``hash()`` inside a ``CASE`` inside a
window), and only a parser knows where an argument ends; sqlglot is a maintained transpiler whose
Spark dialect already covers the common ground, so this module only holds what is specific to
ztaudit's SQL (https://sqlglot.com/sqlglot/dialects/spark.html).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import sqlglot
from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.dialects.spark import Spark
from sqlglot.errors import ErrorLevel, ParseError

from ztaudit.core.errors import ZtauditError
from ztaudit.core.lake import SCALAR_MACROS


class UnsupportedIdiom(ZtauditError):
    """A DuckDB construct the Spark dialect cannot translate; ``idiom`` is its :data:`RULES` key
    (or ``unreviewed:<construct>`` / ``unparsed``), ``fix`` says what to write instead."""

    exit_code = 2

    def __init__(self, idiom: str, message: str, *, fix: str | None = None) -> None:
        self.idiom = idiom
        super().__init__(f"[{idiom}] {message}", fix=fix)


#: The parameters of the statement being translated (for the rules that need a value: frame bounds).
_PARAMS: ContextVar[Mapping[str, Any] | None] = ContextVar("ztaudit_spark_params", default=None)


class ZtauditSpark(Spark):
    """sqlglot's Spark dialect, owned by ztaudit: the rules below rewrite the tree, this prints it.

    ``$name`` placeholders print as ``:name``, the named parameters of ``spark.sql(..., args=)``
    (Spark SQL reference, "Parameterized queries")."""

    class Generator(Spark.Generator):  # type: ignore[misc, valid-type]
        TRANSFORMS: ClassVar[dict[type[exp.Expr], Callable[..., str]]] = {
            **Spark.Generator.TRANSFORMS,
            exp.Placeholder: lambda _self, e: f":{e.name}",
        }


# --- helpers -------------------------------------------------------------------------------------

def _fn(name: str, *args: exp.Expr) -> exp.Anonymous:
    """A Spark function call by name (printed as written)."""
    return exp.Anonymous(this=name, expressions=list(args))


def _anon(node: exp.Expr, *names: str) -> bool:
    return isinstance(node, exp.Anonymous) and node.name.lower() in names


def _lit(n: int) -> exp.Expr:
    return exp.Literal.number(n)


def _ordered_same(order: exp.Order, value: exp.Expr) -> bool:
    """``order`` is ``ORDER BY value`` ascending, NULLS LAST (DuckDB's default)."""
    keys = order.expressions
    return (len(keys) == 1 and keys[0].this == value and not keys[0].args.get("desc")
            and not keys[0].args.get("nulls_first"))


# --- the rules: one per DuckDB idiom -------------------------------------------------------------

def rewrite_materialized_cte(node: exp.Expr) -> exp.Expr:
    """``WITH x AS [NOT] MATERIALIZED (...)``.

    DuckDB: a planner hint, computing the CTE once (or inlining it); the rows are the same either way
    (DuckDB docs, "WITH Clause", "CTE Materialization"). Spark: the syntax does not exist (a parse
    error); Spark decides itself whether to inline or reuse a CTE. Dropping the hint keeps the rows."""
    assert isinstance(node, exp.CTE)
    node.set("materialized", None)
    return node


def rewrite_epoch_us(node: exp.Expr) -> exp.Expr:
    """``epoch_us(ts)``: microseconds since 1970-01-01 UTC of a TIMESTAMPTZ (DuckDB docs, "Timestamp
    with Time Zone Functions"). Spark: ``unix_micros(ts)`` is the same count for its TIMESTAMP, which
    is an instant like TIMESTAMPTZ (Spark SQL functions, ``unix_micros``). Both are BIGINT."""
    assert isinstance(node, exp.Anonymous)
    return _fn("unix_micros", *node.expressions)


def rewrite_to_days(node: exp.Expr) -> exp.Expr:
    """``to_days(n)``: an INTERVAL of ``n`` days (DuckDB docs, "Interval Functions"). Spark:
    ``make_dt_interval(n, 0, 0, 0)``, a day-time interval of ``n`` days (Spark SQL functions). In a
    UTC session (every lake connection and every ztaudit Spark session) a day is 24 h on both, so
    adding it to a timestamp gives the same instant."""
    arg = node.this if isinstance(node, exp.ToDays) else node.expressions[0]
    return _fn("make_dt_interval", arg.copy(), _lit(0), _lit(0), _lit(0))


def rewrite_to_seconds(node: exp.Expr) -> exp.Expr:
    """``to_seconds(n)``: DuckDB's INTERVAL of ``n`` seconds (DuckDB docs, "Interval Functions").
    Spark: ``make_dt_interval(0, 0, 0, n)``, the same day-time interval (Spark SQL functions)."""
    assert isinstance(node, exp.Anonymous)
    return _fn("make_dt_interval", _lit(0), _lit(0), _lit(0), node.expressions[0].copy())


def rewrite_to_microseconds(node: exp.Expr) -> exp.Expr:
    """``to_microseconds(n)``: DuckDB's INTERVAL of ``n`` µs. Spark has no micro constructor, but
    ``make_dt_interval``'s seconds are DECIMAL(18,6), exact to the microsecond: ``n / 10**6`` computed
    as a decimal (not a double) is exactly ``n`` µs."""
    assert isinstance(node, exp.Anonymous)
    secs = exp.Div(this=exp.cast(node.expressions[0].copy(), "DECIMAL(18, 0)"), expression=_lit(1_000_000))
    return _fn("make_dt_interval", _lit(0), _lit(0), _lit(0), exp.cast(secs, "DECIMAL(18, 6)"))


def rewrite_hash(node: exp.Expr) -> exp.Expr:
    """``hash(a, b, ...)``: DuckDB's 64-bit hash (UBIGINT) of the values together, NULL hashed as a
    value of its own. Spark's ``hash()`` is 32-bit Murmur3: at a million keys collisions are likely,
    and one emptied an intermediate table. Spark's ``xxhash64`` is 64-bit (BIGINT) but *skips* NULL
    arguments, so ``(NULL, 'x')`` and ``('x', NULL)`` would hash alike; each argument is therefore
    followed by ``arg IS NULL`` (never NULL), which puts the NULLs' positions back into the hash
    (Spark SQL functions, ``xxhash64``; DuckDB docs, "Utility Functions", ``hash``).

    The two engines' values differ. The detectors use ``hash()`` only as a join and group key
    (``pk``, ``k``, ``kb``, ``rid_h``, ``audit_h``) compared for equality, which needs only a stable
    64-bit hash; the one place an ordering depends on the value is a tie-break of the pairing
    windows (``ORDER BY t, is_a, pk``) among rows with equal time, key and side: there the pairs
    chosen between exact ties may differ from DuckDB's."""
    assert isinstance(node, exp.Anonymous)
    args: list[exp.Expr] = []
    for a in node.expressions:
        args += [a.copy(), exp.Is(this=a.copy(), expression=exp.Null())]
    return _fn("xxhash64", *args)


def rewrite_list_slice(node: exp.Expr) -> exp.Expr:
    """``list[a:b]``: DuckDB's 1-based slice, both ends inclusive, clamped to the list (DuckDB docs,
    "List Functions", ``list_slice``). Spark: ``slice(list, start, length)`` is 1-based and clamps too;
    the length is ``b - a + 1``, at least 0 (``slice`` refuses a negative length; DuckDB gives an
    empty list). A NULL list is NULL on both. Only a positive start is translated (a negative one
    counts from the end in both, but the length then depends on the list's size)."""
    assert isinstance(node, exp.Bracket)
    sl = node.expressions[0]
    assert isinstance(sl, exp.Slice)
    start, end = sl.this, sl.expression
    if not (isinstance(start, exp.Literal) and not start.is_string and int(start.name) >= 1) or end is None:
        raise UnsupportedIdiom("list_slice", f"list slice {node.sql('duckdb')} has no literal positive start "
                               "or no end", fix="write list[1:n] or slice(list, start, length)")
    length = exp.Add(this=exp.Sub(this=end.copy(), expression=start.copy()), expression=_lit(1))
    return _fn("slice", node.this.copy(), start.copy(), exp.Greatest(this=length, expressions=[_lit(0)]))


def rewrite_mode_ordered(node: exp.Expr) -> exp.Expr:
    """``mode(x ORDER BY x)``: DuckDB's most frequent value, ties broken by the ORDER BY (the smallest
    wins; DuckDB docs, "Aggregate Functions", ordered aggregates). Spark 4: ``mode(x, true)`` is
    deterministic and returns the lowest of tied values (Spark SQL functions, ``mode``). NULLs are
    ignored by both; a group of only NULLs gives NULL."""
    assert isinstance(node, exp.Mode)
    order = node.this
    if not (isinstance(order, exp.Order) and _ordered_same(order, order.this)):
        raise UnsupportedIdiom("mode_ordered", f"{node.sql('duckdb')}: only mode(x ORDER BY x) is translated",
                               fix="write mode(x ORDER BY x)")
    return _fn("mode", order.this.copy(), exp.true())


def rewrite_min_by_n(node: exp.Expr) -> exp.Expr:
    """``min_by(x, y, n)``: DuckDB's list of the ``x`` of the ``n`` smallest ``y``, in ``y`` order
    (DuckDB docs, "Aggregate Functions", ``min_by(arg, val, n)``). Spark's ``min_by`` has no ``n``:
    collect ``struct(y, x)`` pairs, sort them (structs compare field by field, so by ``y`` first),
    keep the first ``n`` and take ``x``. DuckDB skips rows whose ``y`` is NULL; so does the filter
    here, and DuckDB also skips rows whose ``x`` is NULL (a struct of NULLs is not NULL) and gives
    NULL, not ``[]``, for a group with no such row (shown by the differential test). Ties in ``y``
    are ordered by ``x`` on Spark; DuckDB's choice among exact ties is unspecified, so the detectors
    make ``y`` unique (``(ts, ref)``). With ``FILTER (WHERE c)`` (rewritten together, the node is the
    filter): only rows where ``c`` holds are taken, on DuckDB as here, where ``c`` joins the
    condition of each aggregate of the rewrite (a ``FILTER`` cannot follow the ``CASE`` it becomes)."""
    cond: exp.Expr | None = None
    if isinstance(node, exp.Filter):
        cond = node.expression.this if isinstance(node.expression, exp.Where) else node.expression
        node = node.this
    assert isinstance(node, exp.ArgMin)
    x, y, n = node.this, node.expression, node.args["count"]
    both = exp.and_(exp.Not(this=exp.Is(this=x.copy(), expression=exp.Null())),
                    exp.Not(this=exp.Is(this=y.copy(), expression=exp.Null())))
    if cond is not None:
        both = exp.and_(exp.Paren(this=cond.copy()), both)
    pair = _fn("struct", exp.alias_(y.copy(), "k"), exp.alias_(x.copy(), "v"))
    kept = exp.Filter(this=_fn("collect_list", pair), expression=exp.Where(this=both.copy()))
    first = _fn("slice", _fn("array_sort", kept), _lit(1), exp.Greatest(this=n.copy(), expressions=[_lit(0)]))
    lam = exp.Lambda(this=exp.Dot(this=exp.column("p"), expression=exp.to_identifier("v")),
                     expressions=[exp.to_identifier("p")])
    none = exp.EQ(this=exp.Filter(this=exp.Count(this=exp.Star()), expression=exp.Where(this=both)),
                  expression=_lit(0))
    return exp.Case(ifs=[exp.If(this=none, true=exp.Null())], default=_fn("transform", first, lam))


def rewrite_regexp_extract_groups(node: exp.Expr) -> exp.Expr:
    """``regexp_extract(s, pattern, ['a', 'b'])``: DuckDB returns a struct ``{a: group 1, b: group 2}``,
    each '' when the pattern does not match, NULL when ``s`` is NULL (DuckDB docs, "Regular
    Expressions"). Spark: ``named_struct('a', regexp_extract(s, p, 1), ...)``, each call '' on no
    match, with ``CASE WHEN s IS NULL`` keeping the NULL. Patterns must stay in the common subset of
    RE2 and Java regex (no backreferences, no lookaround: ztaudit's are)."""
    assert isinstance(node, exp.RegexpExtract)
    s, pattern, groups = node.this, node.expression, node.args["group"]
    fields: list[exp.Expr] = []
    for i, g in enumerate(groups.expressions, start=1):
        fields += [g.copy(), _fn("regexp_extract", s.copy(), pattern.copy(), _lit(i))]
    return exp.Case(ifs=[exp.If(this=exp.Is(this=s.copy(), expression=exp.Null()), true=exp.Null())],
                    default=_fn("named_struct", *fields))


def rewrite_lag_with_frame(node: exp.Expr) -> exp.Expr:
    """``lag(x) OVER w`` where ``w`` has a frame (``ROWS BETWEEN ...``): DuckDB ignores the frame for
    ``lag`` and ``lead``, which look a fixed number of rows back in the partition's order (DuckDB
    docs, "Window Functions": the frame does not apply to them). Spark refuses the statement (``lag``
    demands its own frame). The window, named or inline, is copied without its frame."""
    assert isinstance(node, exp.Window)
    spec = node
    name = node.args.get("alias")
    if name is not None and not node.args.get("partition_by") and not node.args.get("order"):
        select = node.find_ancestor(exp.Select)
        named = [w for w in (select.args.get("windows") or []) if select is not None
                 and w.alias_or_name == name.name] if select is not None else []
        if not named:
            raise UnsupportedIdiom("lag_with_frame", f"window {name.name} is not defined in the same SELECT",
                                   fix="define the window inline")
        spec = named[0]
    out = exp.Window(this=node.this.copy(), partition_by=[p.copy() for p in spec.args.get("partition_by") or []],
                     order=spec.args["order"].copy() if spec.args.get("order") else None, over="OVER")
    return out


def rewrite_ubigint(node: exp.Expr) -> exp.Expr:
    """``UBIGINT``: DuckDB's unsigned 64-bit integer, used only for hash columns (``p_pk``,
    ``a_pk``). Spark has no unsigned types; ``xxhash64`` (the hash rule) is a signed BIGINT, so the
    column type that holds it is BIGINT. Only equality is used on these values."""
    return exp.DataType.build("BIGINT")


def rewrite_list_distinct_ordered(node: exp.Expr) -> exp.Expr:
    """``list(DISTINCT x ORDER BY x)``: DuckDB's sorted list of the distinct values, NULL kept (once,
    last, as ORDER BY puts NULLs last by default) (DuckDB docs, "Aggregate Functions", ordered and
    DISTINCT aggregates). sqlglot would print ``collect_list(DISTINCT x)``, whose order is arbitrary.
    Spark's ``collect_list`` also drops NULLs; wrapping each value in a struct keeps them:
    ``array_sort(array_distinct(transform(collect_list(struct(x)), s -> s.v)))``; ``array_sort``
    puts NULL elements last (Spark SQL functions). A group with no rows (after its FILTER) gives NULL
    on DuckDB and ``[]`` on Spark, hence the ``CASE WHEN count(*) ... = 0 THEN NULL``."""
    where = node.expression if isinstance(node, exp.Filter) else None
    agg = node.this if isinstance(node, exp.Filter) else node
    assert isinstance(agg, exp.ArrayAgg)
    order = agg.this
    assert isinstance(order, exp.Order) and isinstance(order.this, exp.Distinct)
    value = order.this.expressions[0]
    wrapped: exp.Expr = _fn("collect_list", _fn("struct", exp.alias_(value.copy(), "v")))
    if where is not None:  # the FILTER belongs to the aggregate, inside the array functions
        wrapped = exp.Filter(this=wrapped, expression=where.copy())
    lam = exp.Lambda(this=exp.Dot(this=exp.column("s"), expression=exp.to_identifier("v")),
                     expressions=[exp.to_identifier("s")])
    count: exp.Expr = exp.Count(this=exp.Star())
    if where is not None:
        count = exp.Filter(this=count, expression=where.copy())
    return exp.Case(ifs=[exp.If(this=exp.EQ(this=count, expression=_lit(0)), true=exp.Null())],
                    default=_fn("array_sort", _fn("array_distinct", _fn("transform", wrapped, lam))))


def rewrite_frame_bound_function(node: exp.Expr) -> exp.Expr:
    """A RANGE frame bound computed by a function (``RANGE BETWEEN to_days($n) PRECEDING AND
    to_seconds(1) PRECEDING``). DuckDB evaluates any constant expression there, parameters included
    (DuckDB docs, "Window Functions", framing). Spark's parser accepts only a *literal* bound ("Frame
    bound value must be a literal"), and a named parameter is not one. So the bound is written as the
    interval literal it evaluates to, ``INTERVAL '604800' SECOND`` (both bounds in one unit: Spark
    refuses a frame whose bounds are intervals of different types), with a parameter's value taken from the
    statement's parameters (an integer from the configuration, never from a log; anything else is
    refused). The frame is then the same: a range of whole days or seconds on a UTC timestamp."""
    assert isinstance(node, exp.WindowSpec)
    for side in ("start", "end"):
        bound = node.args.get(side)
        if isinstance(bound, exp.Func):
            node.set(side, _literal_interval(bound))
    return node


_UNITS: Final = {"to_days": "DAY", "to_seconds": "SECOND"}


def _literal_interval(bound: exp.Expr) -> exp.Interval:
    name = "to_days" if isinstance(bound, exp.ToDays) else bound.name.lower()
    arg = bound.this if isinstance(bound, exp.ToDays) else (bound.expressions[0] if bound.expressions else None)
    unit = _UNITS.get(name)
    value: object = None
    if isinstance(arg, exp.Literal) and not arg.is_string:
        value = int(arg.name)
    elif isinstance(arg, exp.Placeholder):
        params = _PARAMS.get()
        if params is None or arg.name not in params:
            raise UnsupportedIdiom("frame_bound_function", f"frame bound {bound.sql('duckdb')} needs ${arg.name}'s "
                                   "value", fix="pass the statement's parameters to transpile_statement(sql, params)")
        value = params[arg.name]
    if unit is None or not isinstance(value, int) or isinstance(value, bool):
        raise UnsupportedIdiom("frame_bound_function", f"frame bound {bound.sql('duckdb')} is not to_days/to_seconds "
                               "of an integer", fix="use to_days(n) or to_seconds(n) with an integer n")
    # Spark wants both bounds of one type: every bound is written in seconds (INTERVAL SECOND).
    seconds = value * 86_400 if unit == "DAY" else value
    return exp.Interval(this=exp.Literal.string(str(seconds)), unit=exp.Var(this="SECOND"))


def rewrite_scalar_macro(node: exp.Expr) -> exp.Expr:
    """A call of one of ztaudit's scalar macros (:data:`ztaudit.core.lake.SCALAR_MACROS`, such as
    ``stage_rank(stage)``). DuckDB expands the macro's body with the arguments (DuckDB docs, "CREATE
    MACRO"). Spark has no macros; the dialect performs the same expansion, so the expression is the
    body itself, with each parameter replaced by the argument."""
    assert isinstance(node, exp.Anonymous)
    name = node.name.lower()
    params, body = next((a, b) for n, a, _d, b in SCALAR_MACROS if n == name)
    tree = sqlglot.parse_one(body, read="duckdb")
    names = [p.strip() for p in params.split(",")]
    args = dict(zip(names, node.expressions, strict=True))

    def sub(e: exp.Expr) -> exp.Expr:
        if isinstance(e, exp.Column) and not e.table and e.name in args:
            return exp.Paren(this=args[e.name].copy())
        return e

    return exp.Paren(this=tree.transform(sub))


def _sort_comparator(keys: list[exp.Ordered]) -> exp.Expr:
    """A comparator lambda ``(l, r) -> int`` for Spark's ``array_sort`` over structs with fields
    ``k0..kN``: ``coalesce(nullif(c0, 0), nullif(c1, 0), ..., 0)`` where ``ci`` compares key ``i`` in
    its direction with NULLs first or last as its ``Ordered`` says (the next key decides a tie)."""
    cmps: list[exp.Expr] = []
    for i, o in enumerate(keys):
        desc, nulls_first = bool(o.args.get("desc")), bool(o.args.get("nulls_first"))
        lk = exp.Dot(this=exp.column("l"), expression=exp.to_identifier(f"k{i}"))
        rk = exp.Dot(this=exp.column("r"), expression=exp.to_identifier(f"k{i}"))
        null_l, null_r = exp.Is(this=lk.copy(), expression=exp.Null()), exp.Is(this=rk.copy(), expression=exp.Null())
        first, later = exp.Neg(this=_lit(1)), _lit(1)
        c = exp.Case(ifs=[
            exp.If(this=exp.and_(null_l.copy(), null_r.copy()), true=_lit(0)),
            exp.If(this=null_l, true=first.copy() if nulls_first else later.copy()),
            exp.If(this=null_r, true=later.copy() if nulls_first else first.copy()),
            exp.If(this=exp.LT(this=lk.copy(), expression=rk.copy()), true=later.copy() if desc else first.copy()),
            exp.If(this=exp.GT(this=lk, expression=rk), true=first.copy() if desc else later.copy()),
        ], default=_lit(0))
        cmps.append(exp.Nullif(this=c, expression=_lit(0)))
    body = exp.Coalesce(this=cmps[0], expressions=[*cmps[1:], _lit(0)])
    return exp.Lambda(this=body, expressions=[exp.to_identifier("l"), exp.to_identifier("r")])


def _v_of(arr: exp.Expr) -> exp.Expr:
    lam = exp.Lambda(this=exp.Dot(this=exp.column("s"), expression=exp.to_identifier("v")),
                     expressions=[exp.to_identifier("s")])
    return _fn("transform", arr, lam)


def rewrite_list_ordered(node: exp.Expr) -> exp.Expr:
    """``list(x ORDER BY k1 [DESC], k2, ...) [FILTER (WHERE c)]`` and ``string_agg([DISTINCT] x, sep
    ORDER BY ...)``: DuckDB's aggregate with its rows in the ORDER BY's order, NULLs last unless told
    (DuckDB docs, "Aggregate Functions", "Order By Clause in Aggregate Functions"); ``list`` keeps NULL
    values, ``string_agg`` skips them, and a group with no row (after its FILTER) or, for
    ``string_agg``, no non-NULL value gives NULL. Spark's ``collect_list`` has no order (Spark SQL
    functions: "non-deterministic because the order of collected results depends on the order of the
    rows"). So each row is collected as ``struct(k0, ..., v)`` (a struct is never NULL, so NULL ``v`` are
    kept), the array is sorted by ``array_sort`` with a comparator lambda that applies each key's
    direction and NULL order (Spark SQL functions, ``array_sort(expr, func)``), and ``.v`` is taken;
    ``string_agg`` then joins with ``array_join``, which skips NULLs. The ``CASE WHEN count(...) = 0
    THEN NULL`` gives DuckDB's NULL where ``collect_list`` gives ``[]``. Rows tied on every key keep
    an order neither engine specifies: the detectors end each ORDER BY with the value itself.
    ``string_agg(DISTINCT x ORDER BY x)`` sorts the distinct values (``array_sort``). An ordered
    ``list`` used as a window function is not translated (reported)."""
    where = node.expression if isinstance(node, exp.Filter) else None
    agg = node.this if isinstance(node, exp.Filter) else node
    assert isinstance(agg, exp.ArrayAgg | exp.GroupConcat)
    if isinstance(node.parent, exp.Window):
        raise UnsupportedIdiom("list_ordered", f"{node.sql('duckdb')[:120]}: an ordered list over a window",
                               fix="aggregate in a GROUP BY and join the result back")
    order = agg.this
    assert isinstance(order, exp.Order)
    distinct = isinstance(order.this, exp.Distinct)
    value = order.this.expressions[0] if distinct else order.this
    keys = list(order.expressions)

    def filtered(e: exp.Expr) -> exp.Expr:
        return exp.Filter(this=e, expression=where.copy()) if where is not None else e

    if distinct:
        if not (len(keys) == 1 and keys[0].this == value and not keys[0].args.get("desc")):
            raise UnsupportedIdiom("list_ordered", f"{node.sql('duckdb')[:120]}: DISTINCT ordered by another "
                                   "expression", fix="order a DISTINCT aggregate by its value")
        values: exp.Expr = _fn("array_sort", _fn("array_distinct", _v_of(filtered(
            _fn("collect_list", _fn("struct", exp.alias_(value.copy(), "v")))))))
    else:
        fields = [exp.alias_(o.this.copy(), f"k{i}") for i, o in enumerate(keys)]
        collected = filtered(_fn("collect_list", _fn("struct", *fields, exp.alias_(value.copy(), "v"))))
        values = _v_of(_fn("array_sort", collected, _sort_comparator(keys)))
    if isinstance(agg, exp.GroupConcat):
        sep = agg.args.get("separator") or exp.Literal.string(",")
        count = filtered(exp.Count(this=value.copy()))
        result: exp.Expr = _fn("array_join", values, sep.copy())
    else:
        count = filtered(exp.Count(this=exp.Star()))
        result = values
    return exp.Case(ifs=[exp.If(this=exp.EQ(this=count, expression=_lit(0)), true=exp.Null())], default=result)


def rewrite_glob(node: exp.Expr) -> exp.Expr:
    """``s GLOB pattern``: DuckDB's shell-pattern match of the whole string, ``*`` any run of
    characters (``/`` and newlines too), ``?`` one character (DuckDB docs, "Pattern Matching", GLOB).
    Spark has no GLOB; ``s RLIKE regex`` with the pattern turned into an anchored Java regex in SQL
    (the pattern may be a column or a lambda variable, as in the unaudited-paths check):
    ``(?s)^\\Q`` + the pattern with ``*`` -> ``\\E.*\\Q`` and ``?`` -> ``\\E.\\Q`` + ``\\E$``,
    so everything else is quoted literally (Java ``Pattern``: ``\\Q...\\E``, ``(?s)``). Character
    classes (``[...]``) and backslashes have no quoted form: a pattern holding ``[`` or ``\\`` makes
    the statement fail with ``raise_error`` rather than match differently. NULL on either side is
    NULL on both engines."""
    assert isinstance(node, exp.Glob)
    s, pattern = node.this, node.expression
    quoted = _fn("replace", _fn("replace", pattern.copy(), exp.Literal.string("*"),
                                exp.Literal.string("\\E.*\\Q")),
                 exp.Literal.string("?"), exp.Literal.string("\\E.\\Q"))
    regex = _fn("concat", exp.Literal.string("(?s)^\\Q"), quoted, exp.Literal.string("\\E$"))
    unsupported = exp.or_(exp.GT(this=_fn("instr", pattern.copy(), exp.Literal.string("[")), expression=_lit(0)),
                          exp.GT(this=_fn("instr", pattern.copy(), exp.Literal.string("\\")), expression=_lit(0)))
    fail = _fn("raise_error", exp.Literal.string("ztaudit: a GLOB pattern with [ or \\ has no Spark translation"))
    return exp.Case(ifs=[exp.If(this=unsupported, true=exp.cast(fail, "BOOLEAN"))],
                    default=exp.RegexpLike(this=s.copy(), expression=regex))


def rewrite_list_bool_or(node: exp.Expr) -> exp.Expr:
    """``list_bool_or(list)``: DuckDB's OR of a list's booleans, NULL elements skipped, NULL for a NULL
    list, an empty list or one of only NULLs (DuckDB docs, "List Functions", ``list_aggregate`` with
    ``bool_or``). Spark's ``exists`` differs (NULL when no element is true but one is NULL, false for
    an empty list), so the rewrite keeps the non-NULL elements, ``filter(list, e -> e IS NOT NULL)``,
    and gives NULL when none is left, else ``array_contains(..., true)`` (Spark SQL functions; ``size``
    of a NULL array is NULL in Spark 4, so a NULL list stays NULL)."""
    assert isinstance(node, exp.Anonymous)
    arg = node.expressions[0]
    e = exp.to_identifier("e")
    kept = exp.ArrayFilter(this=arg.copy(), expression=exp.Lambda(
        this=exp.Not(this=exp.Is(this=exp.column("e"), expression=exp.Null())), expressions=[e]))
    return exp.Case(ifs=[exp.If(this=exp.EQ(this=_fn("size", kept.copy()), expression=_lit(0)), true=exp.Null())],
                    default=_fn("array_contains", kept, exp.true()))


def rewrite_star_exclude(node: exp.Expr) -> exp.Expr:
    """``SELECT * EXCLUDE (a, b)``: DuckDB's every column but ``a`` and ``b`` (DuckDB docs, "Star
    Expression"). Spark 4: ``SELECT * EXCEPT (a, b)`` is the same list, in the same order, and an
    unknown name is an error on both (Spark SQL reference, "SELECT", star clause). sqlglot prints the
    node as ``EXCEPT`` for Spark, so the node is kept as it is."""
    assert isinstance(node, exp.Star)
    return node


def rewrite_qualify(node: exp.Expr) -> exp.Expr:
    """``SELECT ... QUALIFY cond``: DuckDB filters the rows of a SELECT by a condition over its window
    functions, after them (DuckDB docs, "QUALIFY Clause"). Spark 4.1 has no QUALIFY (a parse error), and
    sqlglot's generic rewrite wraps the query as ``SELECT * FROM (SELECT *, <window> AS _w ...) WHERE
    ...``, which **adds a column ``_w``** to a ``SELECT *`` (``k8s_requests`` gained one: a silent
    difference). Here the condition becomes a column ``_zt_q`` of the inner SELECT, and the outer
    query is ``SELECT * EXCEPT (_zt_q) FROM (...) WHERE _zt_q``: the same columns in the same order
    and the rows for which the condition is TRUE (NULL drops the row in both). An ORDER BY applies
    after QUALIFY: its keys (which may name the SELECT's tables) are computed inside as ``_zt_oN``,
    sorted on outside and left out of the columns; a LIMIT or OFFSET moves outside too."""
    assert isinstance(node, exp.Select)
    cond = node.args["qualify"].this.copy()
    inner = node.copy()
    inner.set("qualify", None)
    moved = {k: inner.args.get(k) for k in ("order", "limit", "offset")}
    for k in moved:
        inner.set(k, None)
    extra: list[exp.Expr] = [exp.alias_(cond, "_zt_q")]
    order = moved.pop("order")
    if isinstance(order, exp.Order):  # its keys may name the SELECT's tables: computed inside, sorted outside
        keys = []
        for i, o in enumerate(order.expressions):
            extra.append(exp.alias_(o.this.copy(), f"_zt_o{i}"))
            keys.append(exp.Ordered(this=exp.column(f"_zt_o{i}"), desc=o.args.get("desc"),
                                    nulls_first=o.args.get("nulls_first")))
        moved["order"] = exp.Order(expressions=keys)
    inner.set("expressions", [*inner.expressions, *extra])
    star = exp.Star(except_=[exp.column(e.alias) for e in extra])
    outer = exp.select(star).from_(exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier("_zt_t"))))
    outer = outer.where(exp.column("_zt_q"))
    for k, v in moved.items():
        if v is not None:
            outer.set(k, v)
    return outer


def rewrite_list_len(node: exp.Expr) -> exp.Expr:
    """``len(list)``: DuckDB's number of elements of a list, NULL for a NULL list (DuckDB docs, "List
    Functions", ``len``). sqlglot reads ``len`` as ``length``, which Spark applies to strings only;
    Spark's ``size(list)`` is the element count, and NULL for a NULL list in Spark 4 (Spark SQL
    functions, ``size``; ``spark.sql.legacy.sizeOfNull`` is false). ztaudit's SQL writes ``len`` for
    lists and ``length`` for strings, and the dialect's parser keeps the two apart (:class:`_DuckDB`)."""
    assert isinstance(node, exp.Anonymous)
    return _fn("size", node.expressions[0].copy())


def rewrite_lambda_index(node: exp.Expr) -> exp.Expr:
    """``list_transform(l, lambda x, i: ...)`` / ``list_filter`` with a second lambda parameter:
    DuckDB's ``i`` is the element's 1-based position (DuckDB docs, "Lambda Functions": "the index
    starts at 1"). Spark's ``transform``/``filter`` pass a **0-based** index (Spark SQL functions,
    ``transform(expr, func)``). The body is given ``(i + 1)`` for each use of ``i``; without this, a
    test such as ``i = len(addrs)`` (the last address) is silently never true on Spark."""
    assert isinstance(node, exp.Transform | exp.ArrayFilter)
    lam = node.expression
    assert isinstance(lam, exp.Lambda)
    idx = lam.expressions[1].name

    def shift(e: exp.Expr) -> exp.Expr:
        if isinstance(e, exp.Identifier | exp.Column) and e.name == idx and not (
                isinstance(e, exp.Column) and e.table) and not isinstance(e.parent, exp.Lambda | exp.Column):
            return exp.Paren(this=exp.Add(this=exp.column(idx), expression=_lit(1)))
        return e

    lam.set("this", lam.this.transform(shift))
    return node


def rewrite_list_comprehension(node: exp.Expr) -> exp.Expr:
    """``[expr FOR x IN list IF cond]``: DuckDB's list comprehension, the elements kept by ``cond`` in
    order, each mapped by ``expr``; NULL for a NULL list (DuckDB docs, "List Comprehension"). Spark:
    ``transform(filter(list, x -> cond), x -> expr)`` keeps the same elements in the same order (Spark
    SQL functions, ``filter``, ``transform``), NULL for a NULL list. ``filter`` keeps an element whose
    condition is NULL out, as DuckDB's IF does."""
    if isinstance(node, exp.Comprehension):  # its Array (the list brackets) is rewritten first, top-down
        return node
    assert isinstance(node, exp.Array) and len(node.expressions) == 1
    comp = node.expressions[0]
    assert isinstance(comp, exp.Comprehension)

    def inner(e: exp.Expr) -> exp.Expr:
        # a comprehension nested in this one (``[x FOR x IN flatten([... FOR h IN l])]``): the rule's
        # top-down pass does not visit the children of the node it replaces, so they are rewritten here
        return e.copy().transform(lambda n: rewrite_list_comprehension(n) if _is_comprehension(n) else n, copy=False)

    var = comp.expression.copy()
    src: exp.Expr = inner(comp.args["iterator"])
    if comp.args.get("condition") is not None:
        src = exp.ArrayFilter(this=src, expression=exp.Lambda(this=inner(comp.args["condition"]), expressions=[var]))
    return exp.Transform(this=src, expression=exp.Lambda(this=inner(comp.this), expressions=[var.copy()]))


def _is_comprehension(n: exp.Expr) -> bool:
    return isinstance(n, exp.Array) and len(n.expressions) == 1 and isinstance(n.expressions[0], exp.Comprehension)


def rewrite_string_split(node: exp.Expr) -> exp.Expr:
    """``string_split(s, sep)``: DuckDB's list of the pieces of ``s`` between occurrences of the
    literal ``sep``, empty pieces kept (a trailing separator gives a last ``''``), NULL for a NULL
    ``s`` (DuckDB docs, "Text Functions", ``string_split``). Spark's ``split(s, regex, -1)`` splits by
    a Java regex and, with limit -1, keeps every empty piece, trailing ones too (Spark SQL functions,
    ``split``); ``sep`` is quoted as ``\\Q sep \\E`` so it matches literally. Only a literal ``sep``
    without ``\\E`` is rewritten (the detectors split by ``', '``); any other fails the statement
    here rather than splitting differently."""
    assert isinstance(node, exp.Split)
    sep = node.expression
    if not (isinstance(sep, exp.Literal) and sep.is_string and sep.this and "\\E" not in sep.this):
        raise UnsupportedIdiom("string_split", f"string_split by {sep.sql('duckdb')!r}: only a non-empty literal "
                               "separator without \\E is translated",
                               fix="split by a literal separator (a column or an empty one has no Spark translation)")
    return _fn("split", node.this.copy(), exp.Literal.string(f"\\Q{sep.this}\\E"), _lit(-1))


def _literal_text(node: exp.Expr) -> str | None:
    """The text of a string literal, or of string literals joined by ``||``; None for anything else."""
    if isinstance(node, exp.Literal) and node.is_string:
        return str(node.this)
    if isinstance(node, exp.Paren):
        return _literal_text(node.this)
    if isinstance(node, exp.DPipe):
        left, right = _literal_text(node.this), _literal_text(node.expression)
        return None if left is None or right is None else left + right
    return None


#: DuckDB ``strftime`` conversions and the Java ``DateTimeFormatter`` letters printing the same.
_STRFTIME: Final = {"%Y": "yyyy", "%m": "MM", "%d": "dd", "%H": "HH", "%M": "mm", "%S": "ss"}


def rewrite_strftime(node: exp.Expr) -> exp.Expr:
    """``strftime(ts, format)``: DuckDB's C-style formatting of a timestamp in the session's time zone
    (UTC on every lake connection); any character that is not a ``%`` conversion is printed as it is
    (DuckDB docs, "Date Format Functions"). Spark's ``date_format(ts, pattern)`` takes a Java
    ``DateTimeFormatter`` pattern in the session's time zone (UTC in every ztaudit Spark session),
    where letters are fields: sqlglot's own translation kept the ``Z`` of ``'%H:%M:%SZ'`` as a
    letter, which Spark prints as the offset ``+0000``. This rule maps ``%Y %m %d %H %M %S`` to
    ``yyyy MM dd HH mm ss`` and quotes every other run of characters (``'...'``, a ``'`` doubled), so
    ``Z`` stays a literal Z (Spark SQL reference, "Datetime Patterns"). A format that is not a literal
    or uses another conversion fails the statement here."""
    assert isinstance(node, exp.TimeToStr)
    fmt = node.args.get("format")
    text = _literal_text(fmt) if fmt is not None else None
    if text is None:
        raise UnsupportedIdiom("strftime", "strftime with a format that is not a literal",
                               fix="write the format as a literal")
    out, lit, i = [], "", 0
    while i < len(text):
        conv = text[i:i + 2]
        if conv in _STRFTIME:
            if lit:
                out.append("'" + lit.replace("'", "''") + "'")
                lit = ""
            out.append(_STRFTIME[conv])
            i += 2
        elif text[i] == "%":
            raise UnsupportedIdiom("strftime", f"strftime format {text!r}: only {' '.join(_STRFTIME)} are translated",
                                   fix="use those conversions, or format in Python")
        else:
            lit += text[i]
            i += 1
    if lit:
        out.append("'" + lit.replace("'", "''") + "'")
    return _fn("date_format", node.this.copy(), exp.Literal.string("".join(out)))


#: The ``printf`` conversions :func:`rewrite_printf` translates: ``%%``, ``%d``, ``%s`` and ``%.Nf``.
_PRINTF_SPEC: Final = re.compile(r"%(%|d|s|\.(\d)f)")


def rewrite_printf(node: exp.Expr) -> exp.Expr:
    """``printf(format, args...)``: DuckDB's C-style formatting (the fmt library), NULL when an
    argument is NULL; ``%.Nf`` rounds the exact binary value of the DOUBLE, a tie to even
    (``printf('%.0f', 2.5)`` is ``2``, ``printf('%.1f', 0.15)`` is ``0.1``: 0.15 is a little under).
    Spark's ``format_string`` is Java's ``Formatter``: ``%d`` and ``%s`` print the same, a NULL
    argument prints ``null``, and ``%.Nf`` rounds half up from the shortest decimal (``3``, ``0.2``).
    So each ``%.Nf`` argument is formatted by ``format_number(x, N)`` (``java.text.DecimalFormat``,
    HALF_EVEN on the exact binary value since JDK 8, as C) with its grouping commas removed and put in
    as ``%s``, and the call is NULL when any argument is (Spark SQL functions, ``format_string``,
    ``format_number``). Only a literal format with these conversions is translated; any other fails
    the statement here."""
    assert isinstance(node, exp.Anonymous)
    fmt, *args = node.expressions
    text = _literal_text(fmt)
    if text is None:
        raise UnsupportedIdiom("printf", "printf with a format that is not a literal",
                               fix="write the format as a literal (or literals joined by ||)")
    specs = list(_PRINTF_SPEC.finditer(text))
    if text.replace("%%", "").count("%") != sum(1 for m in specs if m.group(1) != "%"):
        raise UnsupportedIdiom("printf", f"printf format {text!r}: only %d, %s, %.Nf and %% are translated",
                               fix="use those conversions, or format in Python")
    out_args: list[exp.Expr] = []
    parts, pos, i = [], 0, 0
    for m in specs:
        parts.append(text[pos:m.start()])
        pos = m.end()
        if m.group(1) == "%":
            parts.append("%%")
            continue
        arg = args[i].copy()
        i += 1
        if m.group(2) is not None:
            number = _fn("format_number", exp.cast(arg, "DOUBLE"), _lit(int(m.group(2))))
            out_args.append(_fn("replace", number, exp.Literal.string(","), exp.Literal.string("")))
            parts.append("%s")
        else:
            out_args.append(arg)
            parts.append(m.group(0))
    parts.append(text[pos:])
    if i != len(args):
        raise UnsupportedIdiom("printf", f"printf format {text!r} takes {i} arguments, given {len(args)}")
    call = _fn("format_string", exp.Literal.string("".join(parts)), *out_args)
    if not args:
        return call
    any_null = exp.or_(*[exp.Is(this=a.copy(), expression=exp.Null()) for a in args])
    return exp.Case(ifs=[exp.If(this=any_null, true=exp.cast(exp.Null(), "STRING"))], default=call)


_INEQUALITIES: Final = (exp.GT, exp.GTE, exp.LT, exp.LTE)


def rewrite_asof_join(node: exp.Expr) -> exp.Expr:
    """``L ASOF [LEFT] JOIN R r ON <equalities> AND r.t >= l.x``: DuckDB joins each row of ``L`` with
    the one row of ``R`` that meets the conditions and whose ``r.t`` is nearest to ``l.x`` on the side
    the one inequality allows (the smallest ``r.t`` for ``>=``/``>``, the largest for ``<=``/``<``);
    ``LEFT`` keeps a row of ``L`` without one (NULLs), plain ``ASOF JOIN`` drops it (DuckDB docs, "ASOF
    Joins"). Spark has no ASOF join; a lateral subquery says the same: ``[LEFT] JOIN LATERAL (SELECT
    r.* FROM R r WHERE <the same conditions> ORDER BY r.t [DESC] LIMIT 1) r [ON TRUE]``, which Spark 4
    decorrelates into a join and a per-row ``row_number`` limit (Spark SQL reference, "LATERAL
    SUBQUERY"). Rows of ``R`` tied on ``r.t`` are picked arbitrarily by both engines (DuckDB by storage
    order), as with any ASOF join. An ASOF join whose ``ON`` does not have exactly one inequality
    between a column of ``R`` and an expression without ``R`` fails the statement here."""
    assert isinstance(node, exp.Join)
    right = node.this
    if not isinstance(right, exp.Table):
        raise UnsupportedIdiom("asof_join", "an ASOF join of a subquery", fix="join a table or CTE by name")
    alias = right.alias_or_name
    on = node.args.get("on")
    conds = list(on.flatten()) if isinstance(on, exp.And) else [on] if on is not None else []

    def only_right(e: exp.Expr) -> bool:
        cols = list(e.find_all(exp.Column))
        return bool(cols) and all(c.table == alias for c in cols)

    def no_right(e: exp.Expr) -> bool:
        return all(c.table != alias for c in e.find_all(exp.Column))

    order: list[exp.Ordered] = []
    for c in conds:
        if not isinstance(c, _INEQUALITIES):
            continue
        if only_right(c.this) and no_right(c.expression):
            col, ascending = c.this, isinstance(c, exp.GT | exp.GTE)
        elif only_right(c.expression) and no_right(c.this):
            col, ascending = c.expression, isinstance(c, exp.LT | exp.LTE)
        else:
            continue
        order.append(exp.Ordered(this=col.copy(), desc=not ascending, nulls_first=False))
    if len(order) != 1:
        raise UnsupportedIdiom("asof_join", f"ASOF join on {on.sql('duckdb') if on is not None else ''!r}: "
                               "exactly one inequality between the right table and the left side is translated",
                               fix="write the ASOF condition as equalities and one inequality")
    body = (exp.select(exp.Column(this=exp.Star(), table=exp.to_identifier(alias)))
            .from_(right.copy()).where(exp.and_(*[c.copy() for c in conds])))
    body.set("order", exp.Order(expressions=order))
    body.set("limit", exp.Limit(expression=_lit(1)))
    lateral = exp.Lateral(this=exp.Subquery(this=body), alias=exp.TableAlias(this=exp.to_identifier(alias)))
    if (node.side or "").upper() == "LEFT":
        return exp.Join(this=lateral, side="LEFT", on=exp.true())
    return exp.Join(this=lateral)


def rewrite_avg_double(node: exp.Expr) -> exp.Expr:
    """``avg(x)``: DuckDB returns a DOUBLE for every numeric ``x``, DECIMAL included (``avg(CASE ...
    THEN 1.0 ELSE 0.0 END)``, the reach model's shares, is 0.3333333333333333; DuckDB docs, "Aggregate
    Functions"). Spark's ``avg`` of a DECIMAL is a DECIMAL with a few more digits (0.33333), which the
    model then reads. ``avg(CAST(x AS DOUBLE))`` gives Spark's DOUBLE average: the same for integers
    and for decimals whose values are exact in binary (0.0, 1.0, halves); a decimal such as 0.1 summed
    many times may differ in the last bits (DuckDB sums decimals exactly, then divides). NULLs are
    skipped by both; an empty group is NULL on both."""
    assert isinstance(node, exp.Avg)
    if isinstance(node.this, exp.Cast) and node.this.to.this == exp.DataType.Type.DOUBLE:
        return node
    return exp.Avg(this=exp.cast(node.this.copy(), "DOUBLE"))


def rewrite_list_index(node: exp.Expr) -> exp.Expr:
    """``list[i]``: DuckDB's 1-based element, NULL when ``i`` is past either end (a negative ``i``
    counts from the end) and for a NULL list (DuckDB docs, "List Functions", ``list_extract``). sqlglot
    prints Spark's ``list[i - 1]``, which in Spark 4's ANSI mode (the default) *fails the statement*
    for an index past the end ([INVALID_ARRAY_INDEX]: the first element of an empty list comprehension
    stopped ``revocation.stream_survived``). Spark's ``try_element_at(list, i)`` is 1-based, counts a
    negative ``i`` from the end and gives NULL past either end (Spark SQL functions,
    ``try_element_at``); on a map it is the value of key ``i`` or NULL. A string index (a map or struct
    key, ``m['k']``) is left to sqlglot."""
    assert isinstance(node, exp.Bracket)
    idx = node.expressions[0]
    # sqlglot shifts a literal index to 0-based when it reads DuckDB (1 -> 0, -1 -> -2) and leaves any
    # other expression as written (1-based)
    one_based: exp.Expr
    if isinstance(idx, exp.Literal) and not idx.is_string:
        one_based = _lit(int(idx.name) + 1)
    elif isinstance(idx, exp.Neg) and isinstance(idx.this, exp.Literal) and not idx.this.is_string:
        one_based = _lit(1 - int(idx.this.name))
    else:
        one_based = _nested(idx, _list_index, rewrite_list_index)
    return _fn("try_element_at", _nested(node.this, _list_index, rewrite_list_index), one_based)


def _nested(e: exp.Expr, matches: Callable[[exp.Expr], bool], rewrite: Callable[[exp.Expr], exp.Expr]) -> exp.Expr:
    """A copy of ``e`` with ``rewrite`` applied inside: a rule's top-down pass does not visit the
    children of the node it replaces, so a rule whose node may hold another of its kind calls this."""
    return e.copy().transform(lambda n: rewrite(n) if matches(n) else n, copy=False)


def _list_index(n: exp.Expr) -> bool:
    if not (isinstance(n, exp.Bracket) and len(n.expressions) == 1):
        return False
    idx = n.expressions[0]
    return not isinstance(idx, exp.Slice) and not (isinstance(idx, exp.Literal) and idx.is_string)


def rewrite_try_url_decode(node: exp.Expr) -> exp.Expr:
    """``try(url_decode(s))``: DuckDB decodes ``%XX`` escapes and keeps an invalid one (``'%zz'``) and
    ``+`` as they are, so ``try`` never fires (DuckDB docs, "Text Functions", ``url_decode``; "TRY").
    Spark's ``try_url_decode(s)`` decodes ``%XX`` and ``+`` (a space) and is NULL for an invalid
    escape (Spark SQL functions). The values differ for ``+`` and invalid escapes, but ztaudit only
    compares the result with literals holding neither (``'watch'``, ``'follow'``, ``'0'``,
    ``'false'``), and a value containing ``+`` or ``%`` equals none of them on either engine. Any other
    ``try(...)`` is not translated (the ``url_decode`` inside matches too, and is replaced with its
    ``try``)."""
    if not isinstance(node, exp.Try):
        return node
    return _fn("try_url_decode", *[_nested(a, _try_url_decode, rewrite_try_url_decode) for a in node.this.expressions])


def _try_url_decode(n: exp.Expr) -> bool:
    if isinstance(n, exp.Try):
        return _anon(n.this, "url_decode") and len(n.this.expressions) == 1
    return _anon(n, "url_decode") and isinstance(n.parent, exp.Try) and len(n.expressions) == 1


def _report(idiom: str, why: str, fix: str) -> Callable[[exp.Expr], exp.Expr]:
    def refuse(node: exp.Expr) -> exp.Expr:
        raise UnsupportedIdiom(idiom, f"{why}: {node.sql('duckdb')[:120]}", fix=fix)
    return refuse


@dataclass(frozen=True)
class Rule:
    """One DuckDB idiom: ``matches`` finds it in a parsed statement, ``rewrite`` turns the node into
    Spark's equivalent (or raises :class:`UnsupportedIdiom` with the portable form to write)."""

    idiom: str
    matches: Callable[[exp.Expr], bool]
    rewrite: Callable[[exp.Expr], exp.Expr]
    #: False for an idiom reported rather than rewritten (the statement must be written portably,
    #: or it is engine-specific and the Spark seam does its work another way).
    translated: bool = True

    @property
    def doc(self) -> str:
        return (self.rewrite.__doc__ or "").strip()


def _parallel_unnest(n: exp.Expr) -> bool:
    """A SELECT whose own list has two or more ``unnest`` calls. DuckDB unnests them side by side (the
    i-th elements on row i; DuckDB docs, "unnest"); Spark 4.1 runs two generators in one SELECT as a
    cross product (every pair of elements), silently: ``unnest(hosts), unnest(clusters)`` mapped every
    proxy host to every cluster there."""
    if not isinstance(n, exp.Select):
        return False
    calls = [x for e in n.expressions for x in e.find_all(exp.Explode, exp.Unnest) if x.find_ancestor(exp.Select) is n]
    return len(calls) >= 2


def _min_by_n(n: exp.Expr) -> bool:
    return isinstance(n, exp.ArgMin) and n.args.get("count") is not None


def _distinct_ordered(n: exp.Expr) -> bool:
    return (isinstance(n, exp.ArrayAgg) and isinstance(n.this, exp.Order) and isinstance(n.this.this, exp.Distinct)
            and _ordered_same(n.this, n.this.this.expressions[0]))


def _ordered_agg(n: exp.Expr) -> bool:
    return ((isinstance(n, exp.GroupConcat) and isinstance(n.this, exp.Order))
            or (isinstance(n, exp.ArrayAgg) and isinstance(n.this, exp.Order) and not _distinct_ordered(n)))


def _list_ordered(n: exp.Expr) -> bool:
    """An ordered ``list``/``string_agg``, or the FILTER wrapping one (rewritten together)."""
    return _ordered_agg(n.this if isinstance(n, exp.Filter) else n)


def _is_macro_call(node: exp.Expr) -> bool:
    return _anon(node, *(n for n, *_ in SCALAR_MACROS))


def _lag_framed(node: exp.Expr) -> bool:
    if not (isinstance(node, exp.Window) and isinstance(node.this, exp.Lag | exp.Lead)):
        return False
    spec = node.args.get("spec")
    if spec is not None:
        return True
    name = node.args.get("alias")
    select = node.find_ancestor(exp.Select)
    if name is None or select is None:
        return False
    return any(w.alias_or_name == name.name and w.args.get("spec") is not None
               for w in select.args.get("windows") or [])


#: The registry: every DuckDB idiom the detectors use that is not plain common SQL, keyed by the name a
#: failing test prints. Order matters only where one rule's output feeds another (intervals before
#: frame bounds: the frame rule turns to_days() in a bound into a literal before the interval rules).
RULES: Final[dict[str, Rule]] = {r.idiom: r for r in [
    Rule("materialized_cte", lambda n: isinstance(n, exp.CTE) and n.args.get("materialized") is not None,
         rewrite_materialized_cte),
    Rule("frame_bound_function", lambda n: isinstance(n, exp.WindowSpec)
         and any(isinstance(n.args.get(s), exp.Func) for s in ("start", "end")), rewrite_frame_bound_function),
    Rule("epoch_us", lambda n: _anon(n, "epoch_us"), rewrite_epoch_us),
    Rule("to_days", lambda n: isinstance(n, exp.ToDays) or _anon(n, "to_days"), rewrite_to_days),
    Rule("to_seconds", lambda n: _anon(n, "to_seconds"), rewrite_to_seconds),
    Rule("to_microseconds", lambda n: _anon(n, "to_microseconds"), rewrite_to_microseconds),
    Rule("hash", lambda n: _anon(n, "hash"), rewrite_hash),
    Rule("list_slice", lambda n: isinstance(n, exp.Bracket) and len(n.expressions) == 1
         and isinstance(n.expressions[0], exp.Slice), rewrite_list_slice),
    Rule("mode_ordered", lambda n: isinstance(n, exp.Mode), rewrite_mode_ordered),
    Rule("min_by_n", lambda n: _min_by_n(n.this if isinstance(n, exp.Filter) else n), rewrite_min_by_n),
    Rule("regexp_extract_groups", lambda n: isinstance(n, exp.RegexpExtract)
         and isinstance(n.args.get("group"), exp.Array), rewrite_regexp_extract_groups),
    Rule("lag_with_frame", _lag_framed, rewrite_lag_with_frame),
    Rule("ubigint", lambda n: isinstance(n, exp.DataType) and n.this == exp.DataType.Type.UBIGINT, rewrite_ubigint),
    Rule("list_distinct_ordered", lambda n: _distinct_ordered(n.this if isinstance(n, exp.Filter) else n),
         rewrite_list_distinct_ordered),
    Rule("scalar_macro", _is_macro_call, rewrite_scalar_macro),
    Rule("glob", lambda n: isinstance(n, exp.Glob), rewrite_glob),
    Rule("list_ordered", _list_ordered, rewrite_list_ordered),
    Rule("list_bool_or", lambda n: _anon(n, "list_bool_or"), rewrite_list_bool_or),
    Rule("star_exclude", lambda n: isinstance(n, exp.Star) and bool(n.args.get("except_") or n.args.get("except")),
         rewrite_star_exclude),
    Rule("qualify", lambda n: isinstance(n, exp.Select) and n.args.get("qualify") is not None, rewrite_qualify),
    Rule("list_len", lambda n: _anon(n, "len"), rewrite_list_len),
    Rule("lambda_index", lambda n: isinstance(n, exp.Transform | exp.ArrayFilter)
         and isinstance(n.expression, exp.Lambda) and len(n.expression.expressions) == 2, rewrite_lambda_index),
    Rule("list_comprehension", lambda n: isinstance(n, exp.Comprehension) or _is_comprehension(n),
         rewrite_list_comprehension),
    Rule("avg_double", lambda n: isinstance(n, exp.Avg), rewrite_avg_double),
    Rule("string_split", lambda n: isinstance(n, exp.Split), rewrite_string_split),
    Rule("printf", lambda n: _anon(n, "printf"), rewrite_printf),
    Rule("strftime", lambda n: isinstance(n, exp.TimeToStr), rewrite_strftime),
    Rule("asof_join", lambda n: isinstance(n, exp.Join) and str(n.args.get("method") or "").upper() == "ASOF",
         rewrite_asof_join),
    Rule("list_index", _list_index, rewrite_list_index),
    Rule("try_url_decode", _try_url_decode, rewrite_try_url_decode),
    # --- reported, not rewritten ---------------------------------------------------------------
    Rule("star_replace", lambda n: isinstance(n, exp.Star) and bool(n.args.get("replace")),
         _report("star_replace", "SELECT * REPLACE needs the column list, which Spark SQL cannot infer",
                 "write the columns out (portable), replacing the one that changes"), translated=False),
    Rule("duckdb_catalog", lambda n: _anon(n, "duckdb_tables", "duckdb_settings", "duckdb_views"),
         _report("duckdb_catalog", "DuckDB's catalog functions are engine-specific",
                 "ask the engine seam (it knows its temp tables and settings)"), translated=False),
    Rule("set_option", lambda n: isinstance(n, exp.Set),
         _report("set_option", "a DuckDB session setting", "the Spark session's settings are core/spark_session.py's"),
         translated=False),
    Rule("read_parquet", lambda n: isinstance(n, exp.ReadParquet),
         _report("read_parquet", "the lake's DuckDB views read Parquet files",
                 "on Spark the seam reads the lake's Iceberg tables (core/spark_session.py)"), translated=False),
    Rule("parallel_unnest", _parallel_unnest,
         _report("parallel_unnest", "two unnests in one SELECT are zipped on DuckDB but a cross product on Spark",
                 "unnest once per SELECT, or write the pairs as VALUES of bound parameters (correlate._pairs_sql)"),
         translated=False),
    Rule("macro_definition", lambda n: isinstance(n, exp.Create) and n.kind in ("MACRO", "FUNCTION"),
         _report("macro_definition", "DuckDB macros do not exist on Spark",
                 "scalar macros are expanded by the scalar_macro rule; table macros are for analysts on DuckDB"),
         translated=False),
]}

#: Constructs that mean the same on DuckDB and Spark 4.1 as sqlglot prints them (each differential
#: test and the run of every detect statement on Spark checks this list). A construct found in a
#: statement that is neither here nor matched by a rule fails :func:`transpile` as ``unreviewed:``.
PORTABLE: Final[frozenset[type[exp.Expr]]] = frozenset({
    exp.Abs, exp.Add, exp.Alias, exp.And, exp.AnyValue, exp.ArgMax, exp.ArgMin, exp.Array, exp.ArrayConcat,
    exp.ArrayContains, exp.ArrayDistinct, exp.ArrayFilter, exp.ArraySort, exp.Avg, exp.Between,
    exp.Boolean, exp.Case, exp.Cast, exp.Coalesce, exp.Column, exp.ColumnDef, exp.Count, exp.CTE,
    exp.DataType, exp.Distinct, exp.Div, exp.Dot, exp.Drop, exp.EQ, exp.Exists, exp.Explode, exp.Filter,
    exp.Floor, exp.From, exp.GT, exp.GTE, exp.Greatest, exp.Group, exp.Having, exp.Identifier, exp.If,
    exp.IgnoreNulls, exp.In, exp.Insert, exp.IntDiv, exp.Interval, exp.Is, exp.Join, exp.LT, exp.LTE,
    exp.Lag, exp.Lambda, exp.Least, exp.Length, exp.Like, exp.Literal, exp.Lower, exp.Max, exp.Min,
    exp.Mod, exp.Mul, exp.NEQ, exp.Not, exp.Null, exp.NullSafeEQ, exp.NullSafeNEQ, exp.Nullif, exp.Or,
    exp.Order, exp.Ordered, exp.Paren, exp.Placeholder, exp.Properties, exp.Qualify, exp.RegexpExtract,
    exp.RegexpLike, exp.RowNumber, exp.Schema, exp.Select, exp.SplitPart, exp.Star, exp.StartsWith,
    exp.Sub, exp.Subquery, exp.Sum, exp.Table, exp.TableAlias, exp.TemporaryProperty, exp.Union,
    exp.Upper, exp.Where, exp.Window, exp.WindowSpec, exp.With, exp.Create, exp.Var, exp.Struct,
    exp.PropertyEQ, exp.Tuple, exp.Values, exp.Transform, exp.Flatten, exp.LogicalOr, exp.LogicalAnd,
    exp.ArrayAgg, exp.Bracket, exp.Slice, exp.Mode, exp.ToDays, exp.Anonymous, exp.ReturnsProperty,
    exp.Chr, exp.ArrayToString, exp.TimeToUnix, exp.UnixToTime, exp.DPipe, exp.ConcatWs,
    exp.Substring, exp.StrPosition, exp.MD5,
})


# --- statements ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SparkStatement:
    """One DuckDB statement as Spark runs it.

    ``kind`` says what the seam does with ``sql``: ``query`` (run it, return rows), ``materialise``
    (``CREATE TEMP TABLE target AS``: run ``sql`` and materialise its rows as ``target``),
    ``create_empty`` (a temp table declared with columns: ``sql`` is a ``SELECT`` of no rows of that
    shape), ``insert`` (append the rows of ``sql`` to ``target``; ``by_name`` matches columns by name),
    ``view`` (a temp view: ``CREATE OR REPLACE TEMP VIEW`` on Spark too) and ``drop`` (forget
    ``target``; ``sql`` is empty)."""

    kind: str
    sql: str
    target: str | None = None
    by_name: bool = False


class _DuckDB(DuckDB):
    """DuckDB as sqlglot reads it, except that ``len(x)`` stays a call of ``len`` (the ``list_len``
    rule) instead of becoming ``length``, which Spark applies to strings only."""

    class Parser(DuckDB.Parser):  # type: ignore[misc, valid-type]
        FUNCTIONS: ClassVar[dict[str, Callable[..., exp.Expr]]] = {
            **DuckDB.Parser.FUNCTIONS,
            "LEN": lambda args: exp.Anonymous(this="len", expressions=args),
        }


def _parse(sql: str) -> exp.Expr:
    try:
        trees = sqlglot.parse(sql, read=_DuckDB, error_level=ErrorLevel.RAISE)
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        raise UnsupportedIdiom("unparsed", f"sqlglot cannot parse this DuckDB statement (line {first.get('line')}, "
                               f"column {first.get('col')}: {first.get('description')})",
                               fix="write the construct in the engines' common subset") from exc
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise UnsupportedIdiom("unparsed", f"expected one statement, got {len(trees)}")
    tree = trees[0]
    if isinstance(tree, exp.Command) or tree is None:
        raise UnsupportedIdiom("unparsed", f"sqlglot read the statement as an opaque command: {sql[:80]!r}",
                               fix="write it in the engines' common subset")
    return tree


def idioms(sql: str) -> list[str]:
    """The :data:`RULES` keys of the idioms ``sql`` uses (in tree order, without repeats); raises
    :class:`UnsupportedIdiom` for a construct no rule or :data:`PORTABLE` entry covers."""
    return _check(_parse(sql))


def _check(tree: exp.Expr) -> list[str]:
    found: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        # every rule a node matches (a SELECT can hold QUALIFY and two unnests: both are named)
        matched = [r for r in RULES.values() if r.matches(node)]
        found.extend(r.idiom for r in matched if r.idiom not in found)
        if any(not r.translated for r in matched):
            continue  # reported: what is inside does not matter
        stack.extend(reversed(list(node.iter_expressions())))
        if matched:
            continue
        if isinstance(node, exp.Anonymous) or type(node) not in PORTABLE:
            what = node.name if isinstance(node, exp.Anonymous) else type(node).__name__
            raise UnsupportedIdiom(f"unreviewed:{what}", f"no rule covers {node.sql('duckdb')[:120]!r}",
                                   fix="add a rule to detectors/spark_dialect.py RULES with its differential test, "
                                       "or write the statement in the engines' common subset")
    return found


def _rewrite(tree: exp.Expr) -> exp.Expr:
    for rule in RULES.values():
        def apply(node: exp.Expr, rule: Rule = rule) -> exp.Expr:
            return rule.rewrite(node) if rule.matches(node) else node
        tree = tree.transform(apply, copy=False)
    return tree


def _print(tree: exp.Expr) -> str:
    return tree.sql(dialect=ZtauditSpark, unsupported_level=ErrorLevel.RAISE)


def _empty_select(schema: exp.Schema) -> str:
    cols = [exp.alias_(exp.cast(exp.Null(), c.args["kind"].copy()), c.name)
            for c in schema.expressions if isinstance(c, exp.ColumnDef)]
    return _print(exp.select(*cols).where(exp.false()))


def transpile_statement(sql: str, params: Mapping[str, Any] | None = None) -> SparkStatement:
    """``sql`` (one DuckDB statement of the detectors) as a :class:`SparkStatement`; raises
    :class:`UnsupportedIdiom` naming the idiom when it cannot be translated. ``params`` are the values
    the statement will be run with (``$name``): they stay bound parameters, except where Spark wants
    a literal (frame bounds)."""
    tree = _parse(sql)
    _check(tree)
    token = _PARAMS.set(params)
    try:
        tree = _rewrite(tree)
    finally:
        _PARAMS.reset(token)
    if isinstance(tree, exp.Create) and tree.kind == "TABLE":
        target = tree.this.this.name if isinstance(tree.this, exp.Schema) else tree.this.name
        body = tree.expression
        if isinstance(body, exp.Query):
            return SparkStatement("materialise", _print(body), target)
        if isinstance(tree.this, exp.Schema):
            return SparkStatement("create_empty", _empty_select(tree.this), target)
    if isinstance(tree, exp.Create) and tree.kind == "VIEW" and isinstance(tree.expression, exp.Query):
        return SparkStatement("view", _print(tree.expression), tree.this.name)
    if isinstance(tree, exp.Insert) and isinstance(tree.expression, exp.Query):
        target_node = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
        return SparkStatement("insert", _print(tree.expression), target_node.name,
                              by_name=bool(tree.args.get("by_name")))
    if isinstance(tree, exp.Drop):
        return SparkStatement("drop", "", tree.args["tables"][0].name)
    if isinstance(tree, exp.Query):
        return SparkStatement("query", _print(tree))
    raise UnsupportedIdiom(f"unreviewed:{type(tree).__name__}", f"statement kind not handled: {sql[:80]!r}")


def transpile(sql: str, params: Mapping[str, Any] | None = None) -> str:
    """The Spark SQL of one DuckDB statement (for a temp table, view or insert: its ``SELECT``; see
    :func:`transpile_statement` for what to do with it). Raises :class:`UnsupportedIdiom`."""
    return transpile_statement(sql, params).sql
