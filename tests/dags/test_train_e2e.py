"""End to end: telco_churn__train with dag.test() on the embedded stack (SQLite, local lake, local
DVC remote), then bad data that must stop the pipeline without touching what is stored."""

from __future__ import annotations

import hashlib

import pytest

from include import storage
from tests.support.processes import ROOT, clean_env, lineage, mlflow_client, slipway, task_runs

pytestmark = pytest.mark.e2e

TASKS = {
    "wait_for_batch",
    "ingest_batch",
    "curate_feedback",
    "version_snapshot",
    "validate_snapshot",
    "train_model",
    "evaluate_model",
    "compare_champion",
    "check_fairness",
    "explain_model",
    "check_robustness",
    "optimise_onnx",
    "bless_candidate",
    "write_model_card",
    "register_model",
}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    home = tmp_path_factory.mktemp("embedded")
    env = clean_env(SLIPWAY_HOME=str(home))
    slipway(env, "seed")
    run = slipway(env, "run", "telco_churn", "--month", "2025-12")
    return {"home": home, "env": env, "run": run, "tracking": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"}


def _lake(home):
    return {
        u: hashlib.sha256(storage.read_bytes(u)).hexdigest()
        for u in storage.list_uris(storage.path_to_uri(home / "lake"))
    }


def test_run_registers_a_candidate_with_full_lineage(embedded):
    rec = lineage(embedded["env"], "telco_churn@candidate")
    assert rec["model"]["name"] == "telco_churn" and rec["model"]["version"] == 1
    assert rec["model"]["aliases"] == ["candidate"]
    assert rec["dag_run"]["dag_id"] == "telco_churn__train"
    assert rec["dag_run"]["state"] == "success"
    assert rec["dag_run"]["data_interval"][0].startswith("2025-12-01")
    assert {t["task_id"] for t in rec["tasks"]} == TASKS
    assert all(t["state"] == "success" for t in rec["tasks"])
    assert len(rec["data_version"]["dvc_md5"]) == 32
    assert rec["data_version"]["uri"].endswith(
        f"/files/md5/{rec['data_version']['dvc_md5'][:2]}/{rec['data_version']['dvc_md5'][2:]}"
    )
    assert rec["validation"]["result"] == "passed" and rec["validation"]["expectations_evaluated"] >= 30
    assert rec["metrics"]["roc_auc"] > 0.8
    assert set(rec["metrics"]) >= {"roc_auc", "pr_auc", "f1", "precision", "recall", "brier"}
    assert rec["code_version"] not in (None, "", "unknown")
    # Issue-3 gates: a complete, passing blessing, a model card, ONNX as the deployable artifact.
    assert rec["blessing"]["state"] == "passed"
    assert set(rec["blessing"]["by_gate"]) == {
        "data_validation",
        "evaluation",
        "champion",
        "business",
        "fairness",
        "explainability",
        "robustness",
        "onnx",
    }
    # No champion yet: the comparison had nothing to check and says so; every other gate measured a pass.
    assert rec["blessing"]["by_gate"].pop("champion") == "not_applicable"
    assert set(rec["blessing"]["by_gate"].values()) == {"passed"}
    by_metric = {(r["gate"], r["metric"]): r for r in rec["gate_results"]}
    assert by_metric[("champion", "champion_present")]["status"] == "not_applicable"
    assert "no champion yet" in by_metric[("champion", "champion_present")]["note"]
    assert by_metric[("onnx", "label_agreement")]["status"] == "passed"
    assert any(m.startswith("proxy_roc_auc[") for g, m in by_metric if g == "explainability")
    assert rec["model_card"].endswith("/model_card/model_card.html")
    assert 0 < rec["decision_threshold"] < 1 and rec["value_per_1000"] > 0


def test_blessing_record_model_card_and_onnx_artifact(embedded, monkeypatch):
    import json
    from pathlib import Path

    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", embedded["tracking"])
    mlflow.set_tracking_uri(embedded["tracking"])
    client = mlflow_client(embedded["tracking"])
    mv = client.get_model_version_by_alias("telco_churn", "candidate")
    root = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, tracking_uri=embedded["tracking"]))
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert {
        "blessing.json",
        "sklearn/model.skops",
        "model_card/model_card.md",
        "model_card/model_card.html",
    } <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))]
    blessing = json.loads((root / "blessing.json").read_text())
    assert blessing["complete"] and blessing["state"] == "passed" and not blessing["missing"]
    for r in blessing["results"]:
        assert {"gate", "metric", "threshold", "value", "status", "evidence_uri"} <= set(r)
        assert r["status"] in ("passed", "not_applicable")
    assert mv.tags["slipway.blessing.champion"] == "not_applicable"
    assert "not applicable: no champion yet" in (root / "model_card" / "model_card.md").read_text()
    card = (root / "model_card" / "model_card.md").read_text()
    for section in (
        "Intended use",
        "Training data",
        "Business value",
        "Fairness",
        "Explainability (SHAP)",
        "Robustness",
        "ONNX",
        "Limitations",
        "Ethical considerations",
        "Blessing",
    ):
        assert f"## {section}" in card
    assert "senior_citizen" in card and "![SHAP importance]" in card
    onnx_model = Path(mlflow.artifacts.download_artifacts(mv.source, tracking_uri=embedded["tracking"]))
    assert "onnx" in (onnx_model / "MLmodel").read_text()
    assert list(onnx_model.rglob("*.onnx"))


