"""Test isolation: every test session gets its own state folder; nothing touches the user's .slipway/."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="slipway-test-"))

# Set before anything imports Airflow or MLflow: both read their configuration at import time.
for var in list(os.environ):
    if var.startswith(("AIRFLOW", "SLIPWAY_", "MLFLOW_")) or var in {"AWS_ENDPOINT_URL"}:
        del os.environ[var]
os.environ["SLIPWAY_HOME"] = str(_SESSION_HOME)
os.environ["SLIPWAY_PII_KEY"] = "test-only-pii-key"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["GIT_PYTHON_REFRESH"] = "quiet"

from include.settings import airflow_environment  # noqa: E402

os.environ.update(airflow_environment())

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _stray_files() -> set[str]:
    """Untracked or ignored files in the checkout, except caches and the embedded state folder."""
    proc = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--ignored", "--untracked-files=all"],
        capture_output=True,
        text=True,
    )
    keep_out = ("__pycache__/", ".pytest_cache/", ".ruff_cache/", ".mypy_cache/", ".venv/", ".slipway/")
    return {
        line[3:]
        for line in proc.stdout.splitlines()
        if line[:2] in ("??", "!!") and not any(part in line[3:] for part in keep_out)
    }


_STRAY_AT_START = _stray_files()


@functools.cache
def _group(path: str) -> str:
    """The unit a pytest-xdist worker takes whole (``make test`` runs ``-n 3``): every module on the
    one live Airflow stack together (it starts once per worker, so once), the serving tests and every
    module on the service harness together (they share one trained registry and one service),
    otherwise the module (its fixtures built once)."""
    source = PROJECT_ROOT / path
    text = source.read_text() if source.suffix == ".py" else ""
    if "live_stack" in text:
        return "live"
    if path.startswith("tests/serving/") or "tests.support.service" in text:
        return "serving"
    return path


@pytest.hookimpl(optionalhook=True)  # a run without pytest-xdist (-p no:xdist) has no such hook
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scope scheduling, with the scopes of :func:`_group` (its ``xdist_group`` marks
    are lost on pytest 9: the node id they are appended to is read-only there)."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the order above (not the largest group first)

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid.split("::", 1)[0])

    return ByGroup(config, log)


# The live stack's modules run in the order of a model's life: trained, rolled out (the first
# champion), past months trained on the scheduler, then monitored, last: the monitor's drift starts
# a retrain of the newest month, which no later test may find half done.
LIVE_ORDER = (
    "test_local_run_record",
    "test_rollout_e2e",
    "test_models_view",
    "test_scheduler_e2e",
    "test_task_kinds_lifecycle_e2e",
    "test_monitor_e2e",
    "test_score_e2e",
    "test_retire_e2e",
)


# Modules of a minute or more (measured), started before the quick ones so none is left running
# alone at the end.
SLOW_MODULES = (
    "tests/deploy/test_topology.py",
    "tests/dags/test_train_e2e.py",
    "tests/dags/test_train_e2e_production.py",
    "tests/dags/test_second_pipeline_e2e.py",
    "tests/dags/test_feedback_e2e.py",
    "tests/dags/test_dag_processor.py",
    "tests/deploy/test_make_up.py",
    "tests/dags/test_lineage_faults.py",
)


def _rank(item) -> tuple[int, int]:
    path = Path(str(item.path)).resolve().relative_to(PROJECT_ROOT).as_posix()
    group = _group(path)
    if group == "live":
        return 0, LIVE_ORDER.index(item.path.stem) if item.path.stem in LIVE_ORDER else len(LIVE_ORDER)
    if group == "serving":
        return 1, 0
    return (2, SLOW_MODULES.index(path)) if path in SLOW_MODULES else (3, 0)


def _uses_shared(item, name: str) -> bool:
    """Whether ``item`` uses this file's session fixture ``name`` (not a module's own of that name)."""
    defs = item._fixtureinfo.name2fixturedefs.get(name)
    return bool(defs) and defs[-1].func.__module__ == __name__


def pytest_collection_modifyitems(session, config, items):
    """Mark what needs a shared stack (``live``: the Airflow stack; ``service``: the trained registry
    and the service), so ``make test-unit`` can leave them out; then the longest groups first (the
    live stack's, mostly waiting on the scheduler, the serving tests, the slow modules), so each
    worker starts on one and the quick modules fill in last."""
    for item in items:
        if _uses_shared(item, "live_stack"):
            item.add_marker(pytest.mark.live)
        if _uses_shared(item, "registry") or _uses_shared(item, "service"):
            item.add_marker(pytest.mark.service)
    items.sort(key=_rank)  # stable: the other modules keep their order


def pytest_sessionfinish(session, exitstatus):
    """After every test of every worker: the suite wrote only to temporary folders (no ./mlruns,
    no state folder, no stray report in the checkout); a file left behind fails the run."""
    if not hasattr(session.config, "workerinput"):  # the controller, or a run without workers
        new = sorted(_stray_files() - _STRAY_AT_START)
        if new:
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            message = f"the test suite left files in the checkout: {new[:10]}"
            if reporter is not None:
                reporter.write_line(f"FAILED {message}", red=True, bold=True)
            else:
                print(f"FAILED {message}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture
def telco_spec():
    from include.spec import load_spec

    return load_spec(PROJECT_ROOT / "include" / "pipelines" / "telco_churn.yaml")


@pytest.fixture(scope="session")
def wa_churn():
    """The full demo table (7,043 rows), loaded once."""
    from include.demo.data import load_wa_churn

    return load_wa_churn()


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """A fresh state folder for one test (lake, landing, DVC, MLflow)."""
    home = tmp_path / "state"
    monkeypatch.setenv("SLIPWAY_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    home.mkdir()
    # MLflow puts the artifacts of a database-backed store under ./mlruns: keep them in the test's folder.
    monkeypatch.chdir(home)
    return home


@pytest.fixture(scope="session")
def moto_s3():
    """moto's standalone S3 server on a free loopback port, stopped at the end of the session."""
    from moto.server import ThreadedMotoServer

    from tests.support.processes import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_s3, monkeypatch):
    """Point boto3 (and DVC) at the moto server with throwaway credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_s3


@pytest.fixture
def telco_trained(tmp_path, telco_spec, wa_churn):
    """The telco logistic regression trained on the first 1,500 customers (model, splits under tmp_path)."""
    from include import storage
    from include.tasks.train.fit import train_model
    from tests.support.snapshots import make_snapshot

    snap = make_snapshot(wa_churn.iloc[:1500], telco_spec, tmp_path / "snap.parquet")
    return train_model(telco_spec, snap, storage.path_to_uri(tmp_path / "run"))


# --------------------------------------------------------------------------- PostgreSQL and the log
@pytest.fixture
def pg_db():
    """A fresh, uniquely named PostgreSQL database for one test; skipped if the server is unreachable.
    Dropped at teardown even if the test failed (connections allowed again, sessions ended)."""
    import uuid

    from tests.support.pg import PgDatabase, create_databases, drop_databases, pg_url

    psycopg2 = pytest.importorskip("psycopg2")
    name = f"slipway_test_{uuid.uuid4().hex[:12]}"
    try:
        create_databases(name)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    try:
        yield PgDatabase(name, pg_url(name))
    finally:
        drop_databases(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def log_url(request, tmp_path):
    """The prediction log's database URL, once on SQLite and once on a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'serving.db'}"
    return request.getfixturevalue("pg_db").url


