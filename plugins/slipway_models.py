"""Airflow plugin: the "Models" page in the Airflow UI (Browse → Models).

A FastAPI app mounted by the api-server at ``/models/`` and shown inside the UI (an external view
with a ``url_route``, rendered in a same-origin frame). Mounted apps do not inherit Airflow's
authentication, so every route of this app checks it itself: the UI's session (the ``_token``
cookie) or an ``Authorization: Bearer`` token from ``POST /auth/token``, then Airflow's own
permission to view the website. Anonymous requests get 401, an invalid token 403.

Routes: ``/models/`` (the page), ``/models/api/models`` (the same record as JSON),
``/models/card/<pipeline>/<version>`` (the version's model card, from MLflow).

Imports stay light at module level: every Airflow component imports this file.
"""

from __future__ import annotations

import logging
from typing import Annotated

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False)


async def require_user(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
):
    """The Airflow user of the request (Bearer token first, else the UI's cookie); 401/403 otherwise."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import get_user

    user = await get_user(request, _oauth_token=None, bearer_credentials=creds)
    if not get_auth_manager().is_authorized_view(access_view=AccessView.WEBSITE, user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")
    return user


app = FastAPI(title="Slipway models", dependencies=[Depends(require_user)], docs_url=None, redoc_url=None)

# A page inside Airflow's frame, from the same origin only; its one script (links.js) is its own.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; "
    "frame-ancestors 'self'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}

# Airflow's UI shows the page in a frame sandboxed without allow-top-navigation or allow-popups, so
# a link with target _top or _blank does nothing there. The frame is same-origin: a click is followed
# by an anchor of the top document instead, which may navigate the window or open a tab.
_LINKS_JS = """\
document.addEventListener("click", function (event) {
  var link = event.target.closest ? event.target.closest("a[target]") : null;
  if (!link || window.top === window) return;
  var top;
  try { top = window.top.document; } catch (error) { return; }
  event.preventDefault();
  var proxy = top.createElement("a");
  proxy.href = link.href;
  proxy.target = link.target;
  if (link.rel) proxy.rel = link.rel;
  proxy.style.display = "none";
  top.body.appendChild(proxy);
  proxy.click();
  proxy.remove();
});
"""


def _pending_approvals(pipelines: list[str]) -> dict[str, list[dict]]:
    """Rollouts whose approval task is waiting for an answer (deferred), per pipeline."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dags = {f"{p}__rollout": p for p in pipelines}
    out: dict[str, list[dict]] = {}
    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id).where(
                TaskInstance.dag_id.in_(list(dags)),
                TaskInstance.task_id == "approve_promotion",
                TaskInstance.state == "deferred",
            )
        ).all()
    for dag_id, run_id, task_id in rows:
        out.setdefault(dags[dag_id], []).append({"dag_id": dag_id, "run_id": run_id, "task_id": task_id})
    return out


_SPECS: dict = {"signature": None, "names": []}


def _pipeline_names() -> list[str]:
    """The valid specs' names, parsed again only when a spec file was added, removed or changed
    (every page view and card would otherwise read and validate every YAML)."""
    from include.settings import get_settings
    from include.spec import discover

    folder = get_settings().pipelines_dir
    signature = tuple(
        (p.name, st.st_mtime_ns, st.st_size) for p in sorted(folder.glob("*.y*ml")) for st in [p.stat()]
    )
    if signature != _SPECS["signature"]:
        _SPECS["names"] = [s.name for s in discover(folder)[0]]
        _SPECS["signature"] = signature
    return list(_SPECS["names"])


def _record() -> tuple[dict, str | None]:
    import os

    from include.models_view import models_record
    from include.settings import get_settings
    from include.tracking import mlflow_client

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a down registry: seconds, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    pipelines = _pipeline_names()
    try:
        pending = _pending_approvals(pipelines)
    except Exception:  # the page still shows the registry
        log.exception("could not read the pending approvals")
        pending = {}
    return models_record(mlflow_client(), pipelines, pending), get_settings().mlflow_ui_url


@app.get("/", response_class=HTMLResponse)
def page() -> HTMLResponse:
    from include.models_view import render

    record, mlflow_ui = _record()
    return HTMLResponse(render(record, mlflow_ui), headers=_HEADERS)


@app.get("/api/models")
def models() -> JSONResponse:
    record, _ = _record()
    return JSONResponse(record, headers={"Cache-Control": "no-store"})


@app.get("/links.js")
def links_js() -> Response:
    return Response(
        _LINKS_JS,
        media_type="text/javascript",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def _inline_images(body: str, folder) -> str:
    """``<img src="shap.png">`` of the card's own folder as data: URIs (the card's CSP allows no other)."""
    import base64
    import re

    def inline(match):
        path = folder / match.group(2)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f"{match.group(1)}data:image/png;base64,{data}{match.group(3)}"

    return re.sub(r'(<img\b[^>]*\bsrc=")([A-Za-z0-9_.-]+\.png)(")', inline, body)


@app.get("/card/{pipeline}/{version}")
def card(pipeline: str, version: int) -> Response:
    """The version's model card (HTML from its MLflow run), shown with scripts disabled."""
    import tempfile
    from pathlib import Path

    from include.tracking import mlflow_client

    if pipeline not in _pipeline_names():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no pipeline {pipeline!r}")
    client = mlflow_client()
    try:
        uri = client.get_model_version(pipeline, str(version)).tags.get("slipway.model_card_uri")
    except Exception as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{pipeline} has no version {version}") from exc
    if not uri or not uri.startswith("runs:/") or not uri.endswith("/model_card/model_card.html"):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{pipeline} version {version} has no model card")
    import mlflow

    with tempfile.TemporaryDirectory(prefix="slipway-card-") as tmp:
        # The card's folder: the HTML and the images it shows (inlined, so no second request is needed).
        folder = Path(mlflow.artifacts.download_artifacts(uri.rsplit("/", 1)[0], dst_path=tmp))
        body = _inline_images((folder / "model_card.html").read_text(encoding="utf-8"), folder)
    return HTMLResponse(
        body,
        headers={
            **_HEADERS,
            "Content-Security-Policy": "sandbox; " + _HEADERS["Content-Security-Policy"] + "; img-src data:",
        },
    )


class SlipwayModelsPlugin(AirflowPlugin):
    name = "slipway_models"
    fastapi_apps = [{"app": app, "url_prefix": "/models", "name": "Slipway models"}]
    external_views = [
        {
            "name": "Models",
            "href": "models/",  # relative to the UI's base URL; the trailing slash reaches the app
            "url_route": "models",  # rendered inside the UI at /plugin/models
            "destination": "nav",
            "category": "browse",
        }
    ]