def test_one_nested_mlflow_run_per_task_instance(embedded):
    client = mlflow_client(embedded["tracking"])
    runs = task_runs(client, "telco_churn", "telco_churn__train")
    assert sorted(r.data.tags["slipway.task_id"] for r in runs) == sorted(TASKS)
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.data.tags["slipway.level"] == "dag_run" and parent.info.status == "FINISHED"
    for r in runs:
        tags = r.data.tags
        for key in (
            "slipway.dag_id",
            "slipway.run_id",
            "slipway.task_id",
            "slipway.try_number",
            "slipway.code_version",
        ):
            assert tags.get(key), f"{tags['slipway.task_id']} lacks {key}"
        assert r.info.status == "FINISHED"
    by_task = {r.data.tags["slipway.task_id"]: r for r in runs}
    # Data versions read and written, with mlflow.log_input.
    assert "training_snapshot" in {i.dataset.name for i in by_task["train_model"].inputs.dataset_inputs}
    written = by_task["version_snapshot"].data.tags["slipway.data.written"]
    assert "training_snapshot" in written and '"kind": "dvc"' in written
    # Validation artifacts: result JSON and Data Docs HTML.
    arts = {a.path for a in client.list_artifacts(by_task["validate_snapshot"].info.run_id, "validation")}
    assert "validation/validation_result.json" in arts and "validation/data_docs" in arts


def test_lake_layout_pii_and_dvc_remote(embedded):
    home = embedded["home"]
    lake = _lake(home)
    batches = sorted(u for u in lake if "/batches/month=" in u)
    assert len(batches) == 12 and batches[-1].endswith("/telco_churn/batches/month=2025-12/batch.parquet")
    assert all(b"CUST-" not in storage.read_bytes(u) for u in batches)
    remote = storage.list_uris(storage.path_to_uri(home / "dvc-remote"))
    assert len(remote) == 1 and "/files/md5/" in remote[0]


def test_rerun_of_the_same_interval_reuses_its_version(embedded):
    before = _lake(embedded["home"])
    proc = slipway(embedded["env"], "run", "telco_churn", "--month", "2025-12")
    after = _lake(embedded["home"])
    # Every object, byte for byte: data, splits, model (canonical skops), ONNX graph, SHAP plots and
    # importance. Run-dependent measurements (latencies, the model card) live in MLflow, not the lake.
    assert before == after, sorted(u for u in set(before) | set(after) if before.get(u) != after.get(u))
    assert any(u.endswith("/model.skops") for u in before) and any(u.endswith("/model.onnx") for u in before)
    assert not any("/model_card/" in u or u.endswith("onnx_report.json") for u in before)
    rec = lineage(embedded["env"], "telco_churn@candidate")
    assert rec["model"]["version"] == 1, "the same interval, data and model must reuse version 1"
    client = mlflow_client(embedded["tracking"])
    assert len(client.search_model_versions("name = 'telco_churn'")) == 1
    # `slipway run` ends with the same summary as the demo: the version and each gate's values.
    assert "telco_churn version 1 ('candidate')" in proc.stdout
    assert "proxy_roc_auc[senior_citizen]" in proc.stdout and "not applicable: no champion yet" in proc.stdout


