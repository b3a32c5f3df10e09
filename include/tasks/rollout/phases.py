"""The shadow and canary phases of a rollout, one tick at a time (no Airflow: the operator in
:mod:`include.blocks.rollout` defers between ticks; tests drive ticks directly).

A phase's state is a small JSON-able dict (step, window start, deadline, finished steps) so it
survives a deferral. Each tick reads the window so far from the prediction log and either waits
(returns the state), finishes (returns the outcome), or, on any breach, rolls the challenger back,
checks what is served, and raises :class:`include.tasks.gates.GateFailed` with the reason.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from include.registry import set_challenger
from include.tasks.gates import GateFailed, not_applicable
from include.tasks.rollout import guardrails as g
from include.tasks.rollout.promotion import rollback_challenger
from include.tracking import mlflow_client

log = logging.getLogger("slipway")
#: How often a phase that waits for rows says so in the task log (a check with a verdict always does)
QUIET_LOG_SECONDS = 60.0


def _mlflow():
    """The mlflow module when a run is active (inside a tracked task), else None."""
    import mlflow

    return mlflow if mlflow.active_run() is not None else None


class Phase:
    """``shadow`` or ``canary`` of one candidate (``selected``: version, champion, threshold)."""

    def __init__(
        self, pipeline: str, phase: str, spec, selected: dict, run_ref: dict, db_url: str | None = None
    ):
        self.pipeline, self.phase, self.spec = pipeline, phase, spec
        self.cfg = spec.rollout
        self.selected = selected
        self.run_ref = run_ref
        self.db_url = db_url

    def not_applicable(self) -> dict:
        reason = f"{self.pipeline} has no champion yet: nothing to compare the first model with"
        log.info("%s not applicable: %s", self.phase, reason)
        return {"gate": self.phase, "results": [not_applicable(self.phase, "window", reason)], "steps": []}

    def window_cfg(self, index: int):
        return self.cfg.shadow if self.phase == "shadow" else self.cfg.canary.steps[index]

    def start(self, index: int, now: datetime) -> dict:
        """Set the traffic of step ``index`` in the registry; the window starts now."""
        window = self.window_cfg(index)
        weight = 0.0 if self.phase == "shadow" else window.weight
        set_challenger(
            mlflow_client(),
            self.pipeline,
            self.selected["version"],
            self.phase,
            weight,
            step=index,
            **self.run_ref,
        )
        log.info(
            "%s step %d: version %d as challenger%s; needs %d requests within %.0f min",
            self.phase,
            index + 1,
            self.selected["version"],
            f" with {weight:.0%} of the entities"
            if weight
            else " in shadow (scores a mirror, never answers)",
            window.min_requests,
            window.max_duration_minutes,
        )
        return {
            "step": index,
            "since": now.isoformat(timespec="microseconds"),
            "deadline": (now + timedelta(minutes=window.max_duration_minutes)).isoformat(),
            "done": [],
            "checks": 0,
        }

    def wake(self, state: dict, now: datetime) -> datetime:
        """When to tick next: the next interval, or just after the window's deadline."""
        return min(
            now + timedelta(seconds=self.cfg.check_interval_seconds),
            datetime.fromisoformat(state["deadline"]) + timedelta(seconds=1),
        )

    def tick(self, state: dict, now: datetime) -> tuple[dict, dict | None]:
        """Judge the window so far: (state, None) to wait, (state, outcome) when the phase passed."""
        sel = self.selected
        window_cfg = self.window_cfg(state["step"])
        win = g.read_window(
            self.db_url,
            self.pipeline,
            sel["champion"],
            sel["version"],
            state["since"],
            now.isoformat(timespec="microseconds"),
            shadow=self.phase == "shadow",
        )
        complete = win.challenger.routed >= window_cfg.min_requests
        expired = now >= datetime.fromisoformat(state["deadline"])
        final = complete or expired
        task = self.spec.task
        if self.phase == "shadow":
            results = g.shadow_checks(self.cfg.shadow, win, final, task)
        else:
            results = g.canary_checks(
                self.cfg.canary.guardrails,
                win,
                final,
                window_cfg.min_requests,
                sel.get("threshold", 0.5),
                task,
            )
        state = {**state, "checks": state["checks"] + 1}
        label = f"{self.phase}.step{state['step'] + 1}"
        mlflow = _mlflow()
        if mlflow:
            for r in results:
                if r["value"] is not None:
                    mlflow.log_metric(f"{label}.{r['metric']}", float(r["value"]), step=state["checks"])
            mlflow.log_metric(f"{label}.challenger_rows", win.challenger.routed, step=state["checks"])
        # A check with a verdict is always logged; "too few rows" at most once a minute.
        quiet = not results and now.timestamp() - float(state.get("quiet_logged_at", 0)) < QUIET_LOG_SECONDS
        if not quiet:
            if not results:
                state["quiet_logged_at"] = now.timestamp()
            log.info(
                "%s check %d: %d challenger / %d champion rows since %s; %s",
                label,
                state["checks"],
                win.challenger.routed,
                win.champion.rows,
                state["since"],
                "; ".join(f"{r['metric']}={r['value']} ({r['status']})" for r in results)
                or "too few rows to judge yet",
            )
        record = {"step": state["step"] + 1, "window": win.summary(), "results": results}
        breaches = g.breached(results)
        if breaches:
            if mlflow:
                mlflow.log_dict({"steps": [*state["done"], record]}, f"{self.phase}.json")
            reason = f"{self.phase} step {state['step'] + 1}: " + "; ".join(
                f"{r['metric']} = {r['value']} breaks {r['comparison']} {r['threshold']}" for r in breaches
            )
            if expired and not complete:
                reason += (
                    f" (only {win.challenger.routed} of {window_cfg.min_requests} requests in the window)"
                )
            rollback_challenger(self.pipeline, sel, reason, self.run_ref, self.db_url)
            raise GateFailed(f"rolled back: {reason}", results)
        if not final:
            return state, None
        done = [*state["done"], record]
        if self.phase == "canary" and state["step"] + 1 < len(self.cfg.canary.steps):
            nxt = self.start(state["step"] + 1, now)
            return {**nxt, "done": done, "checks": state["checks"]}, None
        uri = None
        if mlflow:
            mlflow.log_dict({"steps": done}, f"{self.phase}.json")
            uri = f"runs:/{mlflow.active_run().info.run_id}/{self.phase}.json"
        all_results = [r for s in done for r in s["results"]]
        from include.tasks.gates import status_of

        client = mlflow_client()
        client.set_model_version_tag(
            self.pipeline, str(sel["version"]), f"slipway.blessing.{self.phase}", status_of(all_results)
        )
        if uri:
            client.set_model_version_tag(
                self.pipeline, str(sel["version"]), f"slipway.rollout.{self.phase}_uri", uri
            )
        from include.registry import record_event

        record_event(
            client, self.pipeline, sel["version"], f"{self.phase}_passed", steps=len(done), **self.run_ref
        )
        log.info("%s passed: %d step(s)", self.phase, len(done))
        return state, {"gate": self.phase, "results": all_results, "steps": done, "evidence_uri": uri}
