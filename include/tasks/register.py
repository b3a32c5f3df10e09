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


def register_candidate(
    spec: PipelineSpec,
    onnx_bytes: bytes,
    skops_bytes: bytes,
    tags: dict[str, str],
    blessing: dict,
    card_dir: str | Path | None = None,
    alias: str = "candidate",
) -> dict:
    """Log the artifacts in the active MLflow run, register a version named after the pipeline, set ``alias``.

    The caller has checked the blessing; this function refuses an unblessed one all the same,
    and sets the alias only after everything else is stored.
    """
    import mlflow
    import onnx

    from include.tasks.blessing import blessing_tags, raise_unless_blessed

    raise_unless_blessed(blessing)
    run = mlflow.active_run()
    info = mlflow.onnx.log_model(
        onnx.load_from_string(onnx_bytes), name="model", pip_requirements=pip_requirements()
    )
    client = mlflow.MlflowClient()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.skops"
        path.write_bytes(skops_bytes)
        mlflow.log_artifact(str(path), "sklearn")
    mlflow.log_dict(blessing, "blessing.json")
    if card_dir:
        mlflow.log_artifacts(str(card_dir), "model_card")
    try:
        client.get_registered_model(spec.name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(
            spec.name, description=spec.description, tags={"slipway.pipeline": spec.name}
        )
    base = f"runs:/{run.info.run_id}"
    all_tags = {
        **tags,
        **blessing_tags(blessing),
        "slipway.blessing_uri": f"{base}/blessing.json",
        "slipway.onnx_uri": info.model_uri,
        "slipway.sklearn_uri": f"{base}/sklearn/model.skops",
        "slipway.model_card_uri": f"{base}/model_card/model_card.html" if card_dir else "",
        "slipway.gates": json.dumps({f"{r['gate']}.{r['metric']}": r["passed"] for r in blessing["results"]})[
            :4900
        ],
    }
    mv = mlflow.register_model(info.model_uri, spec.name, tags={k: str(v) for k, v in all_tags.items()})
    client.set_registered_model_alias(spec.name, alias, mv.version)
    return {"name": spec.name, "version": int(mv.version), "alias": alias, "model_uri": info.model_uri}
