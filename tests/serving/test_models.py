"""Loading a version: digest, external data (CVE-2024-27318 class), schema read from the graph."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from include.model_files import ModelRefused, load_onnx


def _graph(folder, external: str | None) -> str:
    """A tiny graph (x * w) whose weight is inline or points at ``external``; returns its sha256."""
    w = numpy_helper.from_array(np.array([[2.0]], dtype=np.float32), name="w")
    if external is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for k, v in {"location": external, "offset": "0", "length": "4"}.items():
            entry = w.external_data.add()
            entry.key, entry.value = k, v
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["probabilities"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 1])],
        [w],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "location", ["../secret.bin", "../../etc/passwd", "/etc/passwd", "sub/../../x.bin", "weights.bin"]
)
def test_a_graph_with_external_data_is_refused_wherever_it_points(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.array([7.0], dtype=np.float32).tobytes())
    (folder / "weights.bin").write_bytes(np.array([2.0], dtype=np.float32).tobytes())  # even its own
    digest = _graph(folder, location)
    with pytest.raises(ModelRefused, match="references external data"):
        load_onnx("p", 1, folder, digest, 0.5)


def test_the_graph_served_is_the_one_hashed_even_if_the_file_changes_after(tmp_path, monkeypatch):
    from include import model_files

    digest = _graph(tmp_path, None)
    real = model_files.onnx_session

    def swap_then_load(data: bytes, threads: int = 1):  # the file is replaced between hash and load
        (tmp_path / "model.onnx").write_bytes(b"not the graph that was hashed")
        return real(data, threads)

    monkeypatch.setattr(model_files, "onnx_session", swap_then_load)
    model = load_onnx("p", 1, tmp_path, digest, 0.5)
    assert float(model.session.run(None, {"x": np.array([[1.5]], dtype=np.float32)})[0][0][0]) == 3.0


def test_a_loaded_or_refused_version_leaves_no_download_behind(tmp_path, monkeypatch):
    from include.serving import models

    def fake_load(client, pipeline, version, folder):
        (folder / "model.onnx").write_bytes(b"x" * 1000)
        if version == 2:
            raise ModelRefused("corrupt")
        return load_onnx("p", version, good, good_digest, 0.5)

    good = tmp_path / "good"
    good.mkdir()
    good_digest = _graph(good, None)
    monkeypatch.setattr(models, "load_version", fake_load)
    registry = models.ModelRegistry(["p"])
    try:
        assert registry._load(None, "p", 1, None).version == 1
        with pytest.raises(ModelRefused):
            registry._load(None, "p", 2, None)
        assert list(registry._workdir.iterdir()) == []
    finally:
        registry.stop()


def test_a_digest_mismatch_is_refused_before_parsing(tmp_path):
    _graph(tmp_path, None)
    with pytest.raises(ModelRefused, match="changed or corrupted after registration"):
        load_onnx("p", 1, tmp_path, "0" * 64, 0.5)
    (tmp_path / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelRefused, match="not a readable ONNX graph"):
        load_onnx("p", 1, tmp_path, hashlib.sha256(b"not a graph").hexdigest(), 0.5)


def test_an_inline_graph_loads_and_its_inputs_are_read(tmp_path):
    digest = _graph(tmp_path, None)
    model = load_onnx("p", 3, tmp_path, digest, 0.25)
    assert model.inputs == {"x": "float"} and model.version == 3 and model.threshold == 0.25
    out = model.session.run(None, {"x": np.array([[1.5]], dtype=np.float32)})[0]
    assert float(out[0][0]) == 3.0
    assert onnx.load(str(tmp_path / "model.onnx")).graph.initializer[0].name == "w"
