"""Who may answer a promotion's Required Action: the spec's approvers, and the four-eyes rule.

The rule: the person who triggered the rollout run, and the person who triggered the training run that
registered the version (the version's ``slipway.registered_by`` tag), may not approve it. Runs started
by a schedule or an asset event have no such person.

Airflow enforces the result first: the Required Action's *assigned users* are the only ones its REST API
and UI let answer (403 for anyone else, recorded in Airflow's audit log). Where Airflow cannot be told
(no list of users to assign: an SSO auth manager and no approvers named, or the simple auth manager in
``all_admins`` mode), the answer is checked here when it arrives, and a refused one is recorded and
asked again: :func:`refusal`.

Airflow's simple auth manager ranks its roles viewer < user < op < admin; answering a Required Action
needs ``user`` or higher.
"""

from __future__ import annotations

from dataclasses import dataclass

RANK = {"viewer": 0, "user": 1, "op": 2, "admin": 3}


class NobodyMayApprove(ValueError):
    """The spec's approvers, less the four-eyes exclusions, leave nobody: the message says what to change."""


def simple_users(entries: list[str]) -> dict[str, str]:
    """``{user: role}`` from the simple auth manager's ``name:role[:teams]`` entries (lowercased roles)."""
    users = {}
    for entry in entries:
        parts = entry.strip().split(":")
        if len(parts) >= 2 and parts[0]:
            users[parts[0]] = parts[1].strip().lower()
    return users


@dataclass(frozen=True)
class Respondents:
    """Who may answer: ``allowed`` (None: anyone Airflow lets answer) and who may not, and why."""

    allowed: list[str] | None
    excluded: dict[str, str]  # user -> why (four eyes)

    def as_dict(self) -> dict:
        return {"allowed": self.allowed, "excluded": self.excluded}

    @classmethod
    def from_dict(cls, data: dict) -> Respondents:
        return cls(data.get("allowed"), dict(data.get("excluded") or {}))

    def describe(self) -> str:
        """One line for the approval's evidence."""
        who = "anyone Airflow lets answer" if self.allowed is None else ", ".join(self.allowed)
        line = f"May approve: {who}."
        if self.excluded:
            line += (
                " Four eyes: " + "; ".join(f"{u} may not ({why})" for u, why in self.excluded.items()) + "."
            )
        return line


def four_eyes(triggered_by: str | None, registered_by: str | None) -> dict[str, str]:
    """The people who may not approve, each with the reason."""
    out: dict[str, str] = {}
    if registered_by:
        out[registered_by] = "triggered the training run that registered this version"
    if triggered_by:
        out[triggered_by] = "triggered this rollout run"
    return out


def respondents(
    approvers: list[str],
    role: str | None,
    excluded: dict[str, str],
    users: dict[str, str] | None,
    pipeline: str,
) -> Respondents:
    """Who may answer, from the spec's ``rollout.approval`` and the auth manager's users.

    ``users`` is the simple auth manager's ``{user: role}``, or None when the auth manager cannot list
    its users (then a ``role`` cannot be resolved, and nobody can be assigned unless named).
    Raises :class:`NobodyMayApprove` when the rules leave nobody.
    """
    field = f"rollout.approval of pipeline {pipeline!r}"
    if role is not None and users is None:
        raise NobodyMayApprove(
            f"{field} names the role {role!r}, but Airflow's auth manager cannot list users by role (only "
            "the simple auth manager can): name the approvers in rollout.approval.approvers instead"
        )
    named: list[str] = list(approvers)
    if role is not None and users is not None:
        named += sorted(u for u, r in users.items() if RANK.get(r, -1) >= RANK[role] and u not in named)
    if not named:
        if not excluded or users is None:
            return Respondents(None, excluded)  # anyone; the answer is checked when it arrives
        named = sorted(u for u, r in users.items() if RANK.get(r, -1) >= RANK["user"])
    allowed = [u for u in named if u not in excluded]
    if not allowed:
        rules = ", ".join(f"{u} {why}" for u, why in excluded.items()) or "nobody is excluded"
        raise NobodyMayApprove(
            f"{field} leaves nobody to approve: the approvers are {named}, and four eyes exclude them "
            f"({rules}). Name another approver in the spec, or have someone else trigger the run"
        )
    return Respondents(allowed, excluded)


def refusal(respondents: Respondents, user_id: str | None, user_name: str | None) -> str | None:
    """Why an answer by this user is refused, or None when it stands."""
    who = user_id or user_name or ""
    if not who:
        return None  # the scheduler's timeout default: no person answered
    if who in respondents.excluded:
        return f"{who} {respondents.excluded[who]}: four eyes, another person must approve"
    if respondents.allowed is not None and who not in respondents.allowed:
        return f"{who} is not among the approvers ({', '.join(respondents.allowed)})"
    return None
