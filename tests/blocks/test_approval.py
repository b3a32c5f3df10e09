"""The approval operator: it assigns the people allowed to answer, and refuses (records, asks again)
an Approve by the run's author that reaches it anyway (an auth manager that cannot assign users)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import TaskAwaitingInput

from include.blocks import rollout
from include.tasks.rollout.approvers import four_eyes, respondents


class _TI:
    def __init__(self, xcoms: dict):
        self.xcoms = dict(xcoms)
        self.id = "0190-ti"

    def xcom_pull(self, task_ids=None, key="return_value"):
        return self.xcoms.get((task_ids, key))

    def xcom_push(self, key, value):
        self.xcoms[("approve_promotion", key)] = value


@pytest.fixture
def approval(monkeypatch):
    import airflow.providers.standard.operators.hitl as hitl

    asked: list[dict] = []
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kw: asked.append(kw))
    tags: dict = {}
    client = SimpleNamespace(set_model_version_tag=lambda n, v, k, val: tags.__setitem__((n, v, k), val))
    monkeypatch.setattr(rollout, "mlflow_client", lambda: client)
    op = rollout.ApprovePromotion(
        task_id="approve_promotion",
        pipeline="churn",
        subject="Promote?",
        defaults="Reject",
        response_timeout=timedelta(hours=1),
    )
    who = respondents(
        [],
        None,
        four_eyes(triggered_by="operator", registered_by=None),
        {"operator": "op", "approver": "user"},
        "churn",
    )
    ti = _TI(
        {
            ("summarise_evidence", "return_value"): {"respondents": who.as_dict()},
            ("select_candidate", "return_value"): {"version": 3},
        }
    )
    return SimpleNamespace(op=op, ti=ti, context={"ti": ti, "task_instance": ti}, asked=asked, tags=tags)


def _event(user: str, option: str = "Approve") -> dict:
    return {
        "chosen_options": [option],
        "params_input": {},
        "responded_at": datetime.now(UTC),
        "responded_by_user": {"id": user, "name": user},
    }


def test_the_question_is_assigned_to_the_allowed_people_only(approval):
    with pytest.raises(TaskAwaitingInput):  # parks the task until someone answers
        approval.op.execute(approval.context)
    assert approval.asked[-1]["assigned_users"] == [{"id": "approver", "name": "approver"}]
    assert approval.ti.xcoms[("approve_promotion", "asked_at")]


def test_a_self_approval_is_refused_recorded_and_asked_again(approval):
    approval.ti.xcom_push("asked_at", (datetime.now(UTC) - timedelta(minutes=50)).isoformat())
    with pytest.raises(TaskAwaitingInput):
        approval.op.execute_complete(approval.context, _event("operator"))
    refusals = approval.ti.xcoms[("approve_promotion", "refusals")]
    assert refusals[0]["by"] == "operator" and "four eyes" in refusals[0]["reason"]
    assert "operator" in approval.tags[("churn", "3", "slipway.approval.refusals")]
    assert ("approve_promotion", "decision") not in approval.ti.xcoms  # no decision was taken
    # Asked again of the approver, for what remains of the hour (not a fresh hour).
    assert approval.asked[-1]["assigned_users"] == [{"id": "approver", "name": "approver"}]
    assert timedelta(minutes=9) < approval.op.response_timeout <= timedelta(minutes=10)


def test_the_authors_reject_and_an_approvers_approve_stand(approval):
    # The author may stop a candidate: a Reject is not refused (no downstream here: nothing to skip).
    assert approval.op.execute_complete(approval.context, _event("operator", "Reject"))["chosen_options"] == [
        "Reject"
    ]
    assert "refusals" not in {k for _, k in approval.ti.xcoms}
    assert approval.ti.xcoms[("approve_promotion", "decision")]["chosen_options"] == ["Reject"]
    out = approval.op.execute_complete(approval.context, _event("approver"))
    assert approval.ti.xcoms[("approve_promotion", "decision")]["responded_by_user"]["name"] == "approver"
    assert out["chosen_options"] == ["Approve"]
