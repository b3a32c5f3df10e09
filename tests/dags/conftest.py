"""Fixtures of the DAG tests: the one real Airflow stack the session shares (see ``live.py``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory):
    from tests.dags.live import LiveStack

    stack = LiveStack(tmp_path_factory.mktemp("live")).start()
    try:
        yield stack
    finally:
        stack.stop()
