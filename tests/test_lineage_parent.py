"""One MLflow parent run per DAG run, even when the run's first tasks start together and MLflow is
slow to create a run (it has no unique key; the search and the creation run under a lock)."""

from __future__ import annotations

import threading
import time

import pytest


@pytest.mark.parametrize("workers", [4])
def test_parallel_first_tasks_make_one_parent(isolated_home, monkeypatch, workers):
    import mlflow

    from include import lineage

    monkeypatch.setenv("SLIPWAY_SERVING_DB", f"sqlite:///{isolated_home / 'serving' / 'serving.db'}")
    original = mlflow.MlflowClient.create_run

    def slow_create(self, *args, **kwargs):  # MLflow under load: the window between search and create
        time.sleep(0.5)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "create_run", slow_create)
    got: list[str] = []
    start = threading.Barrier(workers)

    def first_task() -> None:
        start.wait()
        got.append(lineage.parent_run("telco_churn", "telco_churn__train", "manual__race").info.run_id)

    threads = [threading.Thread(target=first_task) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == workers and len(set(got)) == 1, got
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("telco_churn")
    parents = client.search_runs(
        [exp.experiment_id], "tags.`slipway.level` = 'dag_run' and tags.`slipway.run_id` = 'manual__race'"
    )
    assert [r.info.run_id for r in parents] == got[:1]
