"""Bench: batch scoring of a population, Slipway's chunked ONNX scorer against scikit-learn's predict_proba.

``python -m benchmarks.batch`` trains the telco model on the demo data, writes populations of the
telco schema (1 and 10 million rows by default, sampled from the demo rows with unique customer
ids, as Parquet) and scores each twice in the same run, every engine in its own process so that its
peak memory (``VmHWM``) is its own:

* **scoring**: from the same chunk as read, scikit-learn (the typed frame, then ``predict_proba``)
  against Slipway (the service's row checks and the graph's inputs, then onnxruntime), rows/s;
* **end to end**: read, check, hash the entity key, score, decide and write the scores file
  (:func:`include.tasks.score.population.score_population`, what ``<pipeline>__score`` runs) against
  read, type, ``predict_proba`` and write with scikit-learn, seconds and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.scoring import DEFAULT_SPEC, PII_KEY, _spec, _train_demo

CHUNK_ROWS = 50_000
SCORING_ROWS = 1_000_000


def _population(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` rows of the demo's raw telco columns, sampled with replacement, ids made unique."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from include.demo.data import load_wa_churn

    raw = load_wa_churn().reset_index(drop=True)
    raw = raw.drop(columns=[c for c in ("churn",) if c in raw.columns])
    rng = np.random.default_rng(seed)
    writer = None
    step = 500_000
    for start in range(0, rows, step):
        n = min(step, rows - start)
        part = raw.iloc[rng.integers(0, len(raw), n)].reset_index(drop=True)
        part["customer_id"] = [f"C{start + i:010d}" for i in range(n)]
        table = pa.Table.from_pandas(part, preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="snappy")
        writer.write_table(table, row_group_size=100_000)
    assert writer is not None
    writer.close()


def _model(spec, workdir: Path) -> tuple[str, Path]:
    """Train the demo model; write its optimised ONNX graph to ``workdir/onnx/model.onnx``."""
    from include.model_files import read_model
    from include.tasks.train.onnx_export import convert, optimise

    model_uri, _, _ = _train_demo(spec, str(workdir))
    folder = workdir / "onnx"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(optimise(convert(spec, read_model(model_uri))))
    return model_uri, folder


def _peak_mib() -> float:
    """This process's peak resident memory: ``VmHWM`` (the kernel keeps it per address space, so it
    starts afresh at exec, unlike ``ru_maxrss``, which a child inherits from the process that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args) -> None:
    """One engine over one population, in this process; prints a JSON line."""
    import hashlib

    import numpy as np

    from include.frames import feature_frame
    from include.model_files import load_onnx, read_model
    from include.tasks.score.population import read_chunks, score_population, scored_chunks

    spec = _spec(args.spec, None)
    columns = [*spec.features.all, "customer_id"]
    onnx_dir = Path(args.onnx_dir)
    sha = hashlib.sha256((onnx_dir / "model.onnx").read_bytes()).hexdigest()
    model = load_onnx(spec.name, 1, onnx_dir, sha, 0.5)
    if args.engine == "slipway_2threads":  # the alternative measured beside it: two intra-op threads
        import dataclasses

        from include.model_files import onnx_session

        model = dataclasses.replace(
            model, session=onnx_session((onnx_dir / "model.onnx").read_bytes(), threads=2)
        )
    out = {"engine": args.engine, "mode": args.mode}
    pop = Path(args.population)
    t0 = time.perf_counter()
    if args.mode == "scoring":
        skl = read_model(args.model_uri) if args.engine == "sklearn" else None
        # The first million rows in memory first: the scoring is timed, not the reading (rows/s does
        # not depend on the population's size; the end-to-end runs read everything).
        chunks = []
        for chunk in read_chunks(
            pop,
            "parquet",
            columns,
            CHUNK_ROWS,
            arrow=skl is None,
            dictionary=() if skl else tuple(spec.features.categorical),
        ):
            chunks.append(chunk)
            if len(chunks) * CHUNK_ROWS >= SCORING_ROWS:
                break
        rows = sum(len(c) for c in chunks)
        t = time.perf_counter()
        if skl is not None:
            for chunk in chunks:
                skl.predict_proba(feature_frame(chunk, spec))[:, 1]
        else:
            for _ in scored_chunks(spec, model, iter(chunks)):
                pass
        spent = time.perf_counter() - t
        out |= {"rows": rows, "seconds": spent}
    elif args.engine.startswith("slipway"):
        with tempfile.TemporaryDirectory(prefix="slipway-batch-") as tmp:
            res = score_population(spec, model, pop, "parquet", Path(tmp), "2025-12", PII_KEY, CHUNK_ROWS)
            out |= {"rows": res.rows, "scored": res.scored, "timings": res.timings}
            out["bytes"] = res.scores_path.stat().st_size
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        skl = read_model(args.model_uri)
        rows = 0
        with tempfile.TemporaryDirectory(prefix="slipway-batch-") as tmp:
            writer = None
            for chunk in read_chunks(pop, "parquet", columns, CHUNK_ROWS, arrow=False):
                p = skl.predict_proba(feature_frame(chunk, spec))[:, 1]
                table = pa.table(
                    {"customer_id": chunk["customer_id"], "probability": p, "decision": p >= 0.5}
                )
                writer = writer or pq.ParquetWriter(Path(tmp) / "scores.parquet", table.schema)
                writer.write_table(table)
                rows += len(chunk)
            if writer is not None:
                writer.close()
        out |= {"rows": rows}
    if "seconds" not in out:
        out["seconds"] = time.perf_counter() - t0
    out["peak_mib"] = _peak_mib()
    out["rows_per_s"] = out["rows"] / out["seconds"] if out["seconds"] else float("nan")
    _ = np
    print(json.dumps(out))


