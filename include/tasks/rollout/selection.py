"""Which version a rollout may take: the one holding ``candidate``, and only if it moves forward.

A rollout run names a version (its asset event's, or the trigger form's); it is rolled out only if it
is the version the ``candidate`` alias holds, is blessed, and is none of: the champion, ``previous``,
a version that was champion before (demoted), a retired one, or one trained on a month older than the
champion's. Anything else is a recorded skip, not a failure: nothing is wrong, there is just nothing
new to roll out (a past month re-run reuses its old version, say).
"""

from __future__ import annotations

import json


def _was_champion(tags: dict[str, str], event_prefix: str) -> bool:
    from include.registry import TAG_WAS_CHAMPION

    if TAG_WAS_CHAMPION in tags:  # it was champion, and (checked before) is not now
        return True
    for key, value in tags.items():  # versions whose events were tags
        if key.startswith(event_prefix):
            try:
                if json.loads(value).get("event") == "demoted":
                    return True
            except (ValueError, AttributeError):
                continue
    return False


def refusal(
    version: int,
    tags: dict[str, str],
    aliases: dict[str, int],
    champion_month: str | None,
    event_prefix: str,
) -> str | None:
    """Why ``version`` is not rolled out (a skip), or None when it may be."""
    candidate = aliases.get("candidate")
    if aliases.get("champion") == version:
        return f"version {version} is already the champion"
    if candidate != version:
        held = f"version {candidate}" if candidate else "no version"
        return (
            f"version {version} is not the candidate ('candidate' holds {held}); only the candidate is "
            "rolled out (move the alias, or train the month again)"
        )
    if aliases.get("previous") == version:
        return f"version {version} is 'previous' (the champion it replaced)"
    if _was_champion(tags, event_prefix):
        return f"version {version} was champion before and was demoted"
    if tags.get("slipway.retired"):
        return f"version {version} is retired ({tags['slipway.retired']})"
    month = tags.get("slipway.month") or ""
    if champion_month and month and month < champion_month:
        return f"version {version} was trained on {month}, before the champion's month ({champion_month})"
    return None
