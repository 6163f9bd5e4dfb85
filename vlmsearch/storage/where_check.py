"""Validation of a ``--where`` filter on DuckDB's own parse tree, against an allow-list.

A filter is one boolean expression over the metadata columns. Rather than looking for
forbidden words in the text (quoting a name, ``"repeat"(...)``, slipped past that), the
expression is parsed by DuckDB (``json_serialize_sql``) and every node of the tree must be
of an allowed kind: column references, constants, comparisons, AND/OR/NOT, IN lists of
constants, BETWEEN, IS [NOT] NULL, CASE, COALESCE, casts to simple types, and calls of the
functions in :data:`ALLOWED_FUNCTIONS`. Subqueries, table functions, window functions,
lambdas, parameters and every other function (settings and catalog introspection such as
``current_setting``; functions whose output is sized by an argument such as ``repeat``,
``lpad``, ``range``, ``replace``, ``format``, lists and maps) are refused by name.

A few bounds keep the cost of one row small, because DuckDB can only interrupt a query
between chunks of 2048 rows: string concatenation has at most
:data:`MAX_CONCAT_OPERANDS` operands in all, regular expressions and ``strftime`` formats
must be short string constants, and quadratic string distances (``levenshtein``, ...)
are not offered.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Sequence
from typing import Any

from vlmsearch.errors import QueryError

TABLE_NAME = "metadata"

# The scalar functions a filter may call (DuckDB names; operators appear by symbol).
ALLOWED_FUNCTIONS = frozenset(
    # arithmetic and comparison-like operators
    ["+", "-", "*", "/", "//", "%", "^", "**"]
    # LIKE, NOT LIKE, ILIKE, NOT ILIKE, GLOB (with and without ESCAPE), SIMILAR TO, ||
    + ["~~", "!~~", "~~*", "!~~*", "~~~", "glob", "||"]
    + ["like_escape", "not_like_escape", "ilike_escape", "not_ilike_escape"]
    # strings: none returns more than its inputs hold
    + "lower upper lcase ucase length strlen trim ltrim rtrim contains starts_with prefix "
    "ends_with suffix strpos instr position left right substring substr reverse "
    "strip_accents split_part regexp_matches regexp_full_match regexp_extract concat".split()
    # numbers
    + "abs round floor ceil ceiling trunc sqrt cbrt ln log log2 log10 exp pow power sign "
    "greatest least isnan isinf isfinite".split()
    # dates and times (INTERVAL literals call to_days etc.)
    + "strftime strptime date_part datepart date_trunc datetrunc date_diff datediff "
    "date_sub datesub year month day dayofmonth dayofweek dayofyear weekday week weekofyear "
    "hour minute second quarter epoch epoch_ms to_timestamp make_date make_timestamp now "
    "today get_current_timestamp age last_day monthname dayname to_years to_months "
    "to_weeks to_days to_hours to_minutes to_seconds to_milliseconds".split()
    # conditionals
    + "nullif if".split()
)
# CAST targets: scalar types only (no lists, structs or maps).
SIMPLE_TYPES = frozenset(
    "BOOLEAN TINYINT SMALLINT INTEGER BIGINT HUGEINT UTINYINT USMALLINT UINTEGER UBIGINT "
    "FLOAT DOUBLE DECIMAL VARCHAR DATE TIME TIMESTAMP INTERVAL".split()
    + ["TIMESTAMP WITH TIME ZONE"]
    # aliases as the parser leaves them
    + "BOOL LOGICAL INT INT1 INT2 INT4 INT8 SHORT LONG SIGNED FLOAT4 FLOAT8 REAL NUMERIC "
    "TEXT STRING CHAR BPCHAR DATETIME TIMESTAMPTZ TIMESTAMP_S TIMESTAMP_MS TIMESTAMP_NS "
    "TIMESTAMP_US".split()
)
_OPERATORS = frozenset(
    "OPERATOR_NOT OPERATOR_IS_NULL OPERATOR_IS_NOT_NULL COMPARE_IN COMPARE_NOT_IN "
    "OPERATOR_COALESCE".split()
)
_CONCAT = frozenset(["||", "concat"])
_REGEX = frozenset(["regexp_matches", "regexp_full_match", "regexp_extract"])
_NAMED_CONSTRUCTS = {
    "SUBQUERY": "a subquery (SELECT, TABLE, VALUES, EXISTS, IN (...query...))",
    "WINDOW": "a window function",
    "STAR": "* or COLUMNS(...)",
    "LAMBDA": "a lambda",
    "PARAMETER": "a parameter ($1, ?)",
    "POSITIONAL_REFERENCE": "a positional reference (#1)",
}

MAX_DEPTH = 64  # nesting of the expression tree
MAX_CONCAT_OPERANDS = 8  # in the whole filter: bounds the length of any computed string
MAX_REGEX_SIZE = 256  # a pattern's size with counted repetitions expanded
MAX_FORMAT_CHARS = 64  # strftime/strptime formats

_parser_lock = threading.Lock()
_parser: Any = None


def _parse(sql: str) -> dict[str, Any]:
    """DuckDB's parse tree of ``sql`` as JSON (a private connection that can read nothing)."""
    global _parser
    import duckdb

    with _parser_lock:
        if _parser is None:
            con = duckdb.connect(":memory:")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            _parser = con
        text = _parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0]
    try:
        return json.loads(text)
    except RecursionError:
        raise QueryError("the filter is nested too deeply") from None


