"""Model files: skops under an allow-list (a crafted file cannot run code), the same bytes for the
same model in every process, and no warnings when a worker saves one."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

from include import storage
from include.frames import feature_frame, labels
from include.model_files import TRUSTED_SKOPS_TYPES, ModelFileError, load_model, read_model, save_model
from include.spec import ALL_ESTIMATORS, Estimator, PipelineSpec, Target
from include.tasks.train.fit import build_pipeline
from tests.support.snapshots import conformed as _conform
from tests.support.snapshots import with_estimator as _spec

#: A few trees or iterations are enough to hold every type a full-size model holds.
SMALL = {
    "gradient_boosting": {"n_estimators": 3},
    "random_forest": {"n_estimators": 3},
    "extra_trees": {"n_estimators": 3},
    "lightgbm": {"n_estimators": 3},
    "hist_gradient_boosting": {"max_iter": 3},
}


def _task_spec(telco_spec: PipelineSpec, task: str, kind: str, params: dict) -> PipelineSpec:
    """The telco spec for ``task``: binary as written (churn); multiclass predicts the contract (three
    classes); regression predicts the monthly charges. The column predicted leaves the features."""
    if task == "binary":
        return _spec(telco_spec, kind=kind, params=params)
    feats = telco_spec.features
    if task == "multiclass":
        target = Target(column="contract", classes=["Month-to-month", "One year", "Two year"])
        features = feats.model_copy(update={"categorical": [c for c in feats.categorical if c != "contract"]})
    else:
        target = Target(column="monthly_charges")
        features = feats.model_copy(update={"numeric": [c for c in feats.numeric if c != "monthly_charges"]})
    return telco_spec.model_copy(
        update={
            "task": task,
            "target": target,
            "features": features,
            "estimator": Estimator(kind=kind, params=params),
        }
    )


def _tasks(family: str) -> list[str]:
    return ["binary", "multiclass"] if family == "classification" else ["regression"]


def _fitted(telco_spec, wa_churn, task: str, kind: str, params: dict):
    spec = _task_spec(telco_spec, task, kind, params)
    df = _conform(wa_churn.iloc[:200], spec, "2025-01")
    X = feature_frame(df, spec)
    return build_pipeline(spec).fit(X, labels(df, spec)), X


@pytest.mark.parametrize(
    ("task", "kind"), [(task, kind) for family, kind, _ in ALL_ESTIMATORS for task in _tasks(family)]
)
def test_every_shipped_estimator_loads_under_the_allowlist(telco_spec, wa_churn, task, kind):
    pipe, X = _fitted(telco_spec, wa_churn, task, kind, SMALL.get(kind, {}))
    loaded = load_model(save_model(pipe))
    if task == "regression":
        np.testing.assert_array_equal(loaded.predict(X), pipe.predict(X))
    else:
        np.testing.assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))


class Foreign:
    """Stands for code someone slipped into a model file."""

    def __init__(self):
        self.x = 1


def test_model_with_foreign_types_is_refused():
    import skops.io as sio

    data = sio.dumps({"payload": Foreign()})
    with pytest.raises(ModelFileError, match=r"not on Slipway's allowlist.*test_model_files.Foreign"):
        load_model(data)


def _with_reduce(model_bytes: bytes, module: str, name: str, arg: str) -> bytes:
    """``model_bytes`` with a ``module.name(arg)`` call (skops' reduce node) hidden in the model's state."""
    src = zipfile.ZipFile(io.BytesIO(model_bytes))
    schema = json.loads(src.read("schema.json"))
    attrs = schema["content"]  # the Pipeline's __dict__: keys are zipped with their types on load
    attrs["key_types"]["content"].append(attrs["key_types"]["content"][0])
    attrs["content"]["_payload"] = {
        "__class__": name,
        "__module__": module,
        "__loader__": "ConstructorFromReduceNode",
        "content": {
            "__class__": "tuple",
            "__module__": "builtins",
            "__loader__": "TupleNode",
            "content": [
                {
                    "__class__": "str",
                    "__module__": "builtins",
                    "__loader__": "JsonNode",
                    "content": json.dumps(arg),
                    "is_json": True,
                }
            ],
        },
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for item in src.namelist():
            data = json.dumps(schema).encode() if item == "schema.json" else src.read(item)
            dst.writestr(item, data)
    return out.getvalue()


@pytest.mark.parametrize(("module", "name"), [("builtins", "eval"), ("builtins", "exec")])
def test_a_model_file_cannot_run_code(tmp_path, telco_spec, wa_churn, module, name):
    spec = _spec(telco_spec, kind="decision_tree", params={"max_depth": 2})
    df = _conform(wa_churn.iloc[:200], spec, "2025-01")
    pipe = build_pipeline(spec).fit(feature_frame(df, spec), labels(df, spec))
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"
    crafted = _with_reduce(save_model(pipe), module, name, payload)
    with pytest.raises(ModelFileError, match=rf"builtins\.{name}") as err:
        load_model(crafted)
    assert "not on Slipway's allowlist" in str(err.value)
    assert not marker.exists()
    # Stored and pinned like a real model, the read path refuses it the same way.
    uri = storage.write_bytes(storage.path_to_uri(tmp_path / "model.skops"), crafted)
    with pytest.raises(ModelFileError, match=rf"builtins\.{name}"):
        read_model(f"{uri}#sha256={hashlib.sha256(crafted).hexdigest()}")
    assert not marker.exists()


def test_the_allowlist_is_exactly_what_the_shipped_estimators_need(telco_spec, wa_churn):
    """Nothing on the list that no shipped estimator needs, nothing missing: the union of skops'
    untrusted types over every estimator of ALL_ESTIMATORS (classifiers on a binary and a multiclass
    target, regressors on a number), fitted in Slipway's Pipeline."""
    import skops.io as sio

    needed: set[str] = set()
    by_family: dict[str, set[str]] = {}
    for family, kind, _ in ALL_ESTIMATORS:
        for task in _tasks(family):
            pipe, _X = _fitted(telco_spec, wa_churn, task, kind, SMALL.get(kind, {}))
            types = set(sio.get_untrusted_types(data=sio.dumps(pipe)))
            needed |= types
            by_family.setdefault(family, set()).update(types)
    assert TRUSTED_SKOPS_TYPES == frozenset(needed)
    # Each LightGBM estimator class is on the list because its own family needs it.
    assert "lightgbm.sklearn.LGBMRegressor" in by_family["regression"] - by_family["classification"]
    assert "lightgbm.sklearn.LGBMClassifier" in by_family["classification"] - by_family["regression"]


_FIT_AND_DUMP = r"""
import hashlib, sys
import numpy as np
import pandas as pd
from include.spec import ALL_ESTIMATORS, Estimator, Target, load_spec
from include.tasks.train.fit import build_pipeline
from include.model_files import save_model, load_model
spec = load_spec(sys.argv[1])
regression = spec.model_copy(update={"task": "regression", "target": Target(column="amount")})
for family, kind, _ in ALL_ESTIMATORS:
    base = regression if family == "regression" else spec
    s = base.model_copy(update={"estimator": Estimator(kind=kind, params={})})
    rng = np.random.RandomState(0)
    X = pd.DataFrame({c: rng.rand(80) for c in s.features.numeric + s.features.binary})
    for c in s.features.categorical:
        X[c] = rng.choice(["a", "b"], 80)
    y = X[s.features.numeric[0]].to_numpy() * 10 + rng.rand(80) if family == "regression" else np.arange(80) % 2
    pipe = build_pipeline(s).fit(X, y)
    data = save_model(pipe)
    predict = "predict" if family == "regression" else "predict_proba"
    assert (getattr(load_model(data), predict)(X) == getattr(pipe, predict)(X)).all()
    print(family, kind, hashlib.sha256(data).hexdigest())
"""


def test_the_same_model_serialises_to_the_same_bytes_in_every_process(project_root, tmp_path):
    """skops names members after memory addresses and stamps times; the saved model must not."""
    import subprocess
    import sys

    spec = str(project_root / "include" / "pipelines" / "telco_churn.yaml")
    runs = [
        subprocess.run(
            [sys.executable, "-c", _FIT_AND_DUMP, spec],
            cwd=project_root,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and len(runs[0].splitlines()) == len(ALL_ESTIMATORS)


_DUMP_IN_A_WORKER = r"""
import sys, warnings
import airflow.sdk, airflow.models, airflow.utils.timezone  # what a task process has loaded
import numpy as np, pandas as pd
from include.spec import load_spec
from include.tasks.train.fit import build_pipeline
from include.model_files import save_model
spec = load_spec(sys.argv[1])
rng = np.random.RandomState(0)
X = pd.DataFrame({c: rng.rand(60) for c in spec.features.numeric + spec.features.binary})
for c in spec.features.categorical:
    X[c] = rng.choice(["a", "b"], 60)
model = build_pipeline(spec).fit(X, np.arange(60) % 2)
seen = []
warnings.showwarning = lambda message, *a, **k: seen.append(str(message))
warnings.simplefilter("always")
save_model(model)
print(len(seen), seen[:2])
"""


def test_saving_a_model_in_an_airflow_worker_logs_no_warnings(project_root):
    """skops scans every loaded module; with Airflow's deprecation shims loaded that warned ~1,160 times."""
    import subprocess
    import sys

    spec = str(project_root / "include" / "pipelines" / "telco_churn.yaml")
    out = (
        subprocess.run(
            [sys.executable, "-c", _DUMP_IN_A_WORKER, spec],
            cwd=project_root,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert out == "0 []"
