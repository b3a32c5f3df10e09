"""Who may approve a promotion: the spec's approvers and role, and the four-eyes rule."""

from __future__ import annotations

import pytest

from include.tasks.rollout.approvers import (
    NobodyMayApprove,
    Respondents,
    four_eyes,
    refusal,
    respondents,
    simple_users,
)

USERS = simple_users(["admin:admin", "operator:op", "approver:user", "viewer:viewer", "carol:USER"])


def test_the_simple_auth_managers_users_and_roles():
    assert USERS == {
        "admin": "admin",
        "operator": "op",
        "approver": "user",
        "viewer": "viewer",
        "carol": "user",
    }


def test_nobody_named_and_nobody_excluded_leaves_it_to_airflow():
    assert respondents([], None, {}, USERS, "p").allowed is None
    assert respondents([], None, {}, None, "p").allowed is None


def test_four_eyes_without_approvers_assigns_everyone_who_can_answer_but_the_author():
    excluded = four_eyes(triggered_by="operator", registered_by="carol")
    who = respondents([], None, excluded, USERS, "p")
    assert who.allowed == ["admin", "approver"]  # viewer cannot answer; operator and carol are excluded
    assert "triggered this rollout run" in who.excluded["operator"]
    assert "registered this version" in who.excluded["carol"]


def test_named_approvers_and_a_role_less_the_author():
    who = respondents(["carol"], "op", four_eyes("admin", None), USERS, "p")
    assert who.allowed == ["carol", "operator"]  # op and above, named first; admin triggered the run
    with pytest.raises(NobodyMayApprove, match="leaves nobody to approve.*carol triggered this rollout run"):
        respondents(["carol"], None, four_eyes("carol", None), USERS, "p")


def test_a_role_needs_an_auth_manager_that_lists_users():
    with pytest.raises(NobodyMayApprove, match="name the approvers in rollout.approval.approvers"):
        respondents([], "op", {}, None, "p")
    # Named approvers work with any auth manager (SSO): they become the assigned users.
    assert respondents(["alice"], None, four_eyes("bob", None), None, "p").allowed == ["alice"]


def test_an_answer_by_the_author_or_an_outsider_is_refused():
    who = respondents(["approver", "operator"], None, four_eyes("operator", None), USERS, "p")
    assert refusal(who, "approver", "approver") is None
    assert "four eyes" in refusal(who, "operator", "operator")
    assert "not among the approvers (approver)" in refusal(who, "viewer", "viewer")
    # Anyone may answer, but not the author: checked when the answer arrives (no list to assign).
    open_to_all = Respondents(None, four_eyes("bob", "alice"))
    assert refusal(open_to_all, "carol", "carol") is None
    assert "registered this version" in refusal(open_to_all, "alice", "alice")
    assert refusal(open_to_all, None, None) is None  # the timeout's default, not a person
    assert Respondents.from_dict(who.as_dict()) == who


def test_the_spec_names_approvers_once_each():
    from include.spec import Approval

    assert Approval(approvers=["alice"], role="op").role == "op"
    with pytest.raises(ValueError, match="named twice"):
        Approval(approvers=["alice", "alice"])
    with pytest.raises(ValueError):
        Approval(role="viewer")  # a viewer cannot answer a Required Action


def test_the_models_view_shows_who_approved_and_who_was_refused():
    import json

    from include.models_view import GATES, _approval, render

    tags = {
        "slipway.approval": json.dumps(
            {"decision": "approved", "by": "approver", "at": "2026-12-06 14:41:31+00:00"}
        ),
        "slipway.approval.refusals": json.dumps([{"by": "<b>operator</b>", "reason": "four eyes"}]),
    }
    text = _approval(tags)
    assert text == "approved by approver 2026-12-06 14:41 UTC (refused: <b>operator</b>)"
    assert _approval({}) == "" and _approval({"slipway.approval": "not json"}) == ""
    version = {
        "version": 2,
        "aliases": ["champion"],
        "blessing": "passed",
        "gates": dict.fromkeys(GATES, "passed"),
        "month": "2025-10",
        "data_version": "abc",
        "task": "binary",
        "headline": "0.8",
        "retired": None,
        "has_card": False,
        "approval": text,
    }
    pipeline = {
        "name": "p",
        "versions": [version],
        "aliases": {"champion": 2},
        "traffic": {"mode": "none", "version": None},
        "monitor": None,
        "events": [],
        "pending_approvals": [],
    }
    page = render({"pipelines": [pipeline], "error": None}, None)
    assert "<th>approval</th>" in page and "approved by approver" in page
    assert "&lt;b&gt;operator&lt;/b&gt;" in page and "<b>operator</b>" not in page  # escaped