def validate_where(where: str, columns: Sequence[str] | None = None) -> None:
    """Accept only one boolean expression built from allowed nodes, else raise
    :class:`QueryError` naming the offending construct. With ``columns``, every column
    reference must name one of them."""
    _validate(where, None if columns is None else tuple(columns))


@functools.lru_cache(maxsize=256)  # a repeated filter (paging, the web page) parses once
def _validate(where: str, columns: tuple[str, ...] | None) -> None:
    def fail(reason: str) -> QueryError:
        return QueryError(f"invalid where filter {_shown(where)}: {reason}")

    _check_tokens(where, fail)
    tree = _parse(f"SELECT id FROM {TABLE_NAME} WHERE ({where})")
    if tree.get("error"):
        raise fail(_syntax_error(where))
    statements = tree.get("statements") or []
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    if not _is_plain_select(node):
        raise fail("write one boolean expression over the metadata columns")
    known = {c.lower() for c in columns} if columns is not None else None
    state = {"concat": 0}
    try:
        _check(node["where_clause"], 0, known, state, fail, list(columns or ()))
    except RecursionError:
        raise fail("the expression is nested too deeply") from None


def _syntax_error(where: str) -> str:
    """DuckDB's message for the filter as the user wrote it: parsed inside parentheses, an
    incomplete ``width >`` is reported "near ')'", a character the user never typed."""
    tree = _parse(f"SELECT id FROM {TABLE_NAME} WHERE {where}")
    return str(tree.get("error_message") or "syntax error").splitlines()[0][:200]


def _shown(where: str) -> str:
    return repr(where if len(where) <= 120 else where[:117] + "...")


def _check_tokens(where: str, fail: Any) -> None:
    """No comments, no ';', balanced parentheses: the text stays inside ``WHERE (...)``."""
    import duckdb

    try:
        tokens = duckdb.tokenize(where)
    except duckdb.Error as e:
        raise fail(str(e).splitlines()[0][:200]) from None
    depth = 0
    for i, (pos, kind) in enumerate(tokens):
        end = tokens[i + 1][0] if i + 1 < len(tokens) else len(where)
        text = where[pos:end].strip()
        if kind == duckdb.token_type.comment:
            raise fail("comments are not allowed")
        if kind == duckdb.token_type.operator:
            if ";" in text:
                raise fail("';' is not allowed")
            depth += text.count("(") - text.count(")")
            if depth < 0:
                raise fail("unbalanced parentheses")
            if depth > MAX_DEPTH:
                raise fail(f"parentheses nested more than {MAX_DEPTH} deep")
    if depth != 0:
        raise fail("unbalanced parentheses")


def _is_plain_select(node: dict[str, Any]) -> bool:
    src = node.get("from_table") or {}
    return (
        node.get("type") == "SELECT_NODE"
        and src.get("type") == "BASE_TABLE"
        and src.get("table_name") == TABLE_NAME
        and len(node.get("select_list") or []) == 1
        and not node.get("modifiers")
        and not (node.get("cte_map") or {}).get("map")
        and not node.get("group_expressions")
        and not node.get("group_sets")
        and node.get("having") is None
        and node.get("qualify") is None
        and node.get("sample") is None
        and node.get("where_clause") is not None
    )


def _check(
    node: Any,
    depth: int,
    known: set[str] | None,
    state: dict[str, int],
    fail: Any,
    columns: list[str],
) -> None:
    if depth > MAX_DEPTH:
        raise fail(f"the expression is nested more than {MAX_DEPTH} levels deep")
    if not isinstance(node, dict):
        raise fail("unexpected expression")
    kind = node.get("class")

    def sub(child: Any) -> None:
        _check(child, depth + 1, known, state, fail, columns)

    if kind == "CONSTANT":
        return
    if kind == "COLUMN_REF":
        names = node.get("column_names") or []
        if len(names) == 2 and names[0].lower() == TABLE_NAME:
            names = names[1:]
        if len(names) != 1:
            raise fail(f"{'.'.join(names)} is not a column of the metadata")
        if known is not None and names[0].lower() not in known:
            raise fail(f"column {names[0]!r} not found (columns: {', '.join(columns)})")
        return
    if kind == "CONJUNCTION":
        for child in node.get("children") or []:
            sub(child)
        return
    if kind == "COMPARISON":
        sub(node.get("left"))
        sub(node.get("right"))
        return
    if kind == "BETWEEN":
        for key in ("input", "lower", "upper"):
            sub(node.get(key))
        return
    if kind == "OPERATOR":
        op = node.get("type")
        if op not in _OPERATORS:
            raise fail(f"the operator {str(op).lower()} is not allowed")
        children = node.get("children") or []
        if op in ("COMPARE_IN", "COMPARE_NOT_IN"):
            for item in children[1:]:
                if not _is_constant(item):
                    raise fail("IN (...) takes a list of constants")
        for child in children:
            sub(child)
        return
    if kind == "CASE":
        for check in node.get("case_checks") or []:
            sub(check.get("when_expr"))
            sub(check.get("then_expr"))
        sub(node.get("else_expr"))
        return
    if kind == "CAST":
        _check_type(node.get("type_expr") or {}, fail)
        sub(node.get("child"))
        return
    if kind == "COLLATE":
        sub(node.get("child"))
        return
    if kind == "FUNCTION":
        _check_function(node, state, fail)
        for arg in node.get("arguments") or []:
            sub(arg.get("expression"))
        return
    what = _NAMED_CONSTRUCTS.get(str(kind), str(kind).lower().replace("_", " "))
    raise fail(f"{what} is not allowed in a filter")


