"""Validate a training snapshot against a Great Expectations suite and render Data Docs.

Pure logic: no Airflow import, and Great Expectations / pandas are imported inside the functions
because importing GX alone takes several seconds.

GX runs in an *ephemeral* (in-memory) Data Context, so no ``gx/`` project folder appears in the
repository; the only files written are the ones this module puts under ``out_dir``:

* ``validation_result.json`` - the full GX validation result (``SUMMARY`` result format);
* ``data_docs/index.html`` - GX's own Data Docs site, with the suite page and the validation page.

``validate_snapshot`` never raises because the *data* failed: the caller logs the artifacts first
and then calls :func:`raise_for_failures`, so a failed batch leaves its evidence behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from include import storage

log = logging.getLogger(__name__)

RESULT_FILE = "validation_result.json"
DOCS_DIR = "data_docs"
_SITE_NAME = "slipway"
# An expectation whose ``meta`` sets this key never has its sample values copied into the result
# JSON, the Data Docs or the error message: the customer_id checks exist to catch a raw (PII)
# identifier slipping past the hashing step, and the report must not then publish it.
REDACT_META_KEY = "redact_unexpected_values"
_MAX_SAMPLE = 5
_MAX_LIST = 25
_MAX_STR = 120
_MAX_LINES = 20


class DataValidationError(RuntimeError):
    """Raised by raise_for_failures; message lists each failed expectation readably."""


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def validate_snapshot(snapshot_uri: str, suite_path: str | Path, out_dir: str | Path) -> dict:
    """Validate the Parquet snapshot at ``snapshot_uri`` against the suite at ``suite_path``.

    Writes ``validation_result.json`` and a Data Docs site (``data_docs/index.html``) into
    ``out_dir`` and returns a small JSON-serialisable summary::

        {"success", "evaluated", "successful", "failed": [{"expectation", "column", "kwargs",
         "observed"}], "result_path", "docs_path", "suite", "suite_path"}

    ``column`` is the column the expectation checks, ``"A, B"`` for a column pair, ``None`` for
    table-level expectations. A failed suite does not raise (see :func:`raise_for_failures`); a
    missing or invalid suite file raises :class:`DataValidationError`.
    """
    import io

    import pandas as pd

    suite_path = Path(suite_path)
    out_dir = Path(out_dir)
    suite = _load_suite(suite_path)  # fail on a broken suite before paying for the data read
    out_dir.mkdir(parents=True, exist_ok=True)

    frame = pd.read_parquet(io.BytesIO(storage.read_bytes(snapshot_uri)))
    # Copy-on-write lets pandas hand GX's many per-metric column slices out as lazy views rather
    # than defensive copies; scoped so the setting does not leak into other code in this process.
    with pd.option_context("mode.copy_on_write", True):
        run_name = Path(snapshot_uri.rstrip("/")).stem or "snapshot"
        validation, docs_index = _run_gx(frame, suite, out_dir, run_name)

    result_path = out_dir / RESULT_FILE
    storage.write_bytes(
        str(result_path), json.dumps(validation.to_json_dict(), indent=2, sort_keys=True).encode()
    )

    stats = validation.statistics
    # GX returns results in metric-graph order; the suite's order (table, then column by column)
    # reads better and stays stable from run to run.
    position = {e.id: i for i, e in enumerate(suite.expectations)}
    failed = [
        _summarise(r)
        for r in sorted(validation.results, key=lambda r: position.get(r.expectation_config.id, 1 << 30))
        if not r.success
    ]
    return {
        "success": bool(validation.success),
        "evaluated": int(stats["evaluated_expectations"]),
        "successful": int(stats["successful_expectations"]),
        "failed": failed,
        "result_path": str(result_path),
        "docs_path": str(docs_index),
        "suite": suite.name,
        "suite_path": str(suite_path),
    }


def raise_for_failures(result: dict, suite_name: str) -> None:
    """Raise :class:`DataValidationError` listing each failed expectation, unless ``result`` passed."""
    if result.get("success"):
        return
    failed = result.get("failed", [])
    lines = [f"  - {_describe(f)}" for f in failed[:_MAX_LINES]]
    if len(failed) > _MAX_LINES:
        lines.append(f"  ... and {len(failed) - _MAX_LINES} more (see {result.get('result_path')})")
    suite_file = result.get("suite_path") or f"include/expectations/{suite_name}.json"
    raise DataValidationError(
        f"Data validation failed: {len(failed)} of {result.get('evaluated', '?')} expectations "
        f"in suite '{suite_name}' failed:\n"
        + "\n".join(lines)
        + f"\nFix the batch in the landing zone (or the suite in {suite_file} if the data is right)"
        " and re-run."
    )


# --------------------------------------------------------------------------------------------
# Suite loading
# --------------------------------------------------------------------------------------------


def _load_suite(path: Path):
    """Parse the suite file strictly: GX would silently drop an expectation of unknown type."""
    from great_expectations.core import ExpectationSuite
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    fix = 'fix the file (GX 1.x format: {"name": ..., "expectations": [{"type": ..., "kwargs": ...}]})'
    if not path.is_file():
        raise DataValidationError(
            f"suite {path}: file not found; create it or point the pipeline spec at the right file"
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataValidationError(f"suite {path}: not valid JSON ({exc}); {fix}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise DataValidationError(f"suite {path}: needs a non-empty string 'name'; {fix}")
    entries = raw.get("expectations")
    if not isinstance(entries, list) or not entries:
        raise DataValidationError(f"suite {path}: 'expectations' must be a non-empty list; {fix}")

    expectations = []
    for i, entry in enumerate(entries):
        label = entry.get("type", "?") if isinstance(entry, dict) else "?"
        try:
            if not isinstance(entry, dict):
                raise TypeError("each expectation must be an object")
            # Built one by one so an error names the entry; ExpectationSuite(**raw) would log
            # and skip an unknown type, leaving a suite that silently checks less.
            # Ids are dropped: a suite exported from a GX project carries them, and GX refuses
            # an expectation that already "belongs" to another suite.
            config = {k: v for k, v in entry.items() if k != "id"}
            expectations.append(ExpectationConfiguration(**config).to_domain_obj())
        except Exception as exc:  # GX raises pydantic, TypeError and its own errors here
            detail = " ".join(str(exc).split())
            raise DataValidationError(
                f"suite {path}: expectations[{i}] ({label}) is invalid: {detail}; {fix}"
            ) from exc
    try:
        return ExpectationSuite(**{**raw, "id": None, "expectations": expectations})
    except (TypeError, ValueError) as exc:
        raise DataValidationError(f"suite {path}: {exc}; {fix}") from exc


# --------------------------------------------------------------------------------------------
# Running GX
# --------------------------------------------------------------------------------------------


def _run_gx(frame, suite, out_dir: Path, run_name: str):
    """Validate ``frame`` in an ephemeral context; build Data Docs into ``out_dir/data_docs``."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # Docs are rendered into a fresh sibling folder and swapped in at the end, so a re-run
    # replaces the previous site instead of accumulating stale validation pages next to it.
    build_dir = Path(tempfile.mkdtemp(prefix=f".{DOCS_DIR}.", dir=out_dir))
    try:
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            data_docs_sites={
                _SITE_NAME: {
                    "class_name": "SiteBuilder",
                    "show_how_to_buttons": False,
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(build_dir),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                }
            },
            analytics_enabled=False,  # a pipeline task must not phone home
            progress_bars=ProgressBarsConfig(globally=False),  # tqdm bars garble task logs
        )
        context = gx.get_context(mode="ephemeral", project_config=config)
        suite = context.suites.add(suite)
        batch_definition = (
            context.data_sources.add_pandas("snapshot")
            .add_dataframe_asset("snapshot")
            .add_batch_definition_whole_dataframe("whole")
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{suite.name}__snapshot", data=batch_definition, suite=suite)
        )

        started = time.perf_counter()
        validation = definition.run(
            batch_parameters={"dataframe": frame},
            result_format="SUMMARY",
            run_id=RunIdentifier(run_name=run_name),
        )
        validated = time.perf_counter()
        log.info(
            "validated %d rows against suite %r: %d of %d expectations passed in %.1fs",
            len(frame),
            suite.name,
            validation.statistics["successful_expectations"],
            validation.statistics["evaluated_expectations"],
            validated - started,
        )

        if _redact(validation):
            # The run already stored the unredacted result; overwrite it before rendering.
            store = context.validation_results_store
            for key in store.list_keys():
                store.set(key, validation)

        context.build_data_docs(site_names=[_SITE_NAME])
        docs_dir = out_dir / DOCS_DIR
        if docs_dir.exists():
            shutil.rmtree(docs_dir)
        build_dir.rename(docs_dir)
        log.info("Data Docs built in %.1fs at %s", time.perf_counter() - validated, docs_dir)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    return validation, docs_dir / "index.html"


