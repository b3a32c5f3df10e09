"""The drift check's fast count (JSON decoded straight to the features' values, one category key per
distinct value, arrays per chunk, one draw call per chunk for the report's sample, the next chunk
read ahead) gives exactly what a plain row-by-row count gives: the same bins, PSI, checks and sampled
rows, on inputs with missing keys, nulls, NaN, infinities, out-of-range numbers, unseen and
unhashable categories, and binary values spelled 1, 1.0, True or "1"; with msgspec and without."""

from __future__ import annotations

import bisect
import gc
import math

import numpy as np
import orjson
import pytest

from include.spec import DriftCheck
from include.tasks.monitor.drift import (
    MISSING,
    CategoryCoder,
    Counts,
    FeatureBins,
    Profile,
    category_key,
    count_window,
    drift_checks,
    read_ahead,
    values_decoder,
)

VERSION = 3
POOLS = {
    # numeric: inside, on an edge (int and float), below and above the reference's range, missing
    "amount": [5.0, 10, 10.0, 55.5, -3.5, 1e9, 0, True, None, float("nan"), float("inf"), float("-inf")],
    # binary: one category however it is spelled; 2 and 0.5 were never seen; NaN is missing
    "flag": [1, 1.0, True, "1", 0, 0.0, False, "0", 2, 0.5, None, float("nan")],
    # categorical: unseen strings, a number, an empty string, an unhashable list
    "plan": ["basic", "pro", "enterprise", "", "Basic", 1, None, [1, 2], float("nan")],
}


def _profile() -> Profile:
    def bins(name, kind, size, **kw):
        return FeatureBins(name, kind, [1.0 / size] * size, **kw)

    return Profile(
        "bench",
        VERSION,
        1000,
        [
            bins("amount", "numeric", 5, edges=[0.0, 10.0, 100.0], low=0.0, high=99.0),
            bins("flag", "categorical", 4, categories=["0", "1"]),
            bins("plan", "categorical", 4, categories=["basic", "pro"]),
        ],
        bins("score", "numeric", 5, edges=[0.25, 0.5, 0.75]),
    )


