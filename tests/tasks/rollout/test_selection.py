"""Which version a rollout may take: only the candidate, moving forward; anything else is a skip."""

from __future__ import annotations

import json

from include.registry import EVENT_PREFIX, TAG_WAS_CHAMPION
from include.tasks.rollout.selection import refusal


def _why(version, tags=None, aliases=None, champion_month="2025-11"):
    return refusal(version, tags or {"slipway.month": "2025-12"}, aliases or {}, champion_month, EVENT_PREFIX)


def test_the_candidate_newer_than_the_champion_is_rolled_out():
    assert _why(4, aliases={"candidate": 4, "champion": 3}) is None
    assert _why(1, aliases={"candidate": 1}, champion_month=None) is None  # the first model
    # The same month as the champion (a retrain on the same data, a rebuilt graph) may go forward.
    assert _why(4, {"slipway.month": "2025-11"}, {"candidate": 4, "champion": 3}) is None


def test_a_past_month_a_demoted_a_retired_or_the_previous_version_is_skipped():
    assert "already the champion" in _why(3, aliases={"candidate": 3, "champion": 3})
    assert "not the candidate ('candidate' holds version 4)" in _why(
        2, aliases={"candidate": 4, "champion": 3}
    )
    assert "holds no version" in _why(2, aliases={"champion": 3})
    assert "'previous'" in _why(2, aliases={"candidate": 2, "champion": 3, "previous": 2})
    demoted = {
        "slipway.month": "2025-12",
        EVENT_PREFIX + "20261206T151653000000Z": json.dumps({"event": "demoted", "version": 2}),
    }
    assert "demoted" in _why(2, demoted, {"candidate": 2, "champion": 3})  # events as tags, before
    was = {"slipway.month": "2025-12", TAG_WAS_CHAMPION: "2026-12-01T10:00:00+00:00"}
    assert "demoted" in _why(2, was, {"candidate": 2, "champion": 3})
    retired = {"slipway.month": "2025-12", "slipway.retired": json.dumps({"reason": "old"})}
    assert "retired" in _why(2, retired, {"candidate": 2, "champion": 3})
    older = _why(2, {"slipway.month": "2025-10"}, {"candidate": 2, "champion": 3})
    assert "trained on 2025-10, before the champion's month (2025-11)" in older
