"""Register: the blessed candidate becomes a model version; the alias moves last.

The version's deployable artifact is the optimised ONNX graph (``mlflow.onnx`` flavour, what
serving loads). The scikit-learn pipeline is stored beside it with skops (``sklearn/model.skops``,
no pickle) for explanations and champion comparisons; the model card and the blessing record
are attached as artifacts and summarised in version tags.
"""

from __future__ import annotations

import json
from pathlib import Path

from include.spec import PipelineSpec


def pip_requirements() -> list[str]:
    """Exact versions of what serving the ONNX model needs (saves MLflow 7-10 s of inference)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("onnx", "onnxruntime", "numpy")]


#: ONNX element types as MLflow column types (what a caller of the model sends per input). Floats are
#: declared double: MLflow refuses to narrow a caller's float64 to float32, and its ONNX flavour casts
#: to the graph's float itself.
_ONNX_TO_MLFLOW = {1: "double", 6: "long", 7: "long", 8: "string", 9: "boolean", 11: "double"}


def signature(model) -> object:
    """The model's MLflow signature read off its ONNX graph: one named column per input (what the
    service's rows carry, in the service's types), and the graph's outputs as tensors."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    from onnx import helper

    inputs: list[ColSpec | TensorSpec] = [
        ColSpec(_ONNX_TO_MLFLOW.get(i.type.tensor_type.elem_type, "string"), i.name)
        for i in model.graph.input
    ]
    outputs: list[ColSpec | TensorSpec] = []
    for o in model.graph.output:
        t = o.type.tensor_type
        shape = tuple(d.dim_value or -1 for d in t.shape.dim) or (-1,)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
        outputs.append(TensorSpec(dtype, shape, o.name))
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def description(spec: PipelineSpec, tags: dict[str, str], blessing: dict) -> str:
    """The version's description on its MLflow page: what it is, on what data, how good, who made it."""
    from include.problem import describe_rule, rule_from_tags
    from include.tasks.metrics import SHOWN

    shown = SHOWN[spec.task]
    metrics = ", ".join(
        f"{k.removeprefix('slipway.metric.').replace('_', ' ')} {float(v):.3f}"
        for k, v in tags.items()
        if k.startswith("slipway.metric.") and k.removeprefix("slipway.metric.") in shown
    )
    kind = {"binary": "binary classifier", "multiclass": "multiclass classifier", "regression": "regressor"}
    na = sorted(g for g, state in blessing.get("by_gate", {}).items() if state == "not_applicable")
    lines = [
        f"{spec.estimator.kind.replace('_', ' ')} {kind[spec.task]} for {spec.name}, trained on "
        f"{tags.get('slipway.month', '?')} (data version {tags.get('slipway.data_version', '?')[:12]}).",
        f"Held-out test: {metrics or 'no metrics recorded'}; decision: "
        f"{describe_rule(spec, rule_from_tags(spec, tags), spec.business.unit)}.",
        f"Blessed by every training gate ({len(blessing.get('by_gate', {}))}"
        + (f"; not applicable: {', '.join(na)}" if na else "")
        + "). Rollout gates (infra validation, shadow, canary, approval) and events: this version's tags "
        "slipway.blessing.* and the files under events/ in its run's artifacts.",
        f"Registered by {tags.get('slipway.dag_id', '?')} run {tags.get('slipway.run_id', '?')}.",
    ]
    return "\n\n".join(lines)


def _interval_key(tags: dict[str, str]) -> str:
    """Sortable key of the data interval a version was trained for: its month, YYYY-MM ('' when unknown)."""
    return tags.get("slipway.month") or ""


