"""Bench: scikit-learn vs onnxruntime on the demo model, single-row latency and 10k-row throughput.

``python -m benchmarks.scoring`` trains the telco model on the full demo data (or loads
``--model-uri``), converts and optimises it to ONNX, and prints one table measured in one run.
Numbers measured while other work runs on the machine are noisy; the header shows the load.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from include.spec import CLASSIFIERS, PipelineSpec, load_spec

DEFAULT_SPEC = Path(__file__).resolve().parents[1] / "include" / "pipelines" / "telco_churn.yaml"
PII_KEY = b"slipway-bench-pii-key"  # fixed: the bench must not depend on the environment's key


def _spec(path: str | Path, estimator: str | None) -> PipelineSpec:
    spec = load_spec(path)
    if estimator and estimator != spec.estimator.kind:
        # The spec's params belong to its own estimator (C, max_iter...): start from the defaults.
        spec = spec.model_copy(
            update={"estimator": spec.estimator.model_copy(update={"kind": estimator, "params": {}})}
        )
    return spec


def _train_demo(spec: PipelineSpec, workdir: str) -> tuple[str, str, int]:
    from include import storage
    from include.demo.data import load_wa_churn
    from include.frames import to_parquet_bytes
    from include.tasks.train.fit import train_model
    from include.tasks.train.ingest import conform_batch

    raw = load_wa_churn().astype(str).replace({"nan": None})
    df = conform_batch(raw, spec, "demo://wa_churn", "2025-01", PII_KEY)
    snap = storage.write_bytes(storage.path_to_uri(Path(workdir) / "snapshot.parquet"), to_parquet_bytes(df))
    out = train_model(spec, snap, storage.path_to_uri(Path(workdir) / "model"))
    return out["model_uri"], out["splits"]["test"], len(df)


def _test_uri_for(model_uri: str) -> str:
    """``train_model`` writes ``test.parquet`` next to ``model.skops``."""
    from include import storage

    uri = model_uri.rsplit("/", 1)[0] + "/test.parquet"
    if not storage.exists(uri):
        raise SystemExit(f"no test split at {uri}: pass --test-uri with the held-out rows for {model_uri}")
    return uri


def _throughput(fn, rows: int, runs: int) -> float:
    """Rows per second: median over ``runs`` timed calls after one untimed call."""
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return rows / statistics.median(times)


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:,.{digits}f}"


def run(args) -> str:
    """Measure everything and return the report text."""
    from importlib.metadata import version

    import numpy as np

    from include.frames import feature_frame, read_parquet
    from include.model_files import onnx_inputs, onnx_session, predict_proba_onnx, read_model
    from include.tasks.train.onnx_export import _parity, _single_rows, convert, latency, optimise

    started = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    spec = _spec(args.spec, args.estimator)
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as tmp:
        if args.model_uri:
            model_uri, test_uri, trained_on = (
                args.model_uri,
                args.test_uri or _test_uri_for(args.model_uri),
                None,
            )
        else:
            model_uri, test_uri, trained_on = _train_demo(spec, tmp)
        model = read_model(model_uri)
        X = feature_frame(read_parquet(test_uri), spec)
    t0 = time.perf_counter()
    onnx_bytes = optimise(convert(spec, model))
    convert_s = time.perf_counter() - t0
    session = onnx_session(onnx_bytes, threads=1)
    parity = _parity(predict_proba_onnx(session, spec, X), model.predict_proba(X)[:, 1], 0.5)

    # Single rows: different test rows per call, inputs prebuilt on both sides.
    frames = [X.iloc[[i]] for i in range(min(args.sklearn_calls, len(X)))]
    skl_lat = latency(model.predict_proba, frames, args.sklearn_calls)
    feeds = _single_rows(spec, X, len(X))
    ort_lat = latency(lambda r: session.run(None, r), feeds, args.onnx_calls)

    # Batch: 10k rows sampled with replacement from the test split (seeded).
    rng = np.random.default_rng(args.seed)
    batch = X.iloc[rng.integers(0, len(X), args.batch_rows)].reset_index(drop=True)
    t0 = time.perf_counter()
    batch_feeds = onnx_inputs(spec, batch)
    feeds_ms = (time.perf_counter() - t0) * 1000
    skl_rps = _throughput(lambda: model.predict_proba(batch), len(batch), args.batch_runs)
    ort_rps = _throughput(lambda: session.run(None, batch_feeds), len(batch), args.batch_runs)
    cores = os.cpu_count() or 1
    session_n = onnx_session(onnx_bytes, threads=cores)
    ort_n_rps = _throughput(lambda: session_n.run(None, batch_feeds), len(batch), args.batch_runs)

    est = type(model.steps[-1][1] if hasattr(model, "steps") else model).__name__
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    libs = ", ".join(
        f"{p} {version(p)}" for p in ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy", "pandas")
    )
    in_types = {}
    for i in session.get_inputs():
        in_types[i.type] = in_types.get(i.type, 0) + 1
    head = [
        f"Slipway ONNX bench: pipeline {spec.name}, estimator {spec.estimator.kind} ({est})",
        f"machine: {cores} cores (usable {usable}), load average {load:.2f} at start; "
        f"Python {platform.python_version()} on {platform.machine()}",
        f"libraries: {libs}",
        "model: "
        + (f"trained here on {trained_on:,} demo rows" if trained_on else f"loaded from {model_uri}")
        + f"; test split {len(X):,} rows; ONNX inputs "
        + ", ".join(f"{n} x {t}" for t, n in in_types.items())
        + f"; convert+optimise {convert_s:.2f} s",
        f"parity on all {parity['rows']:,} test rows: max |p_onnx - p_sklearn| = {parity['max_abs_diff']:.2g}, "
        f"label agreement at 0.5 = {parity['label_agreement']:.4f} ({parity['label_ties']} exact ties)",
        "",
    ]
    w = 34
    table = [
        f"{'':<{w}}{'1-row p50 ms':>14}{'1-row p99 ms':>14}{'10k batch rows/s':>19}",
        f"{'scikit-learn predict_proba':<{w}}{_fmt(skl_lat['p50']):>14}{_fmt(skl_lat['p99']):>14}"
        f"{_fmt(skl_rps, 0):>19}",
        f"{'onnxruntime (1 thread)':<{w}}{_fmt(ort_lat['p50']):>14}{_fmt(ort_lat['p99']):>14}"
        f"{_fmt(ort_rps, 0):>19}",
        f"{f'onnxruntime ({cores} threads), batch':<{w}}{'':>14}{'':>14}{_fmt(ort_n_rps, 0):>19}",
        f"{'onnxruntime vs scikit-learn':<{w}}"
        f"{_fmt(skl_lat['p50'] / ort_lat['p50'], 1) + 'x':>14}"
        f"{_fmt(skl_lat['p99'] / ort_lat['p99'], 1) + 'x':>14}"
        f"{_fmt(ort_rps / skl_rps, 2) + 'x':>19}",
    ]
    notes = [
        "",
        f"1-row: {args.sklearn_calls} scikit-learn calls on a prebuilt one-row DataFrame, {args.onnx_calls} "
        "onnxruntime session.run calls on prebuilt (1, 1) inputs; each on a different test row, "
        "20 warm-up calls excluded.",
        f"batch: {args.batch_rows:,} test rows sampled with replacement (seed {args.seed}), median of "
        f"{args.batch_runs} runs; building the ONNX inputs from the DataFrame took {feeds_ms:.1f} ms "
        "(not in the rows/s). Ratios are speed-ups of onnxruntime (>1 = faster).",
        f"total bench time {time.perf_counter() - started:.1f} s",
    ]
    return "\n".join(head + table + notes)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m benchmarks.scoring [--estimator KIND] [--model-uri URI]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scoring", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(DEFAULT_SPEC), help="pipeline spec (default: telco_churn)")
    parser.add_argument("--estimator", choices=sorted(CLASSIFIERS), help="train this estimator instead")
    parser.add_argument("--model-uri", help="bench this skops model instead of training one")
    parser.add_argument("--test-uri", help="held-out rows for --model-uri (default: its test.parquet)")
    parser.add_argument("--sklearn-calls", type=int, default=200)
    parser.add_argument("--onnx-calls", type=int, default=2000)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--batch-runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    print(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
