"""The model registry (MLflow): aliases, traffic, events, the alias lock, history, and loading a version.

The service reads what this module writes (see :mod:`include.serving.models`): the aliases
``champion`` and ``challenger`` and the registered-model tags ``slipway.traffic.mode``, ``.weight``
and ``.version``. ``previous`` is the champion before the last promotion, restored by
``<pipeline>__rollback``.

MLflow has no compare-and-set on aliases (last write wins), so every change of one pipeline's
aliases runs under :func:`alias_lock` (an advisory lock in the serving database, which every
worker and replica shares: PostgreSQL's ``pg_advisory_lock`` in production, an ``flock`` next to
the SQLite file when embedded) and checks that the aliases are what it expects before it moves
them, then reads them back.

Every change is also an *event* (event, version, from_version, reason, by, dag run): a JSON file
``events/<model>/v<version>/<UTC time>-<event>.json`` among the artifacts of the run that registered the
version, where the MLflow UI shows it whole, and one tag on the version, ``slipway.last_event``, with
the newest. A version's tags stay few and do not grow with its rollouts; ``slipway history`` reads
the files back. (Versions registered before events moved out of tags keep their ``slipway.event.*``
tags, still read; a version registered without a run keeps its events in such tags.)
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from include.model_files import ModelRefused, OnnxModel, load_onnx

ALIASES = ("champion", "challenger")  # the aliases the service routes to
TRAFFIC_MODES = ("none", "shadow", "canary")
TAG_MODE, TAG_WEIGHT, TAG_VERSION = (
    "slipway.traffic.mode",
    "slipway.traffic.weight",
    "slipway.traffic.version",
)
EVENT_PREFIX = "slipway.event."  # a version without a run (and versions before events moved out)
TAG_LAST_EVENT = "slipway.last_event"
#: The first time a version became champion: a version holding it that is not the champion was demoted.
TAG_WAS_CHAMPION = "slipway.was_champion"
EVENTS_DIR = "events"
#: The tags that belong to a version's own history (never copied to another version).
HISTORY_TAGS = (EVENT_PREFIX, TAG_LAST_EVENT, TAG_WAS_CHAMPION)

log = logging.getLogger("slipway")


class PromotionConflict(RuntimeError):
    """The aliases are not what this change expected: someone else moved them. Nothing was changed."""


def _now() -> datetime:
    return datetime.now(UTC)


@contextlib.contextmanager
def alias_lock(pipeline: str, db_url: str | None = None, timeout_s: float = 120.0):
    """Hold the pipeline's alias lock (one alias change at a time, across processes and machines)."""
    from include.database import LockTimeout, named_lock

    try:
        with named_lock(f"aliases-{pipeline}", db_url, timeout_s):
            yield
    except LockTimeout as exc:
        raise PromotionConflict(
            f"another alias change of {pipeline} has held its lock for {timeout_s:.0f} s; retry when it is done"
        ) from exc


def aliases(client, name: str) -> dict[str, int]:
    """The registered model's aliases: ``{alias: version}`` (empty when not registered)."""
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {a: int(v) for a, v in (rm.aliases or {}).items()}


def traffic(client, name: str) -> dict:
    """The traffic state the service reads: mode, weight and the version it names."""
    tags = dict(client.get_registered_model(name).tags or {})
    return {
        "mode": tags.get(TAG_MODE, "none"),
        "weight": float(tags.get(TAG_WEIGHT) or 0.0),
        "version": int(tags[TAG_VERSION]) if tags.get(TAG_VERSION, "").isdigit() else None,
    }


def record_event(client, name: str, version: int, event: str, **details) -> dict:
    """Append an event to the version's history: a file in its run's ``events/<model>/v<version>/`` folder,
    named by its UTC time (microseconds), and the newest in the ``slipway.last_event`` tag."""
    at = _now()
    body = {"at": at.isoformat(timespec="seconds"), "event": event, "version": int(version), **details}
    stamp = at.strftime("%Y%m%dT%H%M%S%fZ")
    mv = client.get_model_version(name, str(version))
    if mv.run_id:
        client.log_text(
            mv.run_id,
            json.dumps(body, sort_keys=True, indent=1, default=str),
            f"{_events_folder(name, version)}/{stamp}-{event}.json",
        )
    else:
        client.set_model_version_tag(name, str(version), EVENT_PREFIX + stamp, _short(body, 4900))
    client.set_model_version_tag(name, str(version), TAG_LAST_EVENT, _short(body, 1000))
    if event in ("promoted", "restored") and TAG_WAS_CHAMPION not in (mv.tags or {}):
        client.set_model_version_tag(name, str(version), TAG_WAS_CHAMPION, body["at"])
    return body


