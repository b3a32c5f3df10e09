"""Bench: Slipway's inference service vs MLflow's scoring server, same model version, same machine.

``python -m benchmarks.serving`` trains and registers ``telco_churn`` version 1 in a temp
folder (``slipway seed`` + ``slipway run``, about 40 s), then serves that one ONNX version two ways
and loads each with the same single-row request for a fixed time:

* **Slipway**: ``slipway serve`` with durable logging on (the default SQLite prediction log: a
  response leaves only after its row is committed), 1 and 2 workers, on uvicorn (httptools, the
  default) and on Granian (a Rust HTTP server; the same app factory, run by the bench only);
* **the peer**: ``mlflow models serve -m models:/telco_churn_peer/1 --env-manager local`` (MLflow's
  pyfunc scoring server on the ``mlflow.onnx`` flavour, no logging), 1 and 2 workers, on the same
  ONNX graph registered again without Slipway's column signature (see :func:`register_peer_copy`).

The load generator is ``wrk`` (8, then 64 connections, 2 threads, a warm-up that is not counted, then
``--duration`` seconds): a C event loop needs a fraction of a core for tens of thousands of
requests per second, so on a 2-core machine it is not the bottleneck the way a Python client
would be. It still shares the cores with the server, like any client on the same host; both
sides pay that equally. Servers bind to 127.0.0.1 and are started one at a time, interleaved
(each Slipway server, then the peer, with 1 worker, then with 2) so that a change of machine load does not favour one side.

Also printed: the prediction log's committed rows per second during each Slipway run (counted in
the SQLite table, the proof that logging was on) and the latency of a 100-row batch request.
Every number comes from one run on this machine; the header shows its load. Targets, at each
connection count: Slipway at least 3x the peer's requests/s, at most 1/5 of its p99, and its own
p99 at most 3x its p50. Reported, never enforced.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from include.procenv import clean_env

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "telco_churn"
MONTH = "2025-12"
PII_KEY = "slipway-bench-serving-pii-key"  # fixed: the bench must not depend on the environment's key
CONNECTIONS, THREADS = (8, 64), 2
SERVERS = ("uvicorn", "granian")
TARGET_RPS_RATIO, TARGET_P99_RATIO, TARGET_TAIL_RATIO = 3.0, 1 / 5, 3.0
BATCH_ROWS = 100
MARK = "SLIPWAY-BENCH "  # prefixes the JSON line that the wrk script's done() prints


# ---------------------------------------------------------------------------- setup
def bench_env(base: Path) -> dict[str, str]:
    """This process's environment without Airflow/MLflow/Slipway settings, pointed at ``base``."""
    return clean_env(
        SLIPWAY_HOME=str(base / "state"),
        SLIPWAY_PII_KEY=PII_KEY,
        MLFLOW_TRACKING_URI=f"sqlite:///{base / 'mlflow.db'}",
        SLIPWAY_MLFLOW_ARTIFACT_URI=(base / "artifacts").as_uri(),
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
    )