def _run_child(argv: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.batch", "--child", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench child {argv} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args) -> str:
    started = time.perf_counter()
    load = os.getloadavg()[0]
    spec = _spec(args.spec, None)
    lines = [
        f"Slipway batch-scoring bench: pipeline {spec.name}, estimator {spec.estimator.kind}, chunks of "
        f"{CHUNK_ROWS:,} rows, Parquet input",
        f"machine: {os.cpu_count()} cores, load average {load:.2f} at start; Python {platform.python_version()}",
        "",
        f"{'rows':>12} {'measure':<26}{'scikit-learn':>16}{'Slipway':>16}{'ratio':>9}",
    ]
    with tempfile.TemporaryDirectory(prefix="slipway-batch-bench-") as tmp:
        work = Path(tmp)
        model_uri, onnx_dir = _model(spec, work)
        for rows in args.rows:
            pop = work / f"population-{rows}.parquet"
            t = time.perf_counter()
            _population(pop, rows)
            made = time.perf_counter() - t
            common = [
                "--spec",
                args.spec,
                "--population",
                str(pop),
                "--onnx-dir",
                str(onnx_dir),
                "--model-uri",
                model_uri,
            ]
            res = {
                (engine, mode): _run_child([*common, "--engine", engine, "--mode", mode])
                for mode in ("scoring", "end_to_end")
                for engine in ("sklearn", "slipway", "slipway_2threads")
            }
            s_skl, s_slw = res["sklearn", "scoring"], res["slipway", "scoring"]
            e_skl, e_slw = res["sklearn", "end_to_end"], res["slipway", "end_to_end"]
            lines += [
                f"{rows:>12,} {'scoring rows/s':<26}{s_skl['rows_per_s']:>16,.0f}{s_slw['rows_per_s']:>16,.0f}"
                f"{s_slw['rows_per_s'] / s_skl['rows_per_s']:>8.2f}x",
                f"{'':>12} {'end to end seconds':<26}{e_skl['seconds']:>16.1f}{e_slw['seconds']:>16.1f}"
                f"{e_skl['seconds'] / e_slw['seconds']:>8.2f}x",
                f"{'':>12} {'end to end peak MiB':<26}{e_skl['peak_mib']:>16.0f}{e_slw['peak_mib']:>16.0f}",
                f"{'':>12} {'2 onnxruntime threads':<26}{'scoring rows/s':>16}"
                f"{res['slipway_2threads', 'scoring']['rows_per_s']:>16,.0f}"
                f"{res['slipway_2threads', 'scoring']['rows_per_s'] / s_skl['rows_per_s']:>8.2f}x",
                f"{'':>12} {'2 onnxruntime threads':<26}{'end to end seconds':>16}"
                f"{res['slipway_2threads', 'end_to_end']['seconds']:>16.1f}"
                f"{e_skl['seconds'] / res['slipway_2threads', 'end_to_end']['seconds']:>8.2f}x",
                f"{'':>12} {'Slipway stages (s)':<26}"
                + ", ".join(f"{k} {v:.1f}" for k, v in sorted(e_slw.get("timings", {}).items()))
                + f"; population written in {made:.0f} s",
            ]
            pop.unlink()
    lines += [
        "",
        "scoring: from the same chunk as read; scikit-learn types it (feature_frame) and calls predict_proba,",
        "Slipway runs the service's row checks (building the graph's inputs) and onnxruntime (1 thread, as",
        "the product does; '2 onnxruntime threads': the same with two intra-op threads, the alternative).",
        "end to end: Slipway reads, checks, hashes the entity key (HMAC), scores, decides and writes scores",
        "and rejects; scikit-learn reads, types, scores and writes id, probability and decision. Peak memory:",
        "the engine's whole process (VmHWM), libraries included. Targets: scoring >= 3x, 10M rows end",
        "to end < 120 s and < 1024 MiB.",
        f"total bench time {time.perf_counter() - started:.0f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(DEFAULT_SPEC))
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--engine", choices=("sklearn", "slipway", "slipway_2threads"), help=argparse.SUPPRESS
    )
    parser.add_argument("--mode", choices=("scoring", "end_to_end"), help=argparse.SUPPRESS)
    parser.add_argument("--population", help=argparse.SUPPRESS)
    parser.add_argument("--onnx-dir", help=argparse.SUPPRESS)
    parser.add_argument("--model-uri", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return
    print(run(args))


if __name__ == "__main__":
    main()