def _short(body: dict, limit: int) -> str:
    """The event as one line of JSON within ``limit`` characters (a long reason is cut)."""
    text = json.dumps(body, sort_keys=True, default=str)
    if len(text) > limit:
        reason = str(body.get("reason", ""))[: max(100, limit - 600)]
        cut = dict(body, reason=reason + " (cut; the file has it whole)")
        text = json.dumps(cut, sort_keys=True, default=str)
    return text


def _events_folder(name: str, version) -> str:
    """Where a version's events live among its run's artifacts (a run may have registered several)."""
    return f"{EVENTS_DIR}/{name}/v{int(version)}"


def version_events(client, mv) -> list[dict]:
    """Every event of one model version (a ``ModelVersion``), oldest first: its files and any tags."""
    return [e for _, e in sorted(_keyed_events(client, mv), key=lambda ke: ke[0])]


def _keyed_events(client, mv) -> list[tuple[str, dict]]:
    """(UTC time to the microsecond, event) of each event of one version."""
    import tempfile

    out = []
    for key, value in (mv.tags or {}).items():
        if key.startswith(EVENT_PREFIX):
            try:
                out.append((key[len(EVENT_PREFIX) :], json.loads(value)))
            except ValueError:
                continue
    folder = _events_folder(mv.name, mv.version)
    if mv.run_id and client.list_artifacts(mv.run_id, folder):
        with tempfile.TemporaryDirectory(prefix="slipway-events-") as where:
            local = Path(client.download_artifacts(mv.run_id, folder, where))
            for f in local.glob("*.json"):
                try:
                    out.append((f.name.split("-", 1)[0], json.loads(f.read_text())))
                except ValueError:
                    continue
    return out


def last_event(tags: dict[str, str]) -> dict | None:
    """The newest event of a version, from its tags alone (no artifact read)."""
    found = []
    for key, value in tags.items():
        if key == TAG_LAST_EVENT or key.startswith(EVENT_PREFIX):
            try:
                event = json.loads(value)
                found.append((event["at"], key == TAG_LAST_EVENT, event))
            except (ValueError, KeyError, TypeError):
                continue
    return max(found, key=lambda f: f[:2])[2] if found else None