def _is_constant(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    if node.get("class") == "CONSTANT":
        return True
    return node.get("class") == "CAST" and _is_constant(node.get("child"))


def _check_type(type_expr: dict[str, Any], fail: Any) -> None:
    name = str(type_expr.get("type_name", "")).upper()
    params = type_expr.get("children") or []
    if name not in SIMPLE_TYPES or any(p.get("class") != "CONSTANT" for p in params):
        raise fail(f"CAST to {name or 'this type'} is not allowed (scalar types only)")


def _check_function(node: dict[str, Any], state: dict[str, int], fail: Any) -> None:
    name = str(node.get("function_name", ""))
    shown = name if node.get("is_operator") else f"{name}()"
    if node.get("schema") or node.get("catalog"):
        raise fail(f"qualified function names ({node.get('schema')}.{name}) are not allowed")
    if name.lower() not in ALLOWED_FUNCTIONS:
        raise fail(
            f"{shown} is not allowed in a filter "
            "(see the allowed functions in docs/index-choice.md)"
        )
    if (
        node.get("distinct")
        or node.get("filter") is not None
        or (node.get("order_bys") or {}).get("orders")
        or node.get("export_state")
    ):
        raise fail(f"{shown} takes plain arguments only")
    args = [a.get("expression") for a in node.get("arguments") or []]
    if any(a.get("name") for a in node.get("arguments") or []):
        raise fail(f"{shown} takes no named arguments")
    lname = name.lower()
    if lname in _CONCAT:
        # a || b || c nests binary calls: count the leaves
        state["concat"] += sum(1 for a in args if not _is_concat(a))
        if state["concat"] > MAX_CONCAT_OPERANDS:
            raise fail(f"string concatenation has more than {MAX_CONCAT_OPERANDS} operands")
    if lname in _REGEX:
        pattern = _string_constant(args[1] if len(args) > 1 else None)
        if pattern is None:
            raise fail(f"the pattern of {shown} must be a string constant")
        if regex_size(pattern) > MAX_REGEX_SIZE:
            raise fail(f"the pattern of {shown} is too large (counted repetitions expand it)")
    if lname in ("strftime", "strptime"):
        fmt = _string_constant(args[1] if len(args) > 1 else None)
        if fmt is None or len(fmt) > MAX_FORMAT_CHARS:
            raise fail(
                f"the format of {shown} must be a string constant of at most "
                f"{MAX_FORMAT_CHARS} characters"
            )


def _is_concat(node: Any) -> bool:
    return (
        isinstance(node, dict)
        and node.get("class") == "FUNCTION"
        and str(node.get("function_name", "")).lower() in _CONCAT
    )


def _string_constant(node: Any) -> str | None:
    if not isinstance(node, dict) or node.get("class") != "CONSTANT":
        return None
    literal = node.get("literal") or {}
    return literal.get("text") if literal.get("kind") == "STRING" else None


def regex_size(pattern: str) -> int:
    """An upper estimate of a regular expression's size with ``{n,m}`` repetitions
    expanded (RE2 compiles them into copies; matching time grows with the copies)."""
    frames: list[list[int]] = [[]]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            frames[-1].append(1)
            i += 2
            continue
        if c == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "^":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            while j < len(pattern) and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            frames[-1].append(1)
            i = j + 1
            continue
        if c == "(":
            frames.append([])
        elif c == ")" and len(frames) > 1:
            inner = frames.pop()
            frames[-1].append(sum(inner) + 1)
        elif c == "{":
            end = pattern.find("}", i)
            body = pattern[i + 1 : end] if end > 0 else ""
            counts = [p.strip() for p in body.split(",")]
            if end > 0 and counts[0].isdigit() and all(p.isdigit() or p == "" for p in counts):
                times = max(int(p) for p in counts if p)
                if frames[-1]:
                    frames[-1][-1] *= max(times, 1)
                i = end + 1
                continue
            frames[-1].append(1)
        else:
            frames[-1].append(1)
        i += 1
    return sum(sum(f) for f in frames)
