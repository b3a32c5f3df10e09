"""Which model versions ``<pipeline>__retire`` archives, and what archiving a version does.

A version is **protected** while it holds an alias the product uses (``champion``, ``previous``,
``challenger``, ``candidate``) or its rollout is under way (its newest history event opens or
advances a rollout and is less than ``ROLLOUT_OPEN_DAYS`` old). Any other version is retired when
the spec's policy says so (the first rule that applies is the reason):

* **superseded**: ``keep_newest`` newer versions of the pipeline are registered;
* **not served**: no served prediction for ``not_served_days`` (or none since registration);
* **below floor**: its last ``below_floor_checks`` monitor checks as champion all breached the
  live performance floor (it has since been replaced).

Archiving removes the version's remaining aliases, tags it ``slipway.retired`` (when, why, which
run) and records a ``retired`` event in its history. Nothing is deleted: the artifacts, model card,
blessing, lineage and every logged prediction stay queryable (``slipway lineage``, ``slipway
history``, the prediction log). Times come from the DAG run's data interval, never the clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from include.registry import last_event

PROTECTED_ALIASES = ("champion", "previous", "challenger", "candidate")
OPEN_ROLLOUT_EVENTS = {
    "shadow_started",
    "canary_started",
    "shadow_passed",
    "canary_passed",
    "rollout_selected",
}
ROLLOUT_OPEN_DAYS = 7
RETIRED_TAG = "slipway.retired"


@dataclass(frozen=True)
class Verdict:
    version: int
    retire: bool
    reason: str


def champion_checks(db_url: str | None, pipeline: str, limit: int) -> dict[int, list[bool]]:
    """Per version, the performance breaches of its newest ``limit`` monitor checks as champion."""
    from include.prediction_log.monitor_checks import NO_TRAFFIC, earlier

    out: dict[int, list[bool]] = {}
    for c in earlier(db_url, pipeline, "9999", limit=5000):
        if c.champion_version is not None and c.status != NO_TRAFFIC:
            mine = out.setdefault(int(c.champion_version), [])
            if len(mine) < limit:
                mine.append(c.performance_breach)
    return out


def judge(policy, versions: list, aliases: dict[str, int], served: dict[int, str], checks, now: datetime):
    """A verdict for every version not retired yet (``versions``: MLflow ModelVersion objects)."""
    by_alias = {v: a for a, v in aliases.items() if a in PROTECTED_ALIASES}
    numbers = sorted(int(mv.version) for mv in versions)
    out = []
    for mv in sorted(versions, key=lambda m: int(m.version)):
        v, tags = int(mv.version), dict(mv.tags or {})
        if RETIRED_TAG in tags:
            continue
        if v in by_alias:
            out.append(Verdict(v, False, f"protected: it is the {by_alias[v]}"))
            continue
        newest = last_event(tags)
        if newest and newest["event"] in OPEN_ROLLOUT_EVENTS:
            at = datetime.fromisoformat(newest["at"])
            if now - at < timedelta(days=ROLLOUT_OPEN_DAYS):
                out.append(
                    Verdict(v, False, f"protected: its rollout is under way ({newest['event']} at {at})")
                )
                continue
        newer = sum(1 for n in numbers if n > v)
        registered = datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC)
        last = datetime.fromisoformat(served[v]) if v in served else None
        idle_since = last or registered
        breaches = checks.get(v, [])
        if newer >= policy.keep_newest:
            out.append(
                Verdict(
                    v,
                    True,
                    f"superseded: {newer} newer versions registered (keep_newest {policy.keep_newest})",
                )
            )
        elif now - idle_since >= timedelta(days=policy.not_served_days):
            what = (
                f"last served {last.isoformat()}"
                if last
                else f"never served since registration {registered.date()}"
            )
            out.append(Verdict(v, True, f"not served for {policy.not_served_days:g} days ({what})"))
        elif len(breaches) >= policy.below_floor_checks and all(breaches):
            out.append(
                Verdict(
                    v,
                    True,
                    f"below the live performance floor in its last {len(breaches)} checks as champion",
                )
            )
        else:
            out.append(Verdict(v, False, "kept: no retirement rule applies"))
    return out


def archive(client, name: str, version: int, reason: str, at: datetime, **details) -> dict:
    """Retire one version: its aliases removed (re-checked under the alias lock), tagged, event recorded."""
    from include.registry import PromotionConflict, alias_lock, aliases, delete_alias, record_event

    with alias_lock(name):
        held = [a for a, v in aliases(client, name).items() if v == version]
        protected = [a for a in held if a in PROTECTED_ALIASES]
        if protected:  # it became champion/candidate/... since it was judged: leave it
            raise PromotionConflict(f"version {version} of {name} now holds {protected}; not retired")
        for alias in held:
            delete_alias(client, name, alias)
        body = {"at": at.isoformat(), "reason": reason, "aliases_removed": held, **details}
        client.set_model_version_tag(
            name, str(version), RETIRED_TAG, json.dumps(body, sort_keys=True, default=str)
        )
        record_event(client, name, version, "retired", reason=reason, **details)
    return body