def _redact(validation) -> bool:
    """Mask sample values of expectations flagged with ``REDACT_META_KEY``; True if any were."""
    changed = False
    for r in validation.results:
        if not (r.expectation_config.meta or {}).get(REDACT_META_KEY) or not r.result:
            continue
        for key in ("partial_unexpected_list", "unexpected_list"):
            if r.result.get(key):
                r.result[key] = [_mask(v) for v in r.result[key]]
                changed = True
        for key in ("partial_unexpected_counts", "unexpected_counts"):
            if r.result.get(key):
                r.result[key] = [{**c, "value": _mask(c.get("value"))} for c in r.result[key]]
                changed = True
    return changed


def _mask(value: Any) -> Any:
    # Keep the shape (length) of the value: "10 chars" next to a 64-char rule is the useful clue.
    return value if value is None else f"<redacted {len(str(value))}-char value>"


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def _summarise(r) -> dict:
    """One failed expectation as a small JSON-safe dict."""
    from great_expectations.util import convert_to_json_serializable

    config = r.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    if "column" in kwargs:
        column = kwargs["column"]
    elif "column_A" in kwargs:
        column = f"{kwargs['column_A']}, {kwargs['column_B']}"
    else:
        column = None

    res = r.result or {}
    observed: dict[str, Any] = {}
    error = _exception_message(r.exception_info)
    if error:
        observed["error"] = error
    for key in ("observed_value", "unexpected_count", "unexpected_percent", "missing_count"):
        if res.get(key) is not None:
            observed[key] = res[key]
    if res.get("partial_unexpected_list"):
        observed["partial_unexpected_list"] = res["partial_unexpected_list"][:_MAX_SAMPLE]
    mismatched = (res.get("details") or {}).get("mismatched")
    if mismatched:
        observed["mismatched"] = mismatched
    return {
        "expectation": config.type,
        "column": column,
        "kwargs": _shorten(convert_to_json_serializable(kwargs)),
        "observed": _shorten(convert_to_json_serializable(observed)),
    }


