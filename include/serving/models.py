"""Models from the registry: each pipeline's ``champion`` and ``challenger``, by alias, as ONNX.

Nothing is ever unpickled: a version is served from its ONNX graph with onnxruntime, after the
graph's bytes match the digest registered with the version (``slipway.onnx_sha256``); a graph that
points at external data is refused (the path-traversal class of CVE-2024-27318), and the session is
built from the bytes that were hashed. The download is deleted once loaded or refused. The input
schema is read from the graph itself: its input names and types, and the categories each one-hot
encoder was fitted on.

The traffic state lives in the registry next to the aliases, as registered-model tags, so every
replica converges on one source of truth:

* ``slipway.traffic.mode``: ``none`` | ``shadow`` | ``canary``;
* ``slipway.traffic.weight``: the challenger's share of canary traffic, 0..1;
* ``slipway.traffic.version``: the challenger version the mode and weight were set for (a
  traffic state that names another version than the ``challenger`` alias is ignored: fail closed,
  all traffic to the champion).

A background thread polls the registry every ``refresh_s`` seconds. When the registry is
unreachable or a version is corrupt, the last good model keeps serving and the pipeline is
reported degraded with the reason.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from include.model_files import ModelRefused, OnnxModel
from include.registry import ALIASES, TAG_MODE, TAG_VERSION, TAG_WEIGHT, TRAFFIC_MODES, load_version

log = logging.getLogger(__name__)

RETRY_REFUSED_S = 60.0


class _AlreadyRefused(ModelRefused):
    """Refused on an earlier pass; not downloaded again before ``RETRY_REFUSED_S``."""


@dataclass(frozen=True)
class Traffic:
    mode: str = "none"
    weight: float = 0.0
    version: int | None = None


@dataclass
class PipelineState:
    """What a pipeline serves now. Replaced whole on each refresh (readers never see half a change)."""

    champion: OnnxModel | None = None
    challenger: OnnxModel | None = None
    traffic: Traffic = field(default_factory=Traffic)
    problems: tuple[str, ...] = ()


class ModelRegistry:
    """Polls the MLflow registry for each pipeline's aliases and traffic; loads what changed."""

    def __init__(
        self,
        pipelines: list[str],
        refresh_s: float = 5.0,
        tracking_uri: str | None = None,
        pinned: dict[str, int] | None = None,
    ):
        self.pipelines = list(pipelines)
        # A pinned pipeline serves that version as its champion whatever the aliases say, and no
        # challenger: the rollout's sandbox for infra validation of a candidate.
        self.pinned = dict(pinned or {})
        self.refresh_s = refresh_s
        self.tracking_uri = tracking_uri
        self._states: dict[str, PipelineState] = {p: PipelineState() for p in self.pipelines}
        self._refused: dict[tuple[str, int], tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix="slipway-serve-models-"))
        self.reload_failures = 0
        self.last_refresh: float | None = None

    def state(self, pipeline: str) -> PipelineState | None:
        return self._states.get(pipeline)

    def _client(self):
        import mlflow

        from include.tracking import mlflow_client

        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
            return mlflow.MlflowClient(self.tracking_uri)
        return mlflow_client()

    def _load(self, client, pipeline: str, version: int, current: OnnxModel | None) -> OnnxModel:
        if current is not None and current.version == version:
            return current
        refused = self._refused.get((pipeline, version))
        if refused and time.monotonic() - refused[1] < RETRY_REFUSED_S:
            raise _AlreadyRefused(refused[0])
        folder = Path(tempfile.mkdtemp(prefix=f"{pipeline}-v{version}-", dir=self._workdir))
        try:
            model = load_version(client, pipeline, version, folder)
        except ModelRefused as exc:
            self._refused[(pipeline, version)] = (str(exc), time.monotonic())
            raise
        finally:  # the session holds the graph's bytes: the download is never needed again
            shutil.rmtree(folder, ignore_errors=True)
        log.info("loaded %s version %d (onnx sha256 %s…)", pipeline, version, model.onnx_sha256[:16])
        return model

    def refresh(self) -> None:
        """One pass over every pipeline; never raises (a failure keeps the last good state)."""
        try:
            client = self._client()
        except Exception as exc:
            self._fail_all(f"registry unreachable: {type(exc).__name__}: {str(exc)[:200]}")
            return
        for pipeline in self.pipelines:
            self._refresh_one(client, pipeline)
        self.last_refresh = time.time()

    def _fail_all(self, reason: str) -> None:
        self.reload_failures += 1
        for pipeline, st in self._states.items():
            self._states[pipeline] = PipelineState(st.champion, st.challenger, st.traffic, (reason,))

    def _refresh_one(self, client, pipeline: str) -> None:
        from mlflow.exceptions import MlflowException

        old = self._states[pipeline]
        try:
            rm = client.get_registered_model(pipeline)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                # Never registered, or deleted (or a registry pointed at the wrong store): keep what
                # serves, if anything, and say so.
                reason = f"{pipeline} is not in the registry" + (
                    f"; still serving version {old.champion.version}" if old.champion else ""
                )
                self._states[pipeline] = PipelineState(old.champion, old.challenger, old.traffic, (reason,))
                return
            self.reload_failures += 1
            self._states[pipeline] = PipelineState(
                old.champion, old.challenger, old.traffic, (f"registry unreachable: {str(exc)[:200]}",)
            )
            return
        except Exception as exc:
            self.reload_failures += 1
            reason = f"registry unreachable: {type(exc).__name__}: {str(exc)[:200]}"
            self._states[pipeline] = PipelineState(old.champion, old.challenger, old.traffic, (reason,))
            return
        aliases = {a: int(v) for a, v in (rm.aliases or {}).items()}
        tags = dict(rm.tags or {})
        if pipeline in self.pinned:
            aliases, tags = {"champion": self.pinned[pipeline]}, {}
        problems: list[str] = []
        loaded: dict[str, OnnxModel | None] = {}
        for alias in ALIASES:
            current = getattr(old, alias)
            if alias not in aliases:
                loaded[alias] = None
                continue
            try:
                loaded[alias] = self._load(client, pipeline, aliases[alias], current)
            except Exception as exc:
                if not isinstance(exc, _AlreadyRefused):
                    self.reload_failures += 1
                    log.warning("%s %s version %s not loaded: %s", pipeline, alias, aliases[alias], exc)
                keep = current
                problems.append(
                    f"{alias} version {aliases[alias]} not loaded ({exc})"
                    + (f"; still serving version {keep.version}" if keep else "")
                )
                loaded[alias] = keep
        if loaded["champion"] is None and not problems:
            problems.append(f"{pipeline} has no 'champion' alias: nothing to serve")
        traffic = _traffic(tags, loaded["challenger"], problems)
        self._states[pipeline] = PipelineState(
            loaded["champion"], loaded["challenger"], traffic, tuple(problems)
        )

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="slipway-model-refresh", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        shutil.rmtree(self._workdir, ignore_errors=True)


def _traffic(tags: dict[str, str], challenger: OnnxModel | None, problems: list[str]) -> Traffic:
    mode = tags.get(TAG_MODE, "none")
    if mode == "none" or challenger is None:
        return Traffic()
    if mode not in TRAFFIC_MODES:
        problems.append(f"traffic mode {mode!r} is not one of {TRAFFIC_MODES}: all traffic to the champion")
        return Traffic()
    try:
        weight = float(tags.get(TAG_WEIGHT, "0"))
        version = int(tags.get(TAG_VERSION, ""))
    except ValueError:
        problems.append("traffic weight/version tags are not numbers: all traffic to the champion")
        return Traffic()
    if version != challenger.version:
        problems.append(
            f"traffic is set for version {version} but 'challenger' is version {challenger.version}: "
            "all traffic to the champion"
        )
        return Traffic()
    if not 0.0 <= weight <= 1.0:
        problems.append(f"traffic weight {weight} is outside 0..1: all traffic to the champion")
        return Traffic()
    return Traffic(mode, weight, version)


def sticky_share(pipeline: str, key: str) -> float:
    """A stable number in [0, 1) per (pipeline, key): the same customer gets the same variant."""
    digest = hashlib.sha256(f"slipway-route:{pipeline}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