# --------------------------------------------------------------------------- the shared live stacks
@pytest.fixture(scope="session")
def live_stack(tmp_path_factory):
    """The one real Airflow stack the session shares (see ``tests/support/live.py``)."""
    from tests.support.live import LiveStack

    stack = LiveStack(tmp_path_factory.mktemp("live")).start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """The session's trained registry (one ``slipway run`` of telco_churn), version 1 the champion."""
    from tests.support.processes import slipway
    from tests.support.service import PIPELINE, Registry

    reg = Registry(tmp_path_factory.mktemp("serving"))
    slipway(reg.env, "seed")
    slipway(reg.env, "run", PIPELINE, "--month", "2025-12", timeout=900)
    versions = reg.client().search_model_versions(f"name='{PIPELINE}'")
    assert [int(v.version) for v in versions] == [1]
    reg.set_alias("champion", 1)
    return reg


@pytest.fixture(scope="session")
def service(registry, tmp_path_factory):
    """``slipway serve`` on the session's registry, as a process over HTTP."""
    from tests.support.service import Service

    svc = Service(registry, tmp_path_factory.mktemp("service")).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def row() -> dict:
    """One valid request row, from the demo data (raw, as an application would send it)."""
    from include.demo.data import load_wa_churn
    from include.spec import load_pipeline
    from tests.support.service import PIPELINE

    spec = load_pipeline(PIPELINE)
    rec = load_wa_churn().iloc[0]
    out: dict = {"customer_id": str(rec["customer_id"])}
    for n in spec.features.numeric:
        out[n] = None if rec[n] != rec[n] else float(rec[n])
    for n in spec.features.binary:
        out[n] = int(rec[n])
    for n in spec.features.categorical:
        out[n] = str(rec[n])
    return out
