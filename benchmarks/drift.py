"""Bench: the hourly drift check on 1M logged rows x every feature, Slipway's lean path vs Evidently.

``python -m benchmarks.drift`` builds, in a temp folder:

* the **reference**: the demo table (7,043 customers) as ingest writes it; its training split is
  binned once (:func:`include.tasks.monitor.drift.build_profile`), as the monitor does per model version;
* the **interval**: ``--rows`` (1,000,000) request rows drawn from the same table, half of them
  with a 30% price rise and every third contract moved to month-to-month, written to a prediction
  log (SQLite by default; ``--db-url postgresql://...`` for PostgreSQL) as the service writes them
  (inputs as JSON text, one row per prediction).

Then, each in its own process (wall time and peak resident memory of that process):

1. **lean** (what ``<pipeline>__monitor``'s ``check_drift`` runs every hour): stream the interval's
   rows from the log in chunks, count them into the reference's bins, PSI per feature and for the
   scores, every check of ``drift_checks``, and the seeded sample of ``report_sample_rows`` rows the
   stored report is drawn from;
2. **Evidently, all rows** (the peer): the same rows read into a DataFrame and Evidently's
   ``DataDriftPreset`` against the reference (its default tests per column);
3. **Evidently, sample** (the report stored with each monitor run): a 5,000-row sample.

Targets for the path the hourly check uses: under 10 s and under 1 GiB on 1M rows; reported, never
enforced (the table says met or missed for every path, the peers included).
Scores are drawn from one Beta distribution for both sides (no model is trained here): the bench
measures the check's cost, which does not depend on what the scores are.
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
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from include.tasks.rollout.infra_validation import to_request_rows

PIPELINE = "telco_churn"
START = datetime(2026, 3, 1, tzinfo=UTC)
TARGET_S, TARGET_GIB = 10.0, 1.0


def _spec():
    from include.spec import load_pipeline

    return load_pipeline(PIPELINE)


def _snapshot(base: Path):
    """The demo table as ingest writes it (identifiers hashed, splits assigned)."""
    import pandas as pd

    from include.demo.data import load_wa_churn
    from include.tasks.train.ingest import conform_batch

    raw = load_wa_churn().astype(str).replace({"nan": None})
    frame = conform_batch(raw, _spec(), "mem://", "2025-01", b"bench-key")
    path = base / "snapshot.parquet"
    frame.to_parquet(path)
    return pd.read_parquet(path), path


def prepare(base: Path, rows: int, db_url: str) -> dict:
    """Write the reference profile and ``rows`` logged predictions; return their locations."""
    import numpy as np
    import orjson

    from include.database import database
    from include.prediction_log.writer import PredictionLog
    from include.tasks.monitor.drift import build_profile

    spec = _spec()
    snapshot, _ = _snapshot(base)
    rng = np.random.default_rng(0)
    profile = build_profile(spec, 1, snapshot, rng.beta(2, 5, size=2000))
    (base / "profile.json").write_bytes(profile.to_json())
    log = PredictionLog(db_url)
    log.start()  # creates the schema
    log.close()
    pool = to_request_rows(snapshot, spec)
    drifted = [
        {
            **r,
            "monthly_charges": (r["monthly_charges"] or 0) * 1.3,
            "contract": "Month-to-month" if i % 3 else r["contract"],
        }
        for i, r in enumerate(pool)
    ]
    encoded = [orjson.dumps(r).decode() for r in pool], [orjson.dumps(r).decode() for r in drifted]
    picks = rng.integers(0, len(pool), size=rows)
    scores = rng.beta(2, 5, size=rows)
    step = 3600.0 / rows
    db = database(db_url)
    conn = db.connect()
    cur = conn.cursor()
    p = db.param
    sql = (
        "INSERT INTO slipway_predictions (request_id, variant, pipeline, entity_key, model_version, served, inputs, "
        f"probability, decision, latency_ms, created_at) VALUES ({', '.join([p] * 11)})"
    )
    # Only the setup, not what is measured: the service's durable commits (an fsync each) took about
    # 3 minutes for 1M rows here, ~30 s without; PostgreSQL's executemany is one round trip per row,
    # execute_values one per thousand.
    insert = cur.executemany
    if db.dialect == "sqlite":
        conn.execute("PRAGMA synchronous=OFF")
    else:
        from psycopg2.extras import execute_values

        values_sql = sql.split(" VALUES ")[0] + " VALUES %s"

        def insert(_sql, batch):
            execute_values(cur, values_sql, batch, page_size=1000)

    chunk = 50_000
    for lo in range(0, rows, chunk):
        batch = []
        for i in range(lo, min(rows, lo + chunk)):
            at = (START + timedelta(seconds=i * step)).isoformat(timespec="microseconds")
            batch.append(
                (
                    uuid.uuid4().hex,
                    "champion",
                    PIPELINE,
                    None,
                    1,
                    1,
                    encoded[i % 2][picks[i]],
                    float(scores[i]),
                    int(scores[i] >= 0.5),
                    0.05,
                    at,
                )
            )
        insert(sql, batch)
        conn.commit()
    cur.close()
    conn.close()
    return {"profile": str(base / "profile.json"), "snapshot": str(base / "snapshot.parquet")}


def _peak_gib() -> float:
    """This process's peak resident memory. On Linux its own high-water mark: ``ru_maxrss`` carries the
    parent's peak over fork and exec, so every worker reported at least what ``prepare`` had held
    (0.51 GiB for a lean path that peaks at 0.15)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def worker(kind: str, db_url: str, profile_path: str, snapshot_path: str, sample: int) -> dict:
    """One measured path, in this process; returns its numbers (printed as one JSON line)."""
    from include.prediction_log.reads import served_inputs
    from include.tasks.monitor.drift import Profile, count_window, drift_checks

    spec = _spec()
    until = (START + timedelta(hours=1)).isoformat(timespec="microseconds")
    since = START.isoformat(timespec="microseconds")
    t0 = time.perf_counter()
    if kind == "lean":
        cfg = spec.monitoring.drift
        profile = Profile.from_json(Path(profile_path).read_bytes())
        counts, report_rows = count_window(
            served_inputs(db_url, PIPELINE, since, until), profile, cfg.report_sample_rows
        )
        results = drift_checks(cfg, counts)
        drifted = sorted(r["metric"] for r in results if r["status"] == "failed")
        return {
            "rows": counts.rows,
            "seconds": time.perf_counter() - t0,
            "peak_gib": _peak_gib(),
            "drifted": drifted,
            "checks": len(results),
            "sampled": len(report_rows),
        }
    import orjson
    import pandas as pd

    from include.spec import SPLIT_COLUMN
    from include.tasks.monitor.drift import evidently_report, feature_kinds

    kinds = feature_kinds(spec)
    inputs: list[dict] = []
    for chunk in served_inputs(db_url, PIPELINE, since, until):
        inputs.extend(orjson.loads(r[0]) for r in chunk)
    if kind == "evidently_sample":
        import random

        inputs = random.Random(0).sample(inputs, min(sample, len(inputs)))
    cur = pd.DataFrame(inputs, columns=list(kinds))
    del inputs
    ref = pd.read_parquet(snapshot_path)
    ref = ref[ref[SPLIT_COLUMN] == "train"][list(kinds)].reset_index(drop=True)
    for name, k in kinds.items():
        if k == "numeric":
            ref[name], cur[name] = ref[name].astype(float), pd.to_numeric(cur[name], errors="coerce")
        else:
            ref[name], cur[name] = ref[name].astype(str), cur[name].astype(str)
    read_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        summary = evidently_report(ref, cur, f"{tmp}/r.html", f"{tmp}/r.json")
    return {
        "rows": len(cur),
        "seconds": time.perf_counter() - t0,
        "read_seconds": read_s,
        "peak_gib": _peak_gib(),
        "drifted": summary,
    }


