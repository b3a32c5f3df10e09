"""The promotion's own checks: what an approval's answer means, and that the service really serves
what the registry now says (after a promotion or a rollback)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from include.registry import end_challenger
from include.times import utc_minute

log = logging.getLogger("slipway")


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
    import urllib.error
    import urllib.request

    from include.prediction_log import reads
    from include.settings import serving_metrics_key

    deadline = time.monotonic() + timeout_s
    seen: dict = {}
    key = serving_metrics_key()
    if serving_url:
        ready = urllib.request.Request(
            f"{serving_url}/ready", headers={"Authorization": f"Bearer {key}"} if key else {}
        )
        while True:
            try:
                with urllib.request.urlopen(ready, timeout=5) as resp:
                    body = json.loads(resp.read())
            except urllib.error.HTTPError as exc:  # 503 while nothing is served: the body says why
                try:
                    body = json.loads(exc.read() or b"{}")
                except ValueError:  # not the service's answer (a proxy's error page)
                    body = {"pipelines": {pipeline: {"error": f"HTTP {exc.code}"}}}
            except Exception as exc:  # an unreachable service is a failed check, reported with its reason
                body = {"pipelines": {pipeline: {"error": f"{type(exc).__name__}: {exc}"[:300]}}}
            if "pipelines" not in body:
                raise ServedVersionMismatch(
                    f"{serving_url}/ready shows versions only to the service's metrics key, and "
                    "SLIPWAY_SERVING_METRICS_KEY is unset or not such a key: give the Airflow workers the "
                    "key Prometheus scrapes the service with"
                )
            seen = body["pipelines"].get(pipeline, {})
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
        since = datetime.now(UTC).isoformat(timespec="microseconds")
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
    from include.settings import get_settings
    from include.tracking import mlflow_client

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
            "reason": f"rejected by {by} at {utc_minute(at)}",
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
            "reason": f"approved by {by} at {utc_minute(at)}, but the promotion failed (promote_candidate's log says why)",
            "failed": True,
        }
    return {
        "decision": "none",
        "by": None,
        "at": "",
        "reason": "an earlier task failed (its log says why)",
        "failed": True,
    }