def slipway(env: dict[str, str], *args: str, timeout: int = 900) -> str:
    """``python -m include.cli ARGS`` from the project root; its stdout, or SystemExit with its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "include.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"slipway {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc.stdout


def register_model(env: dict[str, str]) -> int:
    """Seed the demo data, train and register telco_churn, point ``champion`` at the version."""
    import mlflow

    slipway(env, "seed")
    slipway(env, "run", PIPELINE, "--month", MONTH)
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{PIPELINE}'"))
    if not versions:
        raise SystemExit(f"slipway run {PIPELINE} registered no version (did a gate fail?)")
    client.set_registered_model_alias(PIPELINE, "champion", str(versions[-1]))
    return versions[-1]


def register_peer_copy(env: dict[str, str], version: int) -> str:
    """The version's ONNX graph registered again as ``<pipeline>_peer`` without a signature: the
    model URI the peer serves.

    Slipway registers a column signature (one named column per input, for MLflow's model page);
    MLflow's scoring server then checks a request against it and its ONNX flavour feeds each column
    as a 1-D array, which this graph (inputs ``[N, 1]``) refuses, in every request format. Without
    a signature, ``{"inputs": {name: [[value]]}}`` reaches onnxruntime as the tensors the graph
    takes: the same graph, the same session, MLflow's own server around it.
    """
    import mlflow
    import onnx

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    source = client.get_model_version(PIPELINE, str(version)).source
    folder = Path(
        mlflow.artifacts.download_artifacts(source, dst_path=tempfile.mkdtemp(dir=env["SLIPWAY_HOME"]))
    )
    graph = onnx.load(str(next(folder.rglob("*.onnx"))))
    name = f"{PIPELINE}_peer"
    experiment = "slipway-bench-peer"
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=env["SLIPWAY_MLFLOW_ARTIFACT_URI"] + "/peer")
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"{PIPELINE} v{version}, unsigned"):
        info = mlflow.onnx.log_model(graph, name="model", registered_model_name=name, pip_requirements=[])
    return f"models:/{name}/{info.registered_model_version}"


def request_rows() -> tuple[dict, dict]:
    """One demo row as each server wants it: Slipway's raw row, and the peer's ONNX feeds."""
    from include.demo.data import load_wa_churn
    from include.spec import load_pipeline

    spec = load_pipeline(PIPELINE)
    rec = load_wa_churn().iloc[0]  # complete row: JSON has no NaN, and the peer has no null handling
    row: dict = {"customer_id": str(rec["customer_id"])}
    feeds: dict = {}
    for n in spec.features.numeric:
        row[n] = feeds[n] = float(rec[n])
    for n in spec.features.binary:
        row[n] = int(rec[n])
        feeds[n] = float(rec[n])  # the graph's input is float32; the peer casts float64 but not int64
    for n in spec.features.categorical:
        row[n] = feeds[n] = str(rec[n])
    return row, feeds


# ---------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _request(
    method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30
) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@dataclass
class Server:
    """One server process group on a loopback port; ``ready_path`` answers 200 once it serves."""

    name: str
    workers: int
    argv: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> Server:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if _request("GET", self.url + self.ready_path, timeout=5)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"{self.name} was not ready in {timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL after 20 s; then wait until the port refuses connections."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.proc is not None:  # workers outlive the parent only on a bad exit: take the group down
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


def slipway_server(env: dict[str, str], base: Path, workers: int, http: str) -> Server:
    """``slipway serve`` (uvicorn: what the product runs), or the same app on Granian."""
    port = free_port()
    log = base / f"slipway-{http}-{workers}.log"
    if http == "uvicorn":
        argv = [sys.executable, "-m", "include.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--workers", str(workers), "--pipelines", PIPELINE]
        return Server("slipway/uvicorn", workers, argv, env, port, "/ready", log)
    # Granian: the app factory as `slipway serve` configures it (its variables), a native HTTP core.
    # Evaluated here only: it lacks what the service's uvicorn protocol adds (a body read timeout,
    # 503 beyond a connection limit, trusted-proxy addresses), so the product does not offer it.
    env = {**env, "SLIPWAY_SERVE_PIPELINES": PIPELINE, "SLIPWAY_SERVE_REFRESH_S": "5"}
    if workers > 1:
        metrics = base / f"granian-metrics-{workers}"
        metrics.mkdir(exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    argv = [str(Path(sys.executable).parent / "granian"), "--interface", "asgi", "--factory"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--loop", "uvloop"]
    argv += ["--no-ws", "--log-level", "warning", "--http1-header-read-timeout", "10000"]
    argv += ["include.serving.app:app_from_env"]
    return Server("slipway/granian", workers, argv, env, port, "/ready", log)


def peer_server(env: dict[str, str], base: Path, workers: int, model_uri: str) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    argv += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    return Server("mlflow", workers, argv, env, port, "/ping", base / f"mlflow-{workers}.log")


# ---------------------------------------------------------------------------- requests
def _floats(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        return [float(obj)]
    if isinstance(obj, list):
        return [x for item in obj for x in _floats(item)]
    return []


def peer_probability(answer) -> float | None:
    """The positive class's probability in a scoring-server answer (its key names 'prob'), or None."""
    if isinstance(answer, dict):
        for key, value in answer.items():
            if "prob" in key.lower():
                found = _floats(value)
                return found[-1] if found and all(0 <= x <= 1 for x in found) else None
            inner = peer_probability(value)
            if inner is not None:
                return inner
    if isinstance(answer, list):
        for item in answer:
            inner = peer_probability(item)
            if inner is not None:
                return inner
    return None


def slipway_check(server: Server, body: bytes, headers: dict) -> float:
    status, text = _request("POST", f"{server.url}/v1/{PIPELINE}/predict", body, headers)
    if status != 200 or "probability" not in text:
        raise SystemExit(f"slipway answered {status} to the bench request, not a prediction: {text[:500]}")
    return float(json.loads(text)["probability"])


def peer_body(server: Server, row: dict, feeds: dict) -> tuple[bytes, float, list[str]]:
    """The first request body the peer answers with 200 and a probability; notes on those it refused."""
    # MLflow's documented row format first. The ONNX flavour feeds each DataFrame column as a 1-D
    # array, and this graph's inputs are [N, 1]: onnxruntime refuses the rank ("Invalid rank for
    # input ... Got: 1 Expected: 2") and the server answers a generic 400. A dict of tensors under
    # "inputs" is passed to onnxruntime as is.
    candidates = [
        ("dataframe_records [row]", {"dataframe_records": [{n: feeds[n] for n in feeds}]}),
        ("inputs {feature: [[value]]}", {"inputs": {n: [[v]] for n, v in feeds.items()}}),
    ]
    notes = []
    for label, payload in candidates:
        body = json.dumps(payload).encode()
        status, text = _request(
            "POST", f"{server.url}/invocations", body, {"Content-Type": "application/json"}
        )
        try:
            p = peer_probability(json.loads(text)) if status == 200 else None
        except ValueError:
            p = None
        if p is not None:
            return body, p, [*notes, f"peer body: {label} (answered 200)"]
        detail = text
        try:
            detail = json.loads(text).get("message", text)
        except (ValueError, AttributeError):
            pass
        notes.append(f"peer refused {label}: {status} {' '.join(str(detail).split())[:160]}")
    raise SystemExit("the peer answered none of the request bodies with a probability:\n" + "\n".join(notes))


def lua_script(path: Path, body: bytes, headers: dict) -> Path:
    """wrk script: POST ``body`` with ``headers``; ``done()`` prints the summary as one JSON line."""
    text = body.decode()
    if "]==]" in text:
        raise ValueError("the request body contains the Lua long-bracket terminator ]==]")
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{text}]==]"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    lines.append(
        "function done(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        f"  io.write(string.format('{MARK}"
        '{"requests": %d, "duration_us": %d, "p50_us": %.1f, "p99_us": %.1f, "max_us": %.1f, '
        '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\\n\', '
        "summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max, "
        "e.connect, e.read, e.write, e.status, e.timeout))\n"
        "end"
    )
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk(url: str, script: Path, seconds: float, connections: int) -> dict:
    """One wrk run; its done() summary (latencies in microseconds)."""
    argv = ["wrk", "-t", str(THREADS), "-c", str(connections), "-d", f"{max(1, round(seconds))}s"]
    argv += ["--timeout", "10s", "--latency", "-s", str(script), url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    raise SystemExit(
        f"wrk printed no summary ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    )


def log_rows(db: Path) -> int:
    """Committed rows of the prediction log (a read-only reader; WAL lets it run beside the writer)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        return conn.execute(
            "SELECT COUNT(*) FROM slipway_predictions WHERE pipeline = ?", (PIPELINE,)
        ).fetchone()[0]


def batch_latency(server: Server, body: bytes, headers: dict, calls: int) -> dict:
    """Sequential batch requests on one keep-alive connection: p50 and p99 in ms, after 10 warm-up calls."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    path = f"/v1/{PIPELINE}/predict"
    times = []
    try:
        for i in range(calls + 10):
            t0 = time.perf_counter()
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            text = resp.read()
            took = time.perf_counter() - t0
            if resp.status != 200:
                raise SystemExit(
                    f"slipway answered {resp.status} to a {BATCH_ROWS}-row batch: {text[:300]!r}"
                )
            if i >= 10:
                times.append(took * 1000)
    finally:
        conn.close()
    times.sort()
    return {"p50": statistics.median(times), "p99": times[min(len(times) - 1, int(0.99 * len(times)))]}


# ---------------------------------------------------------------------------- measurement
@dataclass
class Result:
    server: str  # "slipway/uvicorn", "slipway/granian" or "mlflow"
    workers: int
    connections: int
    rps: float  # 2xx responses per second
    p50: float  # ms
    p99: float  # ms
    non2xx: int
    socket: int
    log_rows_s: float | None = None
    log_rows: int | None = None
    ok: int = 0
    batch: dict | None = None
    seconds: float = 0.0  # measured, as wrk reports it

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket

    @property
    def slipway(self) -> bool:
        return self.server.startswith("slipway")


def measure(server: Server, url: str, script: Path, seconds: float, connections: int) -> Result:
    """One measured wrk run (the caller warms up first)."""
    s = wrk(url, script, seconds, connections)
    seconds = s["duration_us"] / 1e6
    ok = s["requests"] - s["status"]
    return Result(
        server.name,
        server.workers,
        connections,
        ok / seconds,
        s["p50_us"] / 1000,
        s["p99_us"] / 1000,
        s["status"],
        s["connect"] + s["read"] + s["write"] + s["timeout"],
        ok=ok,
        seconds=seconds,
    )


def best(results: list[Result]) -> Result | None:
    """The configuration with most req/s, preferring those without errors."""
    clean = [r for r in results if r.errors == 0] or results
    return max(clean, key=lambda r: r.rps) if clean else None


def measure_server(
    server: Server, url: str, script: Path, args, connections: list[int], db: Path | None
) -> list[Result]:
    """Warm ``server`` up, then one measured run per connection count (the log's rows counted)."""
    out = []
    for c in connections:
        if args.warmup > 0:
            wrk(url, script, args.warmup, c)
        before = log_rows(db) if db else 0
        r = measure(server, url, script, args.duration, c)
        if db:
            r.log_rows = log_rows(db) - before
            r.log_rows_s = r.log_rows / r.seconds
        out.append(r)
    return out


def run(args) -> str:
    """Set up, measure every configuration, return the report text."""
    from importlib.metadata import version

    started = time.perf_counter()
    load0 = os.getloadavg()
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if not workers or min(workers) < 1:
        raise SystemExit(f"--workers must list positive worker counts like 1,2, got {args.workers!r}")
    connections = [int(c) for c in args.connections.split(",") if c.strip()]
    if not connections or min(connections) < 1:
        raise SystemExit(f"--connections must list positive counts like 8,64, got {args.connections!r}")
    servers = [x.strip() for x in args.servers.split(",") if x.strip()]
    if not servers or set(servers) - set(SERVERS):
        raise SystemExit(f"--servers lists {', '.join(SERVERS)}, got {args.servers!r}")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `apt-get install wrk` (Debian/Ubuntu) or `brew install wrk`")
    wrk_out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10).stdout
    wrk_version = " ".join(wrk_out.split()[:2])  # "wrk 4.1.0", without the copyright line

    base = Path(tempfile.mkdtemp(prefix="slipway-bench-serving-"))
    env = bench_env(base)
    db = base / "state" / "serving" / "serving.db"  # the default log: SLIPWAY_SERVING_DB is unset
    results: list[Result] = []
    notes: list[str] = []
    current: Server | None = None
    try:
        t0 = time.perf_counter()
        model_version = register_model(env)
        peer_uri = register_peer_copy(env, model_version)
        train_s = time.perf_counter() - t0
        key = slipway(env, "keys", "create", "--scopes", "predict", "--pipeline", PIPELINE).splitlines()[0]
        row, feeds = request_rows()
        s_headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        s_body = json.dumps({"inputs": row}).encode()
        s_script = lua_script(base / "slipway.lua", s_body, s_headers)
        batch_body = json.dumps({"instances": [row] * BATCH_ROWS}).encode()
        p_script = None
        probabilities: dict[str, float] = {}

        # Interleaved (each Slipway server, then the peer, per worker count) so that a change of
        # machine load does not favour one side.
        for w in workers:
            for http in servers:
                current = slipway_server(env, base, w, http).start()
                probabilities[current.name] = slipway_check(current, s_body, s_headers)
                url = f"{current.url}/v1/{PIPELINE}/predict"
                measured = measure_server(current, url, s_script, args, connections, db)
                measured[0].batch = batch_latency(current, batch_body, s_headers, args.batch_calls)
                results += measured
                current.stop()
                current = None

            if args.skip_peer:
                continue
            current = peer_server(env, base, w, peer_uri).start()
            if p_script is None:
                p_body, probabilities["mlflow"], found = peer_body(current, row, feeds)
                notes += found
                p_script = lua_script(base / "mlflow.lua", p_body, {"Content-Type": "application/json"})
            results += measure_server(
                current, f"{current.url}/invocations", p_script, args, connections, None
            )
            current.stop()
            current = None
    finally:
        if current is not None:
            current.stop()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)

    load1 = os.getloadavg()
    cores = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    libs = ", ".join(f"{p} {version(p)}" for p in ("onnxruntime", "mlflow", *servers))
    head = [
        f"Slipway serving bench: {PIPELINE} version {model_version} (trained and registered here in "
        f"{train_s:.0f} s), one-row requests",
        f"machine: {cores} cores (usable {usable}); load average {load0[0]:.2f} at start, "
        f"{load1[0]:.2f} at end (the bench's own load included); Python {platform.python_version()} on {platform.machine()}",
        f"libraries: {libs}; {wrk_version}",
        f"load: wrk -t {THREADS} -c {{{','.join(map(str, connections))}}}, {args.warmup:g} s warm-up (not counted), "
        f"{args.duration:g} s measured per configuration; req/s counts 2xx answers only",
        "same row, same version: " + ", ".join(f"{name} p = {p:.6f}" for name, p in probabilities.items()),
        *notes,
        "",
    ]
    table = [
        "| server | workers | connections | req/s | p50 ms | p99 ms | p99/p50 | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(results, key=lambda r: (r.connections, r.workers, not r.slipway, r.server)):
        errors = "0" if r.errors == 0 else f"{r.non2xx} non-2xx, {r.socket} socket"
        label = f"{r.server} (durable SQLite log)" if r.slipway else "mlflow models serve"
        table.append(
            f"| {label} | {r.workers} | {r.connections} | {r.rps:,.0f} | {r.p50:.2f} | {r.p99:.2f} | "
            f"{r.p99 / r.p50:.1f} | {errors} |"
        )

    summary = [""]
    for c in connections:
        at = [r for r in results if r.connections == c]
        p_best = best([r for r in at if not r.slipway])
        for http in servers:
            s_best = best([r for r in at if r.server == f"slipway/{http}"])
            if s_best is None:
                continue
            line = (
                f"{c} connections, slipway/{http}: best {s_best.workers} worker(s) {s_best.rps:,.0f} req/s, "
                f"p50 {s_best.p50:.2f} ms, p99 {s_best.p99:.2f} ms (p99/p50 {s_best.p99 / s_best.p50:.1f}, "
                f"target <= {TARGET_TAIL_RATIO:g})"
            )
            if p_best:
                rps_ratio, p99_ratio = s_best.rps / p_best.rps, s_best.p99 / p_best.p99
                line += (
                    f"; peer best {p_best.workers} worker(s) {p_best.rps:,.0f} req/s, p99 {p_best.p99:.2f} ms: "
                    f"{rps_ratio:.2f}x its req/s (target >= {TARGET_RPS_RATIO:g}x, "
                    + ("met" if rps_ratio >= TARGET_RPS_RATIO else "NOT met")
                    + f"), {p99_ratio:.2f} of its p99 (target <= {TARGET_P99_RATIO:.2f}, "
                    + ("met" if p99_ratio <= TARGET_P99_RATIO else "NOT met")
                    + ")"
                )
            summary.append(line)
    if args.skip_peer:
        summary.append("peer skipped (--skip-peer): no ratios")
    summary.append("")
    for r in results:
        if r.slipway and r.log_rows is not None:
            summary.append(
                f"prediction log, {r.server} {r.workers} worker(s), {r.connections} connections: "
                f"{r.log_rows_s:,.0f} committed rows/s sustained ({r.log_rows:,} rows in {r.seconds:.1f} s; "
                f"wrk received {r.ok:,} 2xx answers)"
            )
    for r in results:
        if r.slipway and r.batch:
            summary.append(
                f"{BATCH_ROWS}-row batch to {r.server}, {r.workers} worker(s): p50 {r.batch['p50']:.2f} ms, "
                f"p99 {r.batch['p99']:.2f} ms ({args.batch_calls} sequential requests, one connection)"
            )
    summary.append(f"total bench time {time.perf_counter() - started:.0f} s")
    return "\n".join(head + table + summary)


def _terminate(signum, frame):  # SIGTERM runs the finally blocks: servers stopped, temp folder removed
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m benchmarks.serving [--duration S] [--workers 1,2] [--skip-peer]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15, help="measured seconds per configuration")
    parser.add_argument("--warmup", type=float, default=5, help="uncounted seconds of load before each")
    parser.add_argument("--workers", default="1,2", help="worker counts to try on each side")
    parser.add_argument("--connections", default="8,64", help="wrk connection counts, each measured")
    parser.add_argument("--servers", default=",".join(SERVERS), help="HTTP servers to run Slipway's app on")
    parser.add_argument("--batch-calls", type=int, default=200, help=f"{BATCH_ROWS}-row requests timed")
    parser.add_argument("--skip-peer", action="store_true", help="measure Slipway only (quick checks)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, databases)")
    signal.signal(signal.SIGTERM, _terminate)
    print(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