def _measure(kind: str, args, paths: dict) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.drift",
        "--worker",
        kind,
        "--db-url",
        args.db_url,
        "--profile",
        paths["profile"],
        "--snapshot",
        paths["snapshot"],
        "--sample",
        str(args.sample),
    ]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {args.timeout} s", "seconds": time.perf_counter() - t0}
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1][:200]
            if proc.stderr.strip()
            else f"exit {proc.returncode}"
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args) -> str:
    from importlib.metadata import version

    base = Path(tempfile.mkdtemp(prefix="slipway-bench-drift-"))
    if not args.db_url:
        args.db_url = f"sqlite:///{base / 'serving.db'}"
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    paths = prepare(base, args.rows, args.db_url)
    prep_s = time.perf_counter() - t0
    rows = [
        ("lean: stream + bins + PSI + report sample (the hourly check)", _measure("lean", args, paths)),
        ("Evidently DataDriftPreset, all rows (peer)", _measure("evidently", args, paths)),
        (
            f"Evidently DataDriftPreset, {args.sample:,}-row sample (stored report)",
            _measure("evidently_sample", args, paths),
        ),
    ]
    import shutil

    shutil.rmtree(base, ignore_errors=True)
    out = [
        f"# Drift check on {args.rows:,} logged rows x {len(_spec().features.all)} features + scores",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load0[0]:.2f}; "
        f"evidently {version('evidently')}, log {args.db_url.split(':', 1)[0]}; rows written in {prep_s:.0f} s",
        "",
        f"| path | rows | wall s | peak RSS GiB | target (< {TARGET_S:g} s, < {TARGET_GIB:g} GiB) | drift found |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, r in rows:
        if "error" in r:
            out.append(f"| {name} | | {r.get('seconds', 0):.0f} | | | {r['error']} |")
            continue
        met = "met" if r["seconds"] < TARGET_S and r["peak_gib"] < TARGET_GIB else "missed"
        found = r["drifted"] if isinstance(r["drifted"], dict) else ", ".join(r["drifted"]) or "none"
        out.append(f"| {name} | {r['rows']:,} | {r['seconds']:.1f} | {r['peak_gib']:.2f} | {met} | {found} |")
    lean, peer = rows[0][1], rows[1][1]
    if "error" not in lean:
        out += [
            "",
            f"lean path: {lean['seconds']:.1f} s of the {TARGET_S:g} s target "
            f"({'met' if lean['seconds'] < TARGET_S else 'missed'}), {lean['peak_gib']:.2f} of "
            f"{TARGET_GIB:g} GiB; {lean['checks']} checks, a {lean['sampled']:,}-row sample for the report",
        ]
    if "error" not in lean and "error" not in peer:
        out.append(
            f"lean path: {peer['seconds'] / lean['seconds']:.1f}x faster than Evidently on all rows, "
            f"{peer['peak_gib'] / lean['peak_gib']:.1f}x less memory"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=5000)
    parser.add_argument("--db-url", default="")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--worker", choices=["lean", "evidently", "evidently_sample"])
    parser.add_argument("--profile")
    parser.add_argument("--snapshot")
    args = parser.parse_args(argv)
    if args.worker:
        print(
            json.dumps(
                worker(args.worker, args.db_url, args.profile, args.snapshot, args.sample), default=str
            )
        )
        return
    print(run(args))


if __name__ == "__main__":
    main()
