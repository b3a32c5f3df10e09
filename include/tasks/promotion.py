"""Aliases and traffic in the MLflow registry: challenger, canary weights, promotion, rollback, history.

The service reads what this module writes (see :mod:`include.serving.models`): the aliases
``champion`` and ``challenger`` and the registered-model tags ``slipway.traffic.mode``, ``.weight``
and ``.version``. ``previous`` is the champion before the last promotion, restored by
``<pipeline>__rollback``.

MLflow has no compare-and-set on aliases (last write wins), so every change of one pipeline's
aliases runs under :func:`alias_lock` (an advisory lock in the serving database, which every
worker and replica shares: PostgreSQL's ``pg_advisory_lock`` in production, an ``flock`` next to
the SQLite file when embedded) and checks that the aliases are what it expects before it moves
them, then reads them back.

Every change is also an *event*: a model-version tag ``slipway.event.<UTC time>`` holding JSON
(event, version, from_version, reason, by, dag run). ``slipway history`` reads them back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from datetime import UTC, datetime

TAG_MODE, TAG_WEIGHT, TAG_VERSION = (
    "slipway.traffic.mode",
    "slipway.traffic.weight",
    "slipway.traffic.version",
)
EVENT_PREFIX = "slipway.event."

log = logging.getLogger("slipway")


class PromotionConflict(RuntimeError):
    """The aliases are not what this change expected: someone else moved them. Nothing was changed."""


def _now() -> datetime:
    return datetime.now(UTC)


@contextlib.contextmanager
def alias_lock(pipeline: str, db_url: str | None = None, timeout_s: float = 120.0):
    """Hold the pipeline's alias lock (one alias change at a time, across processes and machines)."""
    from include.database import database

    db = database(db_url)
    if db.dialect == "sqlite":
        import fcntl
        import time

        path = db.url.split("sqlite:///", 1)[1] + f".aliases-{pipeline}.lock"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise PromotionConflict(
                            f"another alias change of {pipeline} has held its lock for {timeout_s:.0f} s; "
                            "retry when it is done"
                        ) from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock
        return
    key = int.from_bytes(
        hashlib.sha256(f"slipway-aliases:{pipeline}".encode()).digest()[:8], "big", signed=True
    )
    conn = db.connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
            cur.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        conn.close()


def aliases(client, name: str) -> dict[str, int]:
    """The registered model's aliases: ``{alias: version}`` (empty when not registered)."""
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {a: int(v) for a, v in (rm.aliases or {}).items()}


def traffic(client, name: str) -> dict:
    """The traffic state the service reads: mode, weight and the version it names."""
    tags = dict(client.get_registered_model(name).tags or {})
    return {
        "mode": tags.get(TAG_MODE, "none"),
        "weight": float(tags.get(TAG_WEIGHT) or 0.0),
        "version": int(tags[TAG_VERSION]) if tags.get(TAG_VERSION, "").isdigit() else None,
    }


def record_event(client, name: str, version: int, event: str, **details) -> dict:
    """Append an event to the version's history (a tag keyed by its UTC time, microseconds)."""
    at = _now()
    body = {"at": at.isoformat(timespec="seconds"), "event": event, "version": int(version), **details}
    text = json.dumps(body, sort_keys=True, default=str)
    if len(text) > 4900:
        body["reason"] = str(body.get("reason", ""))[:1000] + " (cut; the rollout's MLflow run has it whole)"
        text = json.dumps(body, sort_keys=True, default=str)
    client.set_model_version_tag(name, str(version), EVENT_PREFIX + at.strftime("%Y%m%dT%H%M%S%fZ"), text)
    return body