def delete_alias(client, name: str, alias: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise


def _expect(current: dict[str, int], alias: str, expected: int | None, action: str) -> None:
    if current.get(alias) != expected:
        raise PromotionConflict(
            f"cannot {action}: '{alias}' is version {current.get(alias)}, expected {expected}; another "
            "promotion or rollback moved it. Nothing was changed: look at `slipway history` and re-run"
        )


def set_challenger(client, name: str, version: int, mode: str, weight: float, **details) -> dict:
    """Point ``challenger`` at ``version`` and set its traffic (shadow, or canary at ``weight``).

    The alias moves before the traffic tags name the version: the service ignores a traffic state
    whose version is not the challenger's, so no replica ever routes to a version it has not loaded
    under that alias."""
    if mode not in ("shadow", "canary"):
        raise ValueError(f"mode must be shadow or canary, got {mode!r}")
    with alias_lock(name):
        current = aliases(client, name)
        if current.get("champion") == version:
            raise PromotionConflict(f"version {version} is already the champion of {name}")
        if current.get("challenger") not in (None, version):
            raise PromotionConflict(
                f"version {current['challenger']} is already the challenger of {name}: one rollout at a "
                "time. Let it finish, or run its rollback"
            )
        client.set_registered_model_alias(name, "challenger", str(version))
        client.set_registered_model_tag(name, TAG_WEIGHT, str(float(weight)))
        client.set_registered_model_tag(name, TAG_VERSION, str(version))
        client.set_registered_model_tag(name, TAG_MODE, mode)
        return record_event(client, name, version, f"{mode}_started", weight=float(weight), **details)


def end_challenger(client, name: str, version: int, reason: str, **details) -> dict | None:
    """Roll a challenger back: all traffic to the champion, ``challenger`` removed. Idempotent:
    None when ``version`` is no longer the challenger (already rolled back, or promoted)."""
    with alias_lock(name):
        current = aliases(client, name)
        if current.get("challenger") != version:
            return None
        client.set_registered_model_tag(name, TAG_MODE, "none")  # first: the service routes nothing to it
        client.set_registered_model_tag(name, TAG_WEIGHT, "0")
        delete_alias(client, name, "challenger")
        return record_event(client, name, version, "rolled_back", reason=reason, **details)


def promote(client, name: str, version: int, expected_champion: int | None, reason: str, **details) -> dict:
    """``champion`` -> ``version``; the old champion becomes ``previous``; ``challenger`` removed.

    Refused (nothing changed) unless ``champion`` is still ``expected_champion`` and the version is
    the challenger (or, for a pipeline's first model, there is no champion and no challenger)."""
    with alias_lock(name):
        current = aliases(client, name)
        if (
            current.get("champion") == version
            and current.get("previous") == expected_champion
            and "challenger" not in current
        ):  # a retry of a promotion that was done: the same answer, no second event
            return {
                "event": "promoted",
                "version": version,
                "from_version": expected_champion,
                "repeated": True,
            }
        _expect(current, "champion", expected_champion, f"promote version {version}")
        if expected_champion is not None or current.get("challenger") is not None:
            _expect(current, "challenger", version, f"promote version {version}")
        client.set_registered_model_tag(name, TAG_MODE, "none")
        client.set_registered_model_tag(name, TAG_WEIGHT, "0")
        if expected_champion is not None:
            client.set_registered_model_alias(name, "previous", str(expected_champion))
        client.set_registered_model_alias(name, "champion", str(version))
        delete_alias(client, name, "challenger")
        after = aliases(client, name)
        if after.get("champion") != version or "challenger" in after:
            raise PromotionConflict(
                f"after promoting version {version} the aliases read {after}; check the registry"
            )
        event = record_event(
            client, name, version, "promoted", from_version=expected_champion, reason=reason, **details
        )
        if expected_champion is not None:
            record_event(
                client, name, expected_champion, "demoted", to_version=version, reason=reason, **details
            )
        return event


def restore_previous(client, name: str, reason: str, **details) -> dict:
    """``champion`` -> ``previous`` (the one-click rollback); the demoted version loses its aliases."""
    with alias_lock(name):
        current = aliases(client, name)
        if "previous" not in current:
            raise PromotionConflict(
                f"{name} has no 'previous' version to restore (no promotion since the first champion, or "
                "already restored); choose a version and promote it by hand"
            )
        bad, good = current.get("champion"), current["previous"]
        if current.get("challenger") is not None:
            client.set_registered_model_tag(name, TAG_MODE, "none")
            delete_alias(client, name, "challenger")
        client.set_registered_model_alias(name, "champion", str(good))
        delete_alias(client, name, "previous")
        after = aliases(client, name)
        if after.get("champion") != good:
            raise PromotionConflict(
                f"after restoring version {good} the aliases read {after}; check the registry"
            )
        event = record_event(client, name, good, "restored", from_version=bad, reason=reason, **details)
        if bad is not None:
            record_event(
                client, name, bad, "rolled_back_from_champion", to_version=good, reason=reason, **details
            )
        return event


def history(client, name: str) -> list[dict]:
    """Every recorded event of every version of ``name``, oldest first."""
    keyed = [
        ke for mv in client.search_model_versions(f"name = '{name}'") for ke in _keyed_events(client, mv)
    ]
    return [e for _, e in sorted(keyed, key=lambda ke: ke[0])]


def newest_events(client, versions: list, n: int) -> list[dict]:
    """The ``n`` newest events across ``versions``, oldest first, reading only the versions that
    changed last (by their ``slipway.last_event``), not every version's history."""
    ordered = sorted(
        (
            ((last_event(mv.tags or {}) or {}).get("at", ""), mv)
            for mv in versions
            if last_event(mv.tags or {})
        ),
        key=lambda at_mv: at_mv[0],
    )
    keyed: list[tuple[str, dict]] = []
    while ordered:
        at, mv = ordered.pop()
        keyed.extend(_keyed_events(client, mv))
        keyed.sort(key=lambda ke: ke[0])
        # Enough once the n-th newest read is newer than anything an unread version holds.
        if len(keyed) >= n and (not ordered or keyed[-n][1]["at"] > ordered[-1][0]):
            break
    return [e for _, e in keyed[-n:]]


def champion_timeline(events: list[dict]) -> list[dict]:
    """Which version was champion from when to when, and why it changed: from the events."""
    spans: list[dict] = []
    for e in events:
        if e["event"] in ("promoted", "restored"):
            if spans and spans[-1]["until"] is None:
                spans[-1]["until"] = e["at"]
                spans[-1]["ended_by"] = f"{e['event']} version {e['version']}: {e.get('reason', '')}"
            spans.append(
                {
                    "version": e["version"],
                    "since": e["at"],
                    "until": None,
                    "why": e.get("reason", ""),
                    "by": e.get("by"),
                    "dag_run": e.get("dag_run"),
                }
            )
    return spans


def load_version(client, pipeline: str, version: int, folder: Path) -> OnnxModel:
    """Download a registered version's artifacts into ``folder`` and load its ONNX graph, checked
    against the registered digest and carrying its business threshold (the one way every reader of a
    version's model — the service, the monitor's reference, the tests — loads it)."""
    import mlflow

    from include.tracking import UntrustedArtifact, trusted_artifact_uri

    mv = client.get_model_version(pipeline, str(version))
    tags = dict(mv.tags)
    try:
        source = trusted_artifact_uri(mv.source)
    except UntrustedArtifact as exc:
        raise ModelRefused(f"version {version}: {exc}") from None
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(folder)))
    import json

    task = tags.get("slipway.task", "binary")
    try:
        rule = json.loads(tags["slipway.decision"]) if "slipway.decision" in tags else None
        classes = tuple(json.loads(tags.get("slipway.classes", "[]")))
        band = (
            json.loads(tags["slipway.prediction_interval"]) if "slipway.prediction_interval" in tags else None
        )
    except ValueError as exc:
        raise ModelRefused(
            f"version {version}'s decision or classes tag is not JSON: re-register it"
        ) from exc
    if task == "binary":
        try:
            threshold = float(tags.get("slipway.decision_threshold", ""))
        except ValueError as exc:
            raise ModelRefused(f"version {version} has no decision threshold tag") from exc
    elif rule is None:
        raise ModelRefused(
            f"version {version} ({task}) has no decision rule tag (slipway.decision): re-register it"
        )
    else:
        threshold = float("nan")
    interval = (float(band["low"]), float(band["high"])) if band else None
    return load_onnx(
        pipeline,
        version,
        local,
        tags.get("slipway.onnx_sha256", ""),
        threshold,
        task,
        rule,
        classes,
        interval,
    )


