"""`make demo` twice: the second run starts from an empty state folder, the first one's state kept aside."""

from __future__ import annotations

import pytest

from include.demo.lifecycle import _fresh_state


def test_an_earlier_demos_state_is_moved_aside_not_mixed_in(tmp_path, monkeypatch):
    monkeypatch.delenv("SLIPWAY_HOME", raising=False)
    home = tmp_path / ".slipway"
    (home / "airflow").mkdir(parents=True)
    (home / "airflow" / "airflow.db").write_text("runs of the first demo")
    (tmp_path / ".slipway.previous").mkdir()  # the one before: replaced
    _fresh_state(home)
    assert not home.exists()
    assert (tmp_path / ".slipway.previous" / "airflow" / "airflow.db").read_text() == "runs of the first demo"
    _fresh_state(home)  # nothing there: nothing to do


def test_a_state_folder_someone_named_is_refused_not_moved(tmp_path, monkeypatch):
    home = tmp_path / "prod-state"
    home.mkdir()
    (home / "keep.txt").write_text("x")
    monkeypatch.setenv("SLIPWAY_HOME", str(home))
    with pytest.raises(SystemExit, match="already holds a state; the demo starts from an empty state folder"):
        _fresh_state(home)
    assert (home / "keep.txt").exists()