def test_backfill_registers_but_never_moves_candidate_back(embedded):
    proc = slipway(embedded["env"], "run", "telco_churn", "--month", "2025-11")
    client = mlflow_client(embedded["tracking"])
    versions = {int(v.version): v for v in client.search_model_versions("name = 'telco_churn'")}
    assert sorted(versions) == [1, 2]
    assert versions[2].tags["slipway.month"] == "2025-11"
    assert int(client.get_model_version_by_alias("telco_churn", "candidate").version) == 1
    assert "telco_churn version 2 (no alias)" in proc.stdout


def test_bad_batch_stops_the_run_and_loses_nothing(embedded):
    """A batch with a missing column fails ingest; lake, DVC remote and registry are untouched."""
    import pandas as pd

    env, home = embedded["env"], embedded["home"]
    landing = home / "landing" / "telco_churn"
    bad = pd.read_csv(landing / "2025-12.csv").drop(columns=["contract"])
    bad["customer_id"] = bad["customer_id"].str.replace("CUST-", "NEW-")
    bad.to_csv(landing / "2026-01.csv", index=False)
    lake_before = _lake(home)
    remote_before = storage.list_uris(storage.path_to_uri(home / "dvc-remote"))
    alias_before = lineage(env, "telco_churn@candidate")["model"]["version"]

    proc = slipway(env, "run", "telco_churn", "--month", "2026-01", check=False)
    assert proc.returncode != 0
    assert "lacks required columns ['contract']" in proc.stdout + proc.stderr
    assert _lake(home) == lake_before
    assert storage.list_uris(storage.path_to_uri(home / "dvc-remote")) == remote_before
    assert lineage(env, "telco_churn@candidate")["model"]["version"] == alias_before
    client = mlflow_client(embedded["tracking"])
    runs = [
        r
        for r in task_runs(client, "telco_churn", "telco_churn__train")
        if r.data.tags["slipway.run_id"].startswith("manual")
    ]
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert [r.data.tags["slipway.task_id"] for r in failed] == ["ingest_batch"]
    assert "contract" in failed[0].data.tags["slipway.error"]


