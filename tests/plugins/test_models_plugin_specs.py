"""The Models view reads the pipeline specs again only when a spec file changes."""

from __future__ import annotations

import shutil

import include.spec
from tests.support.processes import ROOT


def test_spec_names_are_reread_only_when_a_spec_file_changes(tmp_path, monkeypatch):
    from plugins import slipway_models

    monkeypatch.setenv("SLIPWAY_PIPELINES_DIR", str(tmp_path))
    monkeypatch.setitem(slipway_models._SPECS, "signature", None)
    shutil.copy(ROOT / "include" / "pipelines" / "telco_churn.yaml", tmp_path / "telco_churn.yaml")
    calls = []
    real = include.spec.discover
    monkeypatch.setattr(include.spec, "discover", lambda *a, **k: calls.append(1) or real(*a, **k))

    assert slipway_models._pipeline_names() == ["telco_churn"]
    assert slipway_models._pipeline_names() == ["telco_churn"]
    assert len(calls) == 1  # unchanged folder: not parsed again

    text = (tmp_path / "telco_churn.yaml").read_text().replace("name: telco_churn", "name: churn_b", 1)
    (tmp_path / "churn_b.yaml").write_text(text)
    assert sorted(slipway_models._pipeline_names()) == ["churn_b", "telco_churn"]
    (tmp_path / "churn_b.yaml").unlink()
    assert slipway_models._pipeline_names() == ["telco_churn"]
    assert len(calls) == 3
