"""Cross-check an expectation suite against the columns and types ingest writes.

A suite is validated against the training snapshot, which holds exactly what ingest wrote (see
:func:`include.spec.post_ingest_schema`): raw identifiers are hashed or gone, ``batch_month`` is
added, every column has the type ``conform_batch`` gives it. A suite written against the raw
export instead (expecting the raw ``customer_id``, a dropped identifier, ``yes``/``no`` text in a
0/1 column) fails on every run; this check finds that before the first run, from the suite's JSON
alone (no Great Expectations import). A column the spec requires but the suite never mentions is
fine: a suite need not check everything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from include.spec import PipelineSpec, post_ingest_schema

# Keyword arguments through which an expectation names one column, or several.
_ONE_COLUMN = ("column", "column_A", "column_B")
_MANY_COLUMNS = ("column_list", "column_set")
# The object dtype names Great Expectations compares against the column's dtype itself.
_OBJECT_NAMES = ("object", "object_", "O")


def _named_columns(kwargs: dict) -> list[str]:
    cols: list[str] = []
    for key in _ONE_COLUMN:
        if isinstance(kwargs.get(key), str):
            cols.append(kwargs[key])
    for key in _MANY_COLUMNS:
        if isinstance(kwargs.get(key), list):
            cols.extend(c for c in kwargs[key] if isinstance(c, str))
    return list(dict.fromkeys(cols))


def _accepts_one(expected: str, actual: str) -> bool:
    """Whether GX's pandas ``expect_column_values_to_be_of_type(type_=expected)`` passes on ``actual``.

    Mirrors ``ExpectColumnValuesToBeOfType._validate_pandas`` and the ``column_values.of_type``
    metric: a typed column passes when ``numpy.dtype(expected)`` is its dtype; an object column of
    text passes for the object dtype names, or when every value is an instance of the named type.
    """
    import numpy as np

    try:
        np_type = np.dtype(expected).type
    except (TypeError, ValueError):
        np_type = None
    if actual == "str":
        if expected in _OBJECT_NAMES:
            return True
        native = str if expected.lower() in ("str", "string_types") else None
        return any(t is not None and issubclass(str, t) for t in (np_type, native))
    return np_type is not None and np_type is np.dtype(actual).type


def type_accepts(expected: Any, actual: str) -> bool:
    """Whether a suite's type name fits a post-ingest type (``a|b``: either may be written)."""
    return isinstance(expected, str) and any(_accepts_one(expected, a) for a in actual.split("|"))


