"""The shipped multiclass and regression pipelines train end to end from their spec and suite alone."""

from __future__ import annotations

import pytest

from tests.support.processes import clean_env, lineage, slipway

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("pipeline", "headline", "floor"),
    [("job_runtime", "macro_f1", 0.5), ("salary_benchmark", "r2", 0.25)],
)
def test_a_shipped_pipeline_of_each_task_trains_gates_and_registers(tmp_path, pipeline, headline, floor):
    env = clean_env(SLIPWAY_HOME=str(tmp_path / "state"))
    slipway(env, "seed", pipeline)
    out = slipway(env, "run", pipeline, "--month", "2025-12").stdout
    rec = lineage(env, f"{pipeline}@candidate")
    assert rec["dag_run"]["dag_id"] == f"{pipeline}__train"
    assert rec["metrics"][headline] > floor
    assert rec["validation"]["result"] == "passed"
    assert rec["task"] == ("multiclass" if pipeline == "job_runtime" else "regression")
    assert rec["decision_threshold"] is None and rec["decision"] is not None
    # every gate of the task, and the ones that mean nothing for it are not applicable with the reason
    assert "blessing   passed" in out
    if pipeline == "job_runtime":
        assert "evaluation.recall.L" in out and "fairness.sensitive_attributes" in out
        assert "Jobs are not people" in out
    else:
        assert "fairness.mean_residual_difference[race]" in out and "onnx.max_rel_diff" in out