def _exception_message(info: Any) -> str | None:
    # GX reports either one flat {"raised_exception": ...} dict or one such dict per failed metric.
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _shorten(value: Any) -> Any:
    """Cap list and string sizes so the summary stays small enough for XCom and logs."""
    if isinstance(value, dict):
        return {k: _shorten(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_shorten(v) for v in value[:_MAX_LIST]]
        if len(value) > _MAX_LIST:
            items.append(f"... {len(value) - _MAX_LIST} more")
        return items
    if isinstance(value, str) and len(value) > _MAX_STR:
        return value[: _MAX_STR - 3] + "..."
    return value


def _describe(failure: dict) -> str:
    """``expect_x(col, k=v): what was seen`` for one entry of ``result["failed"]``."""
    skip = {"column", "column_A", "column_B", "ignore_row_if"}
    args = [failure["column"]] if failure.get("column") else []
    args += [f"{k}={_brief(v)}" for k, v in failure.get("kwargs", {}).items() if k not in skip]
    obs = failure.get("observed", {})
    if obs.get("error"):
        what = f"could not be evaluated: {obs['error']}"
    elif obs.get("mismatched"):
        parts = [f"{k} columns {_brief(v)}" for k, v in sorted(obs["mismatched"].items()) if v]
        what = "; ".join(parts) or "column set differs"
    elif obs.get("unexpected_count") is not None:
        n = obs["unexpected_count"]
        noun = "null" if failure["expectation"] == "expect_column_values_to_not_be_null" else "unexpected"
        what = f"{n} {noun} value{'s' if n != 1 else ''}"
        if obs.get("unexpected_percent") is not None:
            what += f" ({obs['unexpected_percent']:.2g}%)"
        # Distinct examples only: five copies of the same redaction marker say nothing more.
        sample = list({repr(v): v for v in obs.get("partial_unexpected_list") or []}.values())
        if any(v is not None for v in sample):
            what += f", e.g. {_brief(sample)}"
    elif "observed_value" in obs:
        what = f"observed {_brief(obs['observed_value'])}"
    else:
        what = "failed"
    return f"{failure['expectation']}({', '.join(args)}): {what}"


def _brief(value: Any, limit: int = 6) -> str:
    if isinstance(value, list) and len(value) > limit:
        shown = ", ".join(repr(v) for v in value[:limit])
        return f"[{shown}, ... ({len(value)} items)]"
    return repr(value)