def test_failing_suite_stops_before_training(embedded):
    """Data that fits the schema but breaks the suite: validation fails, nothing downstream runs."""
    import pandas as pd

    env, home = embedded["env"], embedded["home"]
    landing = home / "landing" / "telco_churn"
    (landing / "2026-01.csv").unlink(missing_ok=True)
    odd = pd.read_csv(landing / "2025-12.csv")
    odd["customer_id"] = odd["customer_id"].str.replace("CUST-", "FEB-")
    odd.loc[:9, "tenure"] = 999
    odd.loc[:4, "contract"] = "Lifetime"
    odd.to_csv(landing / "2026-02.csv", index=False)
    alias_before = lineage(env, "telco_churn@candidate")["model"]["version"]
    proc = slipway(env, "run", "telco_churn", "--month", "2026-02", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Data validation failed" in out and "tenure" in out and "contract" in out
    assert lineage(env, "telco_churn@candidate")["model"]["version"] == alias_before
    client = mlflow_client(embedded["tracking"])
    feb = [
        r
        for r in task_runs(client, "telco_churn", "telco_churn__train")
        if "2026-02" in r.data.tags.get("slipway.interval_start", "")
    ]
    states = {r.data.tags["slipway.task_id"]: r.info.status for r in feb}
    assert states["validate_snapshot"] == "FAILED"
    assert "train_model" not in states and "register_model" not in states
    # The listener plugin closed the DAG run's parent run as failed.
    parent = client.get_run(feb[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED" and parent.data.tags["slipway.state"] == "failed"


def test_refused_candidate_names_every_failed_gate_and_moves_nothing(embedded, tmp_path, monkeypatch):
    """Impossibly tight fairness and robustness: one run reports both, then refuses; nothing moves."""
    import json
    import shutil
    from pathlib import Path

    import mlflow
    import yaml

    env = embedded["env"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", embedded["tracking"])
    mlflow.set_tracking_uri(embedded["tracking"])
    client = mlflow_client(embedded["tracking"])
    current = client.get_model_version_by_alias("telco_churn", "candidate")
    client.set_registered_model_alias("telco_churn", "champion", current.version)  # as a promotion would
    champion_tags = dict(client.get_model_version("telco_churn", current.version).tags)
    versions = len(client.search_model_versions("name = 'telco_churn'"))

    specs = tmp_path / "pipelines"
    specs.mkdir()
    raw = yaml.safe_load((ROOT / "include" / "pipelines" / "telco_churn.yaml").read_text())
    raw["gates"]["fairness"]["max_demographic_parity_difference"] = 0.0001
    raw["gates"]["robustness"]["max_flip_rate"] = 0.0
    (specs / "telco_churn.yaml").write_text(yaml.safe_dump(raw))
    strict = {**env, "SLIPWAY_PIPELINES_DIR": str(specs)}
    proc = slipway(strict, "run", "telco_churn", "--month", "2025-12", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "fairness: demographic_parity_difference[" in out and "required <= 0.0001" in out
    assert "robustness: flip_rate" in out and "required <= 0.0" in out

    model = client.get_registered_model("telco_churn")
    assert dict(model.aliases) == {"candidate": current.version, "champion": current.version}
    assert len(client.search_model_versions("name = 'telco_churn'")) == versions
    assert dict(client.get_model_version("telco_churn", current.version).tags) == champion_tags
    # The gates measured and handed on; the blessing judged them all and failed, on record on the parent.
    runs = task_runs(client, "telco_churn", "telco_churn__train")
    latest = max(
        (r for r in runs if r.data.tags["slipway.task_id"] == "bless_candidate"),
        key=lambda r: r.info.start_time,
    )
    assert latest.info.status == "FAILED"
    parent = client.get_run(latest.data.tags["mlflow.parentRunId"])
    siblings = {
        r.data.tags["slipway.task_id"]: r
        for r in runs
        if r.data.tags["mlflow.parentRunId"] == parent.info.run_id
    }
    assert siblings["check_fairness"].info.status == "FINISHED"
    assert siblings["check_fairness"].data.tags["slipway.gate.fairness"] == "failed"
    assert siblings["check_robustness"].data.tags["slipway.gate.robustness"] == "failed"
    assert "write_model_card" not in siblings and "register_model" not in siblings
    assert parent.data.tags["slipway.blessing"] == "failed"
    assert parent.data.tags["slipway.blessing.failed_gates"] == "fairness,robustness"
    # The DAG run's MLflow run explains itself: description, the failure message, headline values.
    assert "robustness: flip_rate" in parent.data.tags["slipway.failure"]
    note = parent.data.tags["mlflow.note.content"]
    assert "data month **2025-12**, failed" in note and "gates fairness,robustness failed" in note
    assert parent.data.tags["slipway.run_type"] == "manual"
    assert parent.data.metrics["gate.robustness.flip_rate"] > 0 and "test_roc_auc" in parent.data.metrics
    blessing = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=parent.info.run_id, artifact_path="blessing.json", tracking_uri=embedded["tracking"]
            )
        ).read_text()
    )
    assert blessing["state"] == "failed"
    assert {r["gate"] for r in blessing["failed"]} == {"fairness", "robustness"}
    compared = [
        r
        for r in runs
        if r.data.tags["slipway.task_id"] == "compare_champion"
        and r.data.tags["mlflow.parentRunId"] == parent.info.run_id
    ]
    assert compared and compared[0].data.tags["slipway.gate.champion"] == "passed"  # measured against v1
    shutil.rmtree(specs)


def test_a_planted_identifier_never_leaves_the_process(embedded):
    """A raw customer id in a refused batch: not in the output, the task logs, or any MLflow tag or param."""
    import pandas as pd

    env, home = embedded["env"], embedded["home"]
    planted = "CUST-PLANTED-7319"
    landing = home / "landing" / "telco_churn"
    batch = pd.read_csv(landing / "2025-12.csv").head(40)
    batch["customer_id"] = [f"CUST-APR-{i}" for i in range(len(batch))]
    batch.loc[[3, 7], "customer_id"] = planted
    batch.to_csv(landing / "2026-04.csv", index=False)
    proc = slipway(env, "run", "telco_churn", "--month", "2026-04", check=False)
    (landing / "2026-04.csv").unlink()
    assert proc.returncode != 0 and "repeats in 1 rows" in proc.stdout + proc.stderr
    assert planted not in proc.stdout + proc.stderr
    for log in (home / "logs").rglob("*"):
        if log.is_file():
            assert planted not in log.read_text(errors="replace"), log
    client = mlflow_client(embedded["tracking"])
    exp = client.get_experiment_by_name("telco_churn")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert any(
        r.data.tags.get("slipway.task_id") == "ingest_batch" and r.info.status == "FAILED" for r in runs
    )
    for r in runs:
        assert planted not in str(r.data.tags) + str(r.data.params), r.info.run_id
