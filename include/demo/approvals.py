"""Answering an Airflow Required Action (human-in-the-loop) over the REST API, as an operator's
client does: ``PATCH .../taskInstances/{task}/-1/hitlDetails`` with the chosen option.

Airflow 3.3.2 can lose an answer given while the task that asked is still finishing its parking
(under load, its worker process can take seconds to exit after the question is posted): the
scheduler then reads the parking run's exit as an unexpected end, retries the task, and the same
question is asked again with a higher try number. A person sees the Required Action come back and
answers it again; :func:`answer` does the same, up to ``attempts`` times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Api = Callable[..., Any]  # api(method, path, body=None) -> parsed JSON; raises on an HTTP error
ENDED = ("success", "failed", "skipped", "upstream_failed", "removed")


def answer(
    api: Api,
    dag_id: str,
    run_id: str,
    task_id: str,
    option: str,
    *,
    timeout: float = 900,
    settle_s: float = 5.0,
    attempts: int = 3,
    on_asked: Callable[[dict], None] | None = None,
) -> dict:
    """Wait for the task to ask, answer ``option`` ``settle_s`` later (as a person reading the evidence
    would), and again if the question comes back; return the Required Action as first asked.
    Raises ``RuntimeError`` if the task ends without asking, ``TimeoutError`` after ``timeout``."""
    base = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
    answered: list[int] = []  # the try numbers answered
    first: dict | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ti = api("GET", base)
        state, try_number = ti.get("state"), int(ti.get("try_number") or 0)
        if state == "awaiting_input" and try_number not in answered:
            if len(answered) >= attempts:
                raise RuntimeError(
                    f"{dag_id}/{run_id}/{task_id} asked {len(answered) + 1} times; answered {answered}"
                )
            try:
                detail = api("GET", f"{base}/-1/hitlDetails")
            except Exception:  # the question is being written: ask again in a second
                time.sleep(1)
                continue
            if first is None:
                first = detail
                if on_asked is not None:
                    on_asked(detail)
            time.sleep(settle_s)
            try:
                api("PATCH", f"{base}/-1/hitlDetails", {"chosen_options": [option], "params_input": {}})
            except Exception:  # answered already, or the task moved on: the next pass sees which
                time.sleep(1)
                continue
            answered.append(try_number)
        elif state in ENDED:
            if not answered:
                raise RuntimeError(f"{dag_id}/{run_id}/{task_id} ended {state} without asking")
            return first or {}
        time.sleep(1)
    raise TimeoutError(f"no answer accepted for {dag_id}/{run_id}/{task_id} within {timeout:.0f} s")
