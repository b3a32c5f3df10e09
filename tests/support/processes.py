"""Processes for end-to-end runs: the ``slipway`` CLI in a subprocess with a clean environment, waiting
for a subprocess (or anything else) to reach a state, free loopback ports, and what a process tree
listens on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from include import procenv

ROOT = Path(__file__).resolve().parents[2]
TEST_PII_KEY = "test-only-pii-key"

T = TypeVar("T")


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without Airflow/MLflow/Slipway settings (see
    :func:`include.procenv.clean_env`), with the tests' PII key, plus ``overrides``."""
    return procenv.clean_env(**{"SLIPWAY_PII_KEY": TEST_PII_KEY, **overrides})


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    every: float = 0.2,
    retry_on: tuple[type[BaseException], ...] = (),
    procs: Mapping[str, subprocess.Popen] | None = None,
    log: Callable[[], str] = lambda: "",
    error: type[Exception] = AssertionError,
) -> T:
    """Call ``predicate`` every ``every`` seconds until it returns something truthy; return that.

    An exception of a type in ``retry_on`` counts as "not yet" (a server that does not listen yet).
    A process in ``procs`` (name -> Popen) that exits meanwhile fails the wait at once. A failure
    or the ``timeout`` raises ``error`` naming ``what``, the last result, and the tail of ``log()``.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except retry_on as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        dead = {name: p.returncode for name, p in (procs or {}).items() if p.poll() is not None}
        if dead:
            exited = ", ".join(f"{name} (exit code {code})" for name, code in dead.items())
            raise error(f"{exited} exited while waiting for {what}:\n{log()}")
        if time.monotonic() >= deadline:
            raise error(f"timed out after {timeout:.0f} s waiting for {what}; last: {last}\n{log()}")
        time.sleep(every)


def slipway(
    env: dict[str, str], *args: str, check: bool = True, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m include.cli ARGS`` from the project root."""
    proc = subprocess.run(
        [sys.executable, "-m", "include.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"slipway {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def lineage(env: dict[str, str], ref: str) -> dict:
    """``slipway lineage REF --json`` parsed."""
    out = slipway(env, "lineage", ref, "--json").stdout
    return json.loads(out[out.index("{") :])


def mlflow_client(tracking_uri: str):
    """An MLflow client on ``tracking_uri``."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def task_runs(client, pipeline: str, dag_id: str, run_id: str | None = None) -> list:
    """Nested (task-level) runs of a pipeline's DAG runs."""
    exp = client.get_experiment_by_name(pipeline)
    clause = f"tags.`slipway.dag_id` = '{dag_id}' and tags.`slipway.level` = 'task'"
    if run_id:
        clause += f" and tags.`slipway.run_id` = '{run_id}'"
    return client.search_runs([exp.experiment_id], filter_string=clause, max_results=1000)


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1, as /proc writes them


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(pids: set[int]) -> list[str]:
    """Local addresses that processes in ``pids`` listen on (from /proc, no extra tool)."""
    inodes = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    out.append(cols[1][:width])
    return out


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for child in os.listdir("/proc"):
            if child.isdigit():
                try:
                    with open(f"/proc/{child}/stat") as fh:
                        if int(fh.read().rsplit(")", 1)[1].split()[1]) == parent:
                            found.add(int(child))
                            todo.append(int(child))
                except OSError:
                    continue
    return found
