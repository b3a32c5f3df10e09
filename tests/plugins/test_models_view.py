"""The "Models" view in the Airflow UI, on the session's live stack (its api-server loads the plugin):
refused without a login (the mounted app enforces Airflow's authentication itself), rendered behind
the login in headless Chromium (Debian's chromium, Playwright), listing the pipeline's versions with
aliases and per-gate blessings (not applicable shown as such). The test saves a screenshot."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.support.live import PASSWORD
from tests.support.processes import ROOT

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _get(url: str, headers: dict | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@pytest.fixture(scope="module")
def stack(live_stack):
    """The live stack with at least one registered version (the rollout test leaves a champion)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=live_stack.tracking)
    if not client.search_model_versions("name = 'telco_churn'"):
        subprocess.run(
            [sys.executable, "-m", "include.cli", "run", "telco_churn", "--month", "2025-12"],
            cwd=ROOT,
            env=live_stack.env,
            check=True,
            capture_output=True,
            timeout=900,
        )
    return live_stack


def test_the_plugin_app_refuses_anonymous_and_invalid_tokens(stack):
    for path in ("/models/", "/models/api/models", "/models/card/telco_churn/1"):
        assert _get(f"{stack.url}{path}")[0] == 401, path
    assert _get(f"{stack.url}/models/api/models", {"Authorization": "Bearer not-a-token"})[0] == 403


def test_the_record_lists_versions_aliases_and_blessings(stack):
    status, body = _get(f"{stack.url}/models/api/models", {"Authorization": f"Bearer {stack.token()}"})
    assert status == 200, body
    record = json.loads(body)
    [churn] = [p for p in record["pipelines"] if p["name"] == "telco_churn"]
    assert churn["versions"] and record["error"] is None
    first = churn["versions"][-1]
    assert first["version"] == 1 and first["blessing"] == "passed"
    assert first["gates"]["champion"] == "not_applicable"  # no champion to compare the first one with
    assert set(first["gates"].values()) <= {"passed", "not_applicable"}
    assert churn["aliases"], churn
    assert churn["traffic"]["mode"] in ("none", "shadow", "canary")
    # The rollout's phase: the newest events of its own record, as `slipway history` reads them.
    import mlflow

    from include.registry import history

    recorded = history(mlflow.MlflowClient(tracking_uri=stack.tracking), "telco_churn")[-6:]
    assert [(e["event"], e["version"]) for e in churn["events"]] == [
        (e["event"], e["version"]) for e in recorded
    ]


def test_the_page_renders_behind_the_login_in_chromium(stack, tmp_path):
    from playwright.sync_api import sync_playwright

    _, body = _get(f"{stack.url}/models/api/models", {"Authorization": f"Bearer {stack.token()}"})
    aliases = next(p for p in json.loads(body)["pipelines"] if p["name"] == "telco_churn")["aliases"]
    assert aliases
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"], headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{stack.url}/plugin/models", timeout=60_000)
            page.locator("input[name=username]").fill("operator", timeout=60_000)
            page.locator("input[name=password]").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/login" not in url, timeout=60_000)
            page.goto(f"{stack.url}/plugin/models", timeout=60_000)
            frame = page.frame_locator("iframe")
            frame.locator("h2#telco_churn").wait_for(timeout=60_000)
            text = frame.locator("h2#telco_churn ~ table").first.inner_text()
            for alias in aliases:
                assert alias in text, (alias, text)
            assert "n/a" in text  # the first version's champion gate: not applicable, not a pass
            assert frame.locator("td.failed").count() == 0
            shot = tmp_path / "models_view.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            print(f"screenshot: {shot}")
            # The nav entry: the page is reached from the UI's Browse menu, not only by its URL.
            nav = page.get_by_role("button", name="Browse")
            nav.click()
            assert page.get_by_role("menuitem", name="Models").count() >= 1
            page.keyboard.press("Escape")
            # Its links work from inside Airflow's sandboxed frame (no allow-top-navigation there).
            frame.locator("a[href$='telco_churn__train']", has_text="training DAG").first.click()
            page.wait_for_url(lambda url: "/dags/telco_churn__train" in url, timeout=60_000)
            # A version's model card, its SHAP image inlined (the card's CSP allows data: images only).
            record = json.loads(
                _get(f"{stack.url}/models/api/models", {"Authorization": f"Bearer {stack.token()}"})[1]
            )
            carded = [
                v["version"]
                for p in record["pipelines"]
                if p["name"] == "telco_churn"
                for v in p["versions"]
                if v["has_card"]
            ]
            assert carded
            page.goto(f"{stack.url}/models/card/telco_churn/{carded[0]}", timeout=60_000)
            images = page.locator("img")
            assert images.count() >= 1
            for i in range(images.count()):
                assert images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0"), i
        finally:
            browser.close()


def test_the_mlflow_pages_it_links_open_as_model_development(stack, tmp_path):
    """The Models view's MLflow links, followed in Chromium against an MLflow UI on the stack's
    store: the experiment opens in MLflow's machine-learning view (runs), not its GenAI overview, and
    a version's page shows its description and its signature."""
    import re
    import time

    import mlflow
    from playwright.sync_api import sync_playwright

    from include.models_view import render
    from tests.support.processes import free_port

    client = mlflow.MlflowClient(tracking_uri=stack.tracking)
    described = [
        mv
        for mv in client.search_model_versions("name = 'telco_churn'")
        if "trained on" in (mv.description or "")
    ]
    assert described, "no version registered by the training DAG"
    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "mlflow"),
            "server",
            "--backend-store-uri",
            stack.tracking,
            "--default-artifact-root",
            stack.env["SLIPWAY_MLFLOW_ARTIFACT_URI"],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(f"{ui}/health")[0] == 200:
                    break
            except OSError:  # not listening yet
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the MLflow UI did not start"
            time.sleep(1)
        record = json.loads(
            _get(f"{stack.url}/models/api/models", {"Authorization": f"Bearer {stack.token()}"})[1]
        )
        page_html = render(record, ui)
        runs = re.search(r"href='([^']*#/experiments/[^']*)'>runs in MLflow", page_html).group(1)
        assert runs.endswith("?workflowType=machine_learning"), runs
        version = described[-1].version
        versions = re.search(
            rf"href='([^']*#/models/telco_churn/versions/{version})'>MLflow", page_html
        ).group(1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"], headless=True
            )
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                page.goto(runs.replace("&amp;", "&"), timeout=60_000)
                page.get_by_text("telco_churn__train", exact=False).first.wait_for(timeout=90_000)
                assert "/runs" in page.url and "workflowType=machine_learning" in page.url, page.url
                assert page.get_by_text("matching runs").count() >= 1  # the runs table, not GenAI's overview
                page.goto(versions, timeout=60_000)
                page.get_by_text("Inputs (17)").wait_for(timeout=90_000)
                assert page.get_by_text("Outputs (2)").count() == 1
                assert page.get_by_text("trained on", exact=False).count() >= 1
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(30)