def _delete_alias(client, name: str, alias: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise


def _expect(current: dict[str, int], alias: str, expected: int | None, action: str) -> None:
    if current.get(alias) != expected:
        raise PromotionConflict(
            f"cannot {action}: '{alias}' is version {current.get(alias)}, expected {expected}; another "
            "promotion or rollback moved it. Nothing was changed: look at `slipway history` and re-run"
        )


def set_challenger(client, name: str, version: int, mode: str, weight: float, **details) -> dict:
    """Point ``challenger`` at ``version`` and set its traffic (shadow, or canary at ``weight``).

    The alias moves before the traffic tags name the version: the service ignores a traffic state
    whose version is not the challenger's, so no replica ever routes to a version it has not loaded
    under that alias."""
    if mode not in ("shadow", "canary"):
        raise ValueError(f"mode must be shadow or canary, got {mode!r}")
    with alias_lock(name):
        current = aliases(client, name)
        if current.get("champion") == version:
            raise PromotionConflict(f"version {version} is already the champion of {name}")
        if current.get("challenger") not in (None, version):
            raise PromotionConflict(
                f"version {current['challenger']} is already the challenger of {name}: one rollout at a "
                "time. Let it finish, or run its rollback"
            )
        client.set_registered_model_alias(name, "challenger", str(version))
        client.set_registered_model_tag(name, TAG_WEIGHT, str(float(weight)))
        client.set_registered_model_tag(name, TAG_VERSION, str(version))
        client.set_registered_model_tag(name, TAG_MODE, mode)
        return record_event(client, name, version, f"{mode}_started", weight=float(weight), **details)


def end_challenger(client, name: str, version: int, reason: str, **details) -> dict | None:
    """Roll a challenger back: all traffic to the champion, ``challenger`` removed. Idempotent:
    None when ``version`` is no longer the challenger (already rolled back, or promoted)."""
    with alias_lock(name):
        current = aliases(client, name)
        if current.get("challenger") != version:
            return None
        client.set_registered_model_tag(name, TAG_MODE, "none")  # first: the service routes nothing to it
        client.set_registered_model_tag(name, TAG_WEIGHT, "0")
        _delete_alias(client, name, "challenger")
        return record_event(client, name, version, "rolled_back", reason=reason, **details)


def promote(client, name: str, version: int, expected_champion: int | None, reason: str, **details) -> dict:
    """``champion`` -> ``version``; the old champion becomes ``previous``; ``challenger`` removed.

    Refused (nothing changed) unless ``champion`` is still ``expected_champion`` and the version is
    the challenger (or, for a pipeline's first model, there is no champion and no challenger)."""
    with alias_lock(name):
        current = aliases(client, name)
        if (
            current.get("champion") == version
            and current.get("previous") == expected_champion
            and "challenger" not in current
        ):  # a retry of a promotion that was done: the same answer, no second event
            return {
                "event": "promoted",
                "version": version,
                "from_version": expected_champion,
                "repeated": True,
            }
        _expect(current, "champion", expected_champion, f"promote version {version}")
        if expected_champion is not None or current.get("challenger") is not None:
            _expect(current, "challenger", version, f"promote version {version}")
        client.set_registered_model_tag(name, TAG_MODE, "none")
        client.set_registered_model_tag(name, TAG_WEIGHT, "0")
        if expected_champion is not None:
            client.set_registered_model_alias(name, "previous", str(expected_champion))
        client.set_registered_model_alias(name, "champion", str(version))
        _delete_alias(client, name, "challenger")
        after = aliases(client, name)
        if after.get("champion") != version or "challenger" in after:
            raise PromotionConflict(
                f"after promoting version {version} the aliases read {after}; check the registry"
            )
        event = record_event(
            client, name, version, "promoted", from_version=expected_champion, reason=reason, **details
        )
        if expected_champion is not None:
            record_event(
                client, name, expected_champion, "demoted", to_version=version, reason=reason, **details
            )
        return event


def restore_previous(client, name: str, reason: str, **details) -> dict:
    """``champion`` -> ``previous`` (the one-click rollback); the demoted version loses its aliases."""
    with alias_lock(name):
        current = aliases(client, name)
        if "previous" not in current:
            raise PromotionConflict(
                f"{name} has no 'previous' version to restore (no promotion since the first champion, or "
                "already restored); choose a version and promote it by hand"
            )
        bad, good = current.get("champion"), current["previous"]
        if current.get("challenger") is not None:
            client.set_registered_model_tag(name, TAG_MODE, "none")
            _delete_alias(client, name, "challenger")
        client.set_registered_model_alias(name, "champion", str(good))
        _delete_alias(client, name, "previous")
        after = aliases(client, name)
        if after.get("champion") != good:
            raise PromotionConflict(
                f"after restoring version {good} the aliases read {after}; check the registry"
            )
        event = record_event(client, name, good, "restored", from_version=bad, reason=reason, **details)
        if bad is not None:
            record_event(
                client, name, bad, "rolled_back_from_champion", to_version=good, reason=reason, **details
            )
        return event


def history(client, name: str) -> list[dict]:
    """Every recorded event of every version of ``name``, oldest first."""
    out = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        for key, value in (mv.tags or {}).items():
            if key.startswith(EVENT_PREFIX):
                try:
                    item = json.loads(value)
                except ValueError:
                    continue
                out.append({**item, "_key": key[len(EVENT_PREFIX) :]})
    out.sort(key=lambda e: e["_key"])
    for e in out:
        e.pop("_key")
    return out


def champion_timeline(events: list[dict]) -> list[dict]:
    """Which version was champion from when to when, and why it changed: from the events."""
    spans: list[dict] = []
    for e in events:
        if e["event"] in ("promoted", "restored"):
            if spans and spans[-1]["until"] is None:
                spans[-1]["until"] = e["at"]
                spans[-1]["ended_by"] = f"{e['event']} version {e['version']}: {e.get('reason', '')}"
            spans.append(
                {
                    "version": e["version"],
                    "since": e["at"],
                    "until": None,
                    "why": e.get("reason", ""),
                    "by": e.get("by"),
                    "dag_run": e.get("dag_run"),
                }
            )
    return spans


class ServedVersionMismatch(RuntimeError):
    """After an alias change, the service still serves something else."""


def verify_served(
    pipeline: str,
    champion: int,
    gone: int | None,
    serving_url: str | None,
    db_url: str | None = None,
    timeout_s: float = 60.0,
    quiet_s: float = 5.0,
) -> dict:
    """Check, rather than assume, that ``champion`` serves and ``gone`` answers nobody any more.

    With the service's address: ``/ready`` must report ``champion`` and no challenger ``gone``
    (polled until ``timeout_s``). Then, with or without it, the prediction log must hold no row
    served by ``gone`` during ``quiet_s`` seconds after that point (every replica writes there)."""
    import time
    import urllib.request

    from include.prediction_log import reads

    deadline = time.monotonic() + timeout_s
    seen: dict = {}
    if serving_url:
        while True:
            try:
                with urllib.request.urlopen(f"{serving_url}/ready", timeout=5) as resp:
                    seen = json.loads(resp.read()).get("pipelines", {}).get(pipeline, {})
            except Exception as exc:  # an unreachable service is a failed check, reported with its reason
                seen = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            if seen.get("champion") == champion and (gone is None or seen.get("challenger") != gone):
                break
            if time.monotonic() > deadline:
                raise ServedVersionMismatch(
                    f"{serving_url}/ready still reports {seen} for {pipeline} {timeout_s:.0f} s after the change "
                    f"(expected champion {champion}" + (f", no challenger {gone})" if gone else ")")
                )
            time.sleep(1.0)
    served_after = 0
    if gone is not None:
        since = _now().isoformat(timespec="microseconds")
        time.sleep(quiet_s)
        served_after = reads.served_since(db_url, pipeline, gone, since)
        if served_after:
            raise ServedVersionMismatch(
                f"version {gone} of {pipeline} still answered {served_after} request(s) after it was rolled back "
                "(prediction log); a replica did not pick up the change: check its /ready and the registry"
            )
    return {"champion": champion, "ready": seen, "rows_served_by_old_version_after": served_after}


def rollback_challenger(
    pipeline: str, selected: dict, reason: str, run_ref: dict, db_url: str | None = None
) -> dict | None:
    """All traffic back to the champion, ``challenger`` removed, then what is served is checked
    (not assumed) and written to the version. None when it was already rolled back."""
    from include.lineage import mlflow_client
    from include.settings import get_settings

    client = mlflow_client()
    event = end_challenger(client, pipeline, selected["version"], reason, **run_ref)
    if selected.get("champion") is not None:
        served = verify_served(
            pipeline, selected["champion"], selected["version"], get_settings().serving_url, db_url
        )
        client.set_model_version_tag(
            pipeline,
            str(selected["version"]),
            "slipway.rollout.served_after_rollback",
            json.dumps(served)[:4000],
        )
        log.warning(
            "rolled back %s version %d (%s); served now: %s", pipeline, selected["version"], reason, served
        )
    return event


def approval_outcome(decision: dict | None) -> dict:
    """What an Airflow approval's result means for a candidate that was not promoted.

    ``decision`` is the ApprovalOperator's XCom (``chosen_options``, ``responded_by_user``,
    ``responded_at``), or None when the approval never ran. A person's Reject is a decision, not a
    failure; the timeout's default (Reject with no responder) and an upstream failure are failures."""
    decision = decision or {}
    chosen = list(decision.get("chosen_options") or [])
    user = decision.get("responded_by_user") or {}
    by = user.get("name") or user.get("id")
    at = str(decision.get("responded_at") or "")
    if chosen == ["Reject"] and by:
        return {
            "decision": "rejected",
            "by": by,
            "at": at,
            "reason": f"rejected by {by} at {at}",
            "failed": False,
        }
    if chosen == ["Reject"]:
        return {
            "decision": "rejected",
            "by": "timeout",
            "at": at,
            "reason": "no decision before the approval timeout: the default (reject) applied",
            "failed": True,
        }
    if chosen == ["Approve"]:
        return {
            "decision": "approved",
            "by": by or "unknown",
            "at": at,
            "reason": f"approved by {by} at {at}, but the promotion failed (promote_candidate's log says why)",
            "failed": True,
        }
    return {
        "decision": "none",
        "by": None,
        "at": "",
        "reason": "an earlier task failed (its log says why)",
        "failed": True,
    }