def load_explainable(client, pipeline: str, version: int, background_rows: int = 100):
    """A registered version's fitted scikit-learn pipeline, checked against its registered sha256, and
    a seeded sample of its training rows as SHAP's background: ``(model, background frame)``. The one
    way the service's ``/explain`` and the monitor's attribution check load them; ``ModelRefused``
    says why a version cannot be explained."""
    import hashlib
    import tempfile

    import mlflow

    from include import storage
    from include.frames import read_parquet
    from include.model_files import load_model
    from include.spec import SPLIT_COLUMN
    from include.tracking import UntrustedArtifact, trusted_artifact_uri

    tags = dict(client.get_model_version(pipeline, str(version)).tags)
    uri, expected = tags.get("slipway.sklearn_uri", ""), tags.get("slipway.sklearn_sha256", "")
    if not uri or not expected:
        raise ModelRefused(f"version {version} has no scikit-learn model on record to explain")
    try:
        uri = trusted_artifact_uri(uri)
    except UntrustedArtifact as exc:
        raise ModelRefused(f"version {version}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="slipway-explain-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=tmp, tracking_uri=client.tracking_uri
        )
        data = Path(local).read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        raise ModelRefused(
            f"version {version}'s scikit-learn model does not match its registered sha256: refused"
        )
    model = load_model(data)
    snapshot = tags.get("slipway.snapshot_uri", "")
    frame = read_parquet(snapshot) if snapshot and storage.exists(snapshot) else None
    if frame is None:
        raise ModelRefused(f"version {version}'s training snapshot is not readable: no background")
    if SPLIT_COLUMN in frame.columns:
        frame = frame[frame[SPLIT_COLUMN] == "train"]
    return model, frame.sample(n=min(background_rows, len(frame)), random_state=0)