def find_registered(client, name: str, data_version: str, sklearn_sha256: str):
    """The version already registered for this data version and model digest, or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(
            f"name = '{name}' and tags.`slipway.data_version` = '{data_version}' "
            f"and tags.`slipway.sklearn_sha256` = '{sklearn_sha256}'"
        )
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return min(found, key=lambda mv: int(mv.version)) if found else None


def register_candidate(
    spec: PipelineSpec,
    onnx_bytes: bytes,
    skops_bytes: bytes,
    tags: dict[str, str],
    blessing: dict,
    card_dir: str | Path | None = None,
    alias: str = "candidate",
) -> dict:
    """Register a version named after the pipeline (or reuse it), then move ``alias`` forward only.

    Idempotent: a version already registered for the same data version and model digest (a retry,
    a cleared run, the same interval run again) is reused, never duplicated. The alias moves only
    to a version whose data interval is not older than the one it points at, so a backfill
    registers its version but leaves ``alias`` on the newest. The caller has checked the blessing;
    this function refuses an unblessed one all the same, and sets the alias after everything else.
    """
    import hashlib
    import tempfile

    import mlflow
    import onnx

    from include.tasks.blessing import blessing_tags, raise_unless_blessed

    raise_unless_blessed(blessing)
    client = mlflow.MlflowClient()
    sklearn_sha256 = hashlib.sha256(skops_bytes).hexdigest()
    data_version = tags.get("slipway.data_version", "")
    mv = find_registered(client, spec.name, data_version, sklearn_sha256) if data_version else None
    registration = "reused" if mv is not None else "new"
    if mv is None:
        run = mlflow.active_run()
        if run is None:
            raise RuntimeError(
                "register_candidate logs the model into the task's MLflow run, and none is active; call it "
                "inside mlflow.start_run() (the DAG's tasks run inside their tracked run)"
            )
        graph = onnx.load_from_string(onnx_bytes)
        info = mlflow.onnx.log_model(
            graph, name="model", pip_requirements=pip_requirements(), signature=signature(graph)
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.skops"
            path.write_bytes(skops_bytes)
            mlflow.log_artifact(str(path), "sklearn")
        mlflow.log_dict(blessing, "blessing.json")
        if card_dir:
            mlflow.log_artifacts(str(card_dir), "model_card")
        try:
            client.get_registered_model(spec.name)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            client.create_registered_model(
                spec.name, description=spec.description, tags={"slipway.pipeline": spec.name}
            )
        base = f"runs:/{run.info.run_id}"
        all_tags = {
            **tags,
            **blessing_tags(blessing),
            "slipway.sklearn_sha256": sklearn_sha256,
            "slipway.onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "slipway.blessing_uri": f"{base}/blessing.json",
            "slipway.onnx_uri": info.model_uri,
            "slipway.sklearn_uri": f"{base}/sklearn/model.skops",
            "slipway.model_card_uri": f"{base}/model_card/model_card.html" if card_dir else "",
            "slipway.gates": json.dumps(
                {f"{r['gate']}.{r['metric']}": r["status"] for r in blessing["results"]}
            )[:4900],
        }
        mv = mlflow.register_model(info.model_uri, spec.name, tags={k: str(v) for k, v in all_tags.items()})
        client.update_model_version(spec.name, mv.version, description=description(spec, all_tags, blessing))
    version = int(mv.version)
    moved, why = _move_forward(client, spec.name, alias, version, _interval_key(dict(mv.tags) or tags))
    verb = "registered" if registration == "new" else "reused already registered"
    return {
        "name": spec.name,
        "version": version,
        "alias": alias,
        "alias_moved": moved,
        "registration": registration,
        "model_uri": f"models:/{spec.name}/{version}",
        "message": f"{verb} {spec.name} version {version}; {why}",
    }


def _move_forward(client, name: str, alias: str, version: int, interval: str) -> tuple[bool, str]:
    """Point ``alias`` at ``version`` unless it points at a version of a newer data interval."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        current = None
    if current is not None and int(current.version) == version:
        return True, f"'{alias}' already points at it"
    if current is not None and _interval_key(dict(current.tags)) > interval:
        return False, (
            f"'{alias}' stays on version {current.version}, trained for a newer data interval "
            f"({_interval_key(dict(current.tags))} > {interval})"
        )
    client.set_registered_model_alias(name, alias, version)
    return True, f"'{alias}' now points at it"