def _kind_clash(values: Any, actual: str) -> list:
    """The values of a value set that a column of type ``actual`` can never hold."""
    if not isinstance(values, list) or "|" in actual:
        return []
    if actual == "str":
        return [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return [v for v in values if isinstance(v, str)]


def _load(path: Path, spec: PipelineSpec) -> tuple[list | None, str | None]:
    label = f"suite {path.name}"
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, (
            f"{label}: not found at {path}; create it, or point expectation_suite in spec "
            f"{spec.name}.yaml at the right file"
        )
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"{label}: not readable as JSON ({exc}); fix the file"
    expectations = suite.get("expectations") if isinstance(suite, dict) else None
    if not isinstance(expectations, list):
        return None, f"{label}: 'expectations' must be a list of expectations; fix the file"
    return expectations, None


def check_suite_columns(spec: PipelineSpec, suite_path: str | Path) -> list[str]:
    """Each way the suite disagrees with what ingest writes for ``spec``; empty when it agrees.

    Reported: a column ingest never writes (a raw column, a typo, a dropped identifier); an
    ``expect_table_columns_to_match_set`` with ``exact_match`` that omits a written column, or an
    ``expect_table_columns_to_match_ordered_list`` in another order; a type expectation
    (``expect_column_values_to_be_of_type`` / ``_in_type_list``) that the written type fails; a
    value set of text for a numeric column or of numbers for a text column.
    """
    path = Path(suite_path)
    expectations, error = _load(path, spec)
    if error:
        return [error]
    schema = post_ingest_schema(spec)
    written = list(schema)
    dropped = {c for c, action in spec.identifiers.items() if action == "drop"}
    problems: list[str] = []
    for i, exp in enumerate(expectations or []):
        if not isinstance(exp, dict):
            problems.append(f"suite {path.name}: expectations[{i}] is not an object; fix the file")
            continue
        etype = exp.get("type") or exp.get("expectation_type") or "?"
        kwargs: dict = exp["kwargs"] if isinstance(exp.get("kwargs"), dict) else {}
        where = f"suite {path.name}: expectations[{i}] ({etype})"
        for col in _named_columns(kwargs):
            if col in schema:
                continue
            if col in dropped:
                problems.append(
                    f"{where} names {col!r}, an identifier ingest drops (identifiers.{col}: drop in "
                    f"{spec.name}.yaml), so it never reaches the lake; remove the expectation, or set "
                    f"identifiers.{col}: hash to keep a pseudonymous key"
                )
            else:
                problems.append(
                    f"{where} names column {col!r}, which ingest never writes (it writes {written}); "
                    f"fix the name in the suite, or add the column to spec {spec.name}.yaml"
                )
        problems.extend(_table_problems(where, etype, kwargs, written))
        problems.extend(_type_problems(where, etype, kwargs, schema))
    return problems


def _table_problems(where: str, etype: str, kwargs: dict, written: list[str]) -> list[str]:
    if etype == "expect_table_columns_to_match_set" and kwargs.get("exact_match", True) is True:
        listed = kwargs.get("column_set")
        omitted = [c for c in written if isinstance(listed, list) and c not in listed]
        if omitted:
            return [
                f"{where} has exact_match true but omits {omitted}, which ingest writes, so validation "
                "always fails; add them to column_set"
            ]
    if etype == "expect_table_columns_to_match_ordered_list":
        listed = kwargs.get("column_list")
        if isinstance(listed, list) and set(listed) == set(written) and listed != written:
            return [f"{where} lists the columns in another order than ingest writes them; use {written}"]
    return []


def _type_problems(where: str, etype: str, kwargs: dict, schema: dict[str, str]) -> list[str]:
    col = kwargs.get("column")
    problems: list[str] = []
    if etype == "expect_column_values_to_be_of_type" and col in schema:
        expected = kwargs.get("type_")
        if expected is not None and not type_accepts(expected, schema[col]):
            problems.append(
                f"{where} expects {col!r} of type {expected!r}, but ingest writes it as "
                f"{schema[col]}; expect type_ {schema[col].split('|')[0]!r}, or change the column's type "
                "in the spec"
            )
    if etype == "expect_column_values_to_be_in_type_list" and col in schema:
        listed = kwargs.get("type_list")
        if isinstance(listed, list) and not any(type_accepts(t, schema[col]) for t in listed):
            problems.append(
                f"{where} expects {col!r} to be one of {listed}, but ingest writes it as {schema[col]}; "
                f"add {schema[col].split('|')[0]!r} to type_list, or change the column's type in the spec"
            )
    if col in schema:
        clash = _kind_clash(kwargs.get("value_set"), schema[col])
        if clash:
            problems.append(_clash_message(where, col, clash, schema[col]))
    pairs = kwargs.get("value_pairs_set")
    if isinstance(pairs, list):
        for side, key in ((0, "column_A"), (1, "column_B")):
            other = kwargs.get(key)
            if other in schema:
                values = [p[side] for p in pairs if isinstance(p, list | tuple) and len(p) == 2]
                clash = _kind_clash(values, schema[other])
                if clash:
                    problems.append(_clash_message(where, other, clash, schema[other]))
    return problems


def _clash_message(where: str, col: str, clash: list, actual: str) -> str:
    if actual == "str":
        return (
            f"{where} expects numbers {clash[:3]} in {col!r}, but ingest writes it as text (str); "
            "quote them as the text the export holds"
        )
    return (
        f"{where} expects text {clash[:3]} in {col!r}, but ingest writes it as {actual}; use the numbers "
        "ingest writes (binary columns are 0/1)"
    )