def _rows(n: int, seed: int = 0, json_safe: bool = False) -> list[dict]:
    """Request rows drawn from the pools; about one row in ten lacks a key."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        row = {}
        for name, pool in POOLS.items():
            if rng.random() < 0.1:
                continue
            value = pool[int(rng.integers(0, len(pool)))]
            if json_safe and isinstance(value, float) and not math.isfinite(value):
                value = None  # the log's JSON has no NaN or infinity: orjson writes them as null
            row[name] = value
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the plain reference
def _reference_bin(f: FeatureBins, value) -> int:
    """One value's bin, the obvious way: bisect on the edges, the profile's key per category."""
    if f.kind == "numeric":
        if value is None or not math.isfinite(float(value)):
            return f.size - 1
        return bisect.bisect_right(f.edges, float(value))
    key = category_key(value)
    if key == MISSING:
        return f.size - 1
    return f.categories.index(key) if key in f.categories else f.size - 2


def _reference_count(chunks, profile: Profile, sample_rows: int):
    """Row by row: parse, bin every feature, score, and keep a reservoir sample with one draw per row."""
    features = {f.name: [0] * f.size for f in profile.features}
    scores = [0] * profile.scores.size
    rows = scored = seen = 0
    rng = np.random.default_rng(0)
    sample: list[dict] = []
    for chunk in chunks:
        for text, version, probability in chunk:
            row = orjson.loads(text)
            rows += 1
            for f in profile.features:
                features[f.name][_reference_bin(f, row.get(f.name))] += 1
            if int(version) == profile.version:
                scored += 1
                scores[_reference_bin(profile.scores, float(probability))] += 1
            seen += 1
            if len(sample) < sample_rows:
                sample.append(row)
            elif sample_rows:
                j = int(rng.integers(0, seen))
                if j < sample_rows:
                    sample[j] = row
    return features, scores, rows, scored, sample


def _log_chunks(rows: list[dict], size: int, seed: int = 1) -> list[list[tuple]]:
    """The rows as the prediction log returns them: (inputs JSON, version, probability), in chunks;
    one row in four served by another version; probabilities on and between the score edges."""
    rng = np.random.default_rng(seed)
    probabilities = rng.choice([0.0, 0.1, 0.25, 0.3, 0.5, 0.6, 0.75, 0.9, 1.0], size=len(rows))
    logged = [
        (orjson.dumps(r).decode(), VERSION if i % 4 else VERSION + 1, float(p))
        for i, (r, p) in enumerate(zip(rows, probabilities, strict=True))
    ]
    return [logged[i : i + size] for i in range(0, len(logged), size)]


def _same_counts(counts: Counts, features: dict, scores: list, rows: int, scored: int) -> None:
    assert counts.rows == rows and counts.scored == scored
    assert {k: v.tolist() for k, v in counts.features.items()} == features
    assert counts.scores.tolist() == scores


# ------------------------------------------------------------------------------------------- tests
@pytest.fixture(params=["msgspec", "orjson"])
def decoder(request, monkeypatch):
    """Both ways a chunk's JSON is read: straight into tuples (msgspec), or dicts (orjson) when
    msgspec is missing or cannot read a chunk."""
    if request.param == "orjson":
        monkeypatch.setattr("include.tasks.monitor.drift.values_decoder", lambda groups: None)
    return request.param


@pytest.mark.parametrize(("chunk", "sample_rows"), [(1, 7), (7, 50), (500, 0), (500, 1), (3000, 5000)])
def test_count_window_equals_a_row_by_row_count_and_sample(decoder, chunk, sample_rows):
    profile = _profile()
    chunks = _log_chunks(_rows(2500, json_safe=True), chunk)
    counts, sample = count_window(chunks, profile, sample_rows)
    features, scores, rows, scored, ref_sample = _reference_count(chunks, profile, sample_rows)
    _same_counts(counts, features, scores, rows, scored)
    assert sample == ref_sample and len(sample) == min(sample_rows, rows)
    # Every bin was reached, so the inputs covered what they claim to.
    assert all(min(v) > 0 for v in features.values()), features

    reference = Counts(profile)
    reference.features = {k: np.array(v) for k, v in features.items()}
    reference.scores, reference.rows, reference.scored = np.array(scores), rows, scored
    assert counts.feature_psi() == reference.feature_psi()
    assert counts.score_psi() == reference.score_psi()
    cfg = DriftCheck(min_rows=100, report_sample_rows=200)
    assert drift_checks(cfg, counts) == drift_checks(cfg, reference)


def test_counts_add_takes_python_values_the_json_cannot_hold():
    """NaN and infinities, as a caller holding Python rows may pass them, chunk after chunk."""
    profile = _profile()
    rows = _rows(1200, seed=5)
    counts = Counts(profile)
    for lo in range(0, len(rows), 250):
        counts.add(rows[lo : lo + 250], [0.1, 0.5, 0.75])
    expected = {f.name: [0] * f.size for f in profile.features}
    for row in rows:
        for f in profile.features:
            expected[f.name][_reference_bin(f, row.get(f.name))] += 1
    score_bins = [_reference_bin(profile.scores, p) for p in [0.1, 0.5, 0.75] * 5]
    _same_counts(counts, expected, [score_bins.count(i) for i in range(profile.scores.size)], len(rows), 15)


def test_the_two_decoders_read_the_same_values():
    names = ["amount", "flag", "plan", "not in any row", "ünïcode key"]
    rows = [{**r, "ünïcode key": "é\u2028"} for r in _rows(400, seed=7, json_safe=True)]
    rows += [{"flag": -(2**63), "plan": {"nested": [1, None]}}, {}, {"plan": "x", "extra": 1}]
    texts = [orjson.dumps(r).decode() for r in rows]
    texts += [
        '{"amount": 18446744073709551616}',  # past 64 bits: an integer to one, a float to the other
        '{"amount": 1.5, "amount": 2.5}',
        ' {"flag":1E2} ',
        '{"pl\\u0061n": "escaped key"}',
    ]
    (decoded,) = values_decoder([names])(texts)
    parsed = [tuple(orjson.loads(t).get(n) for n in names) for t in texts]
    assert decoded == parsed
    assert [list(map(type, r)) for r in decoded[:-4]] == [list(map(type, r)) for r in parsed[:-4]]
    # Groups as Counts asks for them: a value per row for a group of one, nothing for an empty one.
    assert values_decoder([["plan"], [], names[:2]])(texts[:50]) == [
        [orjson.loads(t).get("plan") for t in texts[:50]],
        [],
        [tuple(orjson.loads(t).get(n) for n in names[:2]) for t in texts[:50]],
    ]
    assert decoded[-3][0] == 2.5 and decoded[-1][2] == "escaped key"
    # A chunk it cannot read is left to the dict parser (which reports a malformed row as before).
    assert values_decoder([names])(texts[:3] + ["null"]) is None
    assert values_decoder([names])(texts[:3] + ['{"amount": 1']) is None


def test_the_category_memory_keys_equal_values_alike_and_can_start_over(decoder, monkeypatch):
    profile = _profile()
    flag = profile.features[1]
    # 1, 1.0, True and "1" are one category whichever is seen first, in one chunk or the next.
    spellings, bins = [1, 1.0, True, "1", 0, False, 0.0, 2, None], [1, 1, 1, 1, 0, 0, 0, 2, 3]
    for first in (True, 1, 1.0, "1"):
        coder = CategoryCoder([flag])
        assert coder([first])[:, 0].tolist() == [1]
        assert coder(spellings)[:, 0].tolist() == bins
    # numpy's True equals 1 and is keyed so: the memory never meets two spellings of one key.
    assert category_key(np.True_) == category_key(np.int64(1)) == category_key(np.float32(1)) == "1"
    assert CategoryCoder([flag])([1, np.True_, np.False_])[:, 0].tolist() == [1, 1, 0]
    # bin_of (the data-quality check's path) agrees with the reference value by value.
    for f in profile.features:
        values = POOLS[f.name] * 3
        assert f.bin_of(values).tolist() == [_reference_bin(f, v) for v in values]
    # A memory emptied every few keys (as ever new values would make it) changes no count.
    monkeypatch.setattr(CategoryCoder, "LIMIT", 3)
    chunks = _log_chunks(_rows(900, seed=2, json_safe=True), 40)
    counts, sample = count_window(chunks, profile, 25)
    features, scores, rows, scored, ref_sample = _reference_count(chunks, profile, 25)
    _same_counts(counts, features, scores, rows, scored)
    assert sample == ref_sample


def test_fit_shares_count_missing_values_as_before():
    values = [1.0, 2, None, float("nan"), 3.5, True, float("inf"), 7.0] * 3
    bins = FeatureBins.fit("x", "numeric", values)
    expected = [_reference_bin(bins, v) for v in values]
    assert bins.shares == [expected.count(i) / len(values) for i in range(bins.size)]
    cats = FeatureBins.fit("c", "categorical", ["a", 1, 1.0, True, None, float("nan"), "b"])
    assert cats.categories == ["1", "a", "b"]
    assert cats.shares == [3 / 7, 1 / 7, 1 / 7, 0.0, 2 / 7]


def test_one_draw_call_per_chunk_draws_what_one_call_per_row_draws():
    """The reservoir's equality rests on numpy drawing bounded integers element by element; this
    holds it, below and above 2**32 (where numpy switches from 32- to 64-bit draws)."""
    for start in (1, 5000, 2**32 - 40):
        per_row, per_chunk = np.random.default_rng(0), np.random.default_rng(0)
        one_by_one = [int(per_row.integers(0, s)) for s in range(start, start + 2000)]
        assert per_chunk.integers(0, np.arange(start, start + 2000)).tolist() == one_by_one
        assert per_row.integers(0, 10**9) == per_chunk.integers(0, 10**9)  # the streams stay in step


def test_read_ahead_yields_in_order_and_closes_its_source():
    closed = []

    def source():
        try:
            yield from ([i] * 3 for i in range(10))
        finally:
            closed.append(True)

    assert list(read_ahead(source())) == [[i] * 3 for i in range(10)]
    assert closed == [True]
    held = source()  # held here too: only an explicit close can end it
    stream = read_ahead(held)
    assert next(stream) == [0, 0, 0]
    stream.close()  # the consumer stops early: the source (a database cursor) is closed all the same
    assert closed == [True, True]

    def failing():
        yield [1]
        raise RuntimeError("connection lost")

    with pytest.raises(RuntimeError, match="connection lost"):
        list(read_ahead(failing()))


def test_count_window_leaves_the_garbage_collector_as_it_found_it():
    profile = _profile()
    chunks = _log_chunks(_rows(50, json_safe=True), 10)
    assert gc.isenabled()
    count_window(chunks, profile, 5)
    assert gc.isenabled()
    gc.disable()
    try:
        count_window(chunks, profile, 5)
        assert not gc.isenabled()
    finally:
        gc.enable()
