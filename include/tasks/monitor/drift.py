"""Drift of served traffic against a model version's reference, on bins fixed once per version.

The **reference profile** of a version is computed once from its own training snapshot (the rows of
the training split) and its own scores on the held-out test split, and stored as JSON in the lake:
per feature the bins (numeric: the reference's inner deciles, or one bin per value when it has ten
or fewer; categorical and binary: one bin per category) with the reference's share in each, plus a
bin for unseen categories and one for missing values; the same for the scores.

The **hourly check** (the lean path) streams an interval's logged requests from the prediction log
in chunks, counts them into those bins and computes a population stability index per feature and
for the champion's scores. Memory stays bounded by two chunks (one read while the other is counted)
and the category memory (:class:`CategoryCoder`) whatever the traffic; no second pass. Per chunk the
rows' JSON is decoded straight to the features' values (:func:`values_decoder`), numeric values are
binned in arrays, categorical ones looked up once per distinct combination of values, and the
report's sample drawn with one call (docs/speed.md has the measurements).

Evidently renders the report stored with each run from a bounded sample of the same rows
(:func:`evidently_report`): its DataDriftPreset on the full interval takes about a minute and 2.3 GiB
for 1M rows here, fifteen times the lean path's time, see ``make bench``.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import math
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any, TypeVar

import numpy as np

from include.tasks.gates import check, not_applicable
from include.tasks.psi import numeric_bins, numeric_edges, psi_from_shares

T = TypeVar("T")

PROFILE_FORMAT = 1
MISSING = "__missing__"
UNSEEN = "__unseen__"


def category_key(value) -> str:
    """A categorical or binary value as the profile spells it: 1, 1.0 and True are one category.

    Values that compare equal get one key (numpy's True too, which equals 1): :class:`CategoryCoder`
    relies on it to key a value once, not once per row."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        f = float(value)
        return str(int(f)) if f.is_integer() else repr(f)
    return str(value)


@dataclass
class FeatureBins:
    """One feature's bins and the reference's shares in them (the last bin holds missing values;
    for a categorical feature the one before it holds categories the reference never had)."""

    name: str
    kind: str  # "numeric" | "categorical"
    shares: list[float]
    edges: list[float] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    # numeric: the reference's smallest and largest value (the data-quality check's fallback range
    # when the suite gives none); None in profiles built before they were recorded.
    low: float | None = None
    high: float | None = None

    @property
    def size(self) -> int:
        return len(self.edges) + 2 if self.kind == "numeric" else len(self.categories) + 2

    @property
    def missing_share(self) -> float:
        """The reference's share of missing values (the last bin)."""
        return float(self.shares[-1]) if self.shares else 0.0

    def bin_of(self, values: Sequence) -> np.ndarray:
        """The bin index of each value: numeric by the edges (None, NaN and infinities in the missing
        bin), categorical by :func:`category_key` (unseen categories in the bin before it)."""
        if self.kind == "numeric":
            # np.array turns None into NaN itself: no per-value Python step for a column of floats.
            return numeric_bins(np.array(values, dtype=float), np.asarray(self.edges, dtype=float))
        return CategoryCoder([self])(values)[:, 0]

    @classmethod
    def fit(cls, name: str, kind: str, values: list) -> FeatureBins:
        if kind == "numeric":
            floats = np.array(values, dtype=float)
            bins = cls(name, kind, [], edges=[float(e) for e in numeric_edges(floats)])
            if np.isfinite(floats).any():
                bins.low, bins.high = float(np.nanmin(floats)), float(np.nanmax(floats))
        else:
            keys = sorted({category_key(v) for v in values} - {MISSING})
            bins = cls(name, kind, [], categories=keys)
        counts = np.bincount(bins.bin_of(values), minlength=bins.size)
        bins.shares = (counts / max(1, len(values))).tolist()
        return bins


class CategoryCoder:
    """The bins of one or more categorical features, for a stream of chunks: :func:`category_key` runs
    once per distinct value of a feature, and a row's bins are looked up once per distinct combination
    of values across the features (the hourly check spent most of its time keying every value of
    every row).

    Each key is a value (one feature) or a tuple of one value per feature. Values that compare equal
    have one category key (``1 == 1.0 == True``: all ``"1"``), so remembering a key by the values
    themselves is exact for the values a JSON input holds and for numpy's scalars (not for a
    ``Decimal("1.50")``, equal to 1.5 but spelled otherwise: none reaches the check). Unhashable
    values (a list in a JSON input) are keyed anew each time. Past ``LIMIT`` remembered combinations
    or values the memory starts over: ever new values cost time, not memory.
    """

    LIMIT = 50_000

    def __init__(self, features: Sequence[FeatureBins]) -> None:
        self.index = [{c: i for i, c in enumerate(f.categories)} for f in features]
        # Per feature, value -> (the first equal value seen, its bin): combinations are remembered
        # with these values, so the memory holds each distinct value once, not once per combination.
        self.values: list[dict] = [{} for _ in features]
        self.memo: dict = {}  # combination -> its row in table
        self.table: list[tuple[int, ...]] = []  # per combination, the bin of each feature
        self._table = np.empty((0, len(features)), dtype=np.int64)

    def code(self, j: int, value) -> int:
        """The bin of ``value`` in feature ``j``: its category, unseen (last but one) or missing (last)."""
        key, categories = category_key(value), self.index[j]
        return len(categories) + 1 if key == MISSING else categories.get(key, len(categories))

    def learn(self, key) -> int:
        """The row of ``table`` for ``key``, added when it is new."""
        try:
            return self.memo[key]
        except (KeyError, TypeError):
            pass
        values = key if len(self.index) > 1 else (key,)
        kept, bins = [], []
        for j, value in enumerate(values):
            try:
                value, b = self.values[j][value]
            except KeyError:
                b = self.code(j, value)
                if value == value:  # NaN is never found again: not remembered
                    self.values[j][value] = value, b
            except TypeError:  # unhashable
                b = self.code(j, value)
            kept.append(value)
            bins.append(b)
        self.table.append(tuple(bins))
        with contextlib.suppress(TypeError):  # unhashable: not remembered
            self.memo[tuple(kept) if len(self.index) > 1 else kept[0]] = len(self.table) - 1
        return len(self.table) - 1

    def __call__(self, keys: Sequence) -> np.ndarray:
        """The bins of each key: one row per key, one column per feature."""
        if len(self.table) > self.LIMIT or any(len(v) > self.LIMIT for v in self.values):
            self.memo.clear()
            self.table.clear()
            self._table = self._table[:0]
            for v in self.values:
                v.clear()
        try:  # the usual chunk: every key seen before, one lookup each at C speed
            rows = np.fromiter(map(self.memo.__getitem__, keys), dtype=np.int64, count=len(keys))
        except (KeyError, TypeError):
            rows = np.fromiter(map(self.learn, keys), dtype=np.int64, count=len(keys))
        if len(self._table) < len(self.table):  # the combinations learnt in this call
            learnt = np.array(self.table[len(self._table) :], dtype=np.int64).reshape(-1, len(self.index))
            self._table = np.concatenate([self._table, learnt])
        return self._table[rows]


def row_values(rows: Sequence[dict], names: Sequence[str]) -> list:
    """Per request row, its values of ``names`` as a tuple (for one name, the value itself); None
    where a row lacks one."""
    try:
        return list(map(itemgetter(*names), rows))
    except KeyError:
        if len(names) == 1:
            return [row.get(names[0]) for row in rows]
        return [tuple(map(row.get, names)) for row in rows]


def values_decoder(
    groups: Sequence[Sequence[str]],
) -> Callable[[Sequence[str | bytes]], list[list] | None]:
    """A decoder of logged request rows (JSON objects) straight into, per group of names, the rows'
    values as :func:`row_values` gives them (a tuple per row, the value itself for one name; None
    where a row lacks one).

    It makes no dict per row and no object for the keys the check does not read: the hourly check
    on 1M rows takes a quarter less CPU than with orjson's dicts (3.1 s against 4.1 s here). The values
    are the ones orjson reads (the same types and floats; an integer past 64 bits stays an integer
    where orjson makes it a float, which bins alike). msgspec is a dependency (Airflow uses it too);
    the decoder answers None for a chunk it cannot read (a row that is not an object, malformed
    JSON), which the caller then parses as before."""
    import msgspec

    names = [n for group in groups for n in group]
    fields = [f"f{i}" for i in range(len(names))]  # any feature name, even one that is no identifier
    row = msgspec.defstruct(
        "LoggedInputs", [(f, Any, None) for f in fields], rename=dict(zip(fields, names, strict=True))
    )
    decode = msgspec.json.Decoder(row).decode
    getters, at = [], 0
    for group in groups:
        getters.append(attrgetter(*fields[at : at + len(group)]) if group else None)
        at += len(group)

    def values(texts: Sequence[str | bytes]) -> list[list] | None:
        try:
            rows = list(map(decode, texts))
        except msgspec.MsgspecError:
            return None
        return [list(map(get, rows)) if get else [] for get in getters]

    return values


@dataclass
class Profile:
    """A version's reference: feature bins from its training rows, score bins from its test scores."""

    pipeline: str
    version: int
    rows: int
    features: list[FeatureBins]
    scores: FeatureBins

    def to_json(self) -> bytes:
        body = {
            "format": PROFILE_FORMAT,
            "pipeline": self.pipeline,
            "version": self.version,
            "rows": self.rows,
            "features": [f.__dict__ for f in self.features],
            "scores": self.scores.__dict__,
        }
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Profile:
        body = json.loads(data)
        if body.get("format") != PROFILE_FORMAT:
            raise ValueError(f"reference profile format {body.get('format')!r}, expected {PROFILE_FORMAT}")
        return cls(
            body["pipeline"],
            int(body["version"]),
            int(body["rows"]),
            [FeatureBins(**f) for f in body["features"]],
            FeatureBins(**body["scores"]),
        )


def feature_kinds(spec) -> dict[str, str]:
    f = spec.features
    return {**{n: "numeric" for n in f.numeric}, **{n: "categorical" for n in (*f.binary, *f.categorical)}}


def build_profile(spec, version: int, snapshot, test_scores: np.ndarray) -> Profile:
    """The reference of ``version``: ``snapshot`` (a DataFrame of its training snapshot) restricted to
    the training split when it has one, and the version's scores on its test split."""
    from include.spec import SPLIT_COLUMN

    frame = snapshot[snapshot[SPLIT_COLUMN] == "train"] if SPLIT_COLUMN in snapshot else snapshot
    if not len(frame):
        raise ValueError(f"the training snapshot of {spec.name} version {version} has no training rows")
    features = []
    for name, kind in feature_kinds(spec).items():
        values = [None if (isinstance(v, float) and math.isnan(v)) else v for v in frame[name].tolist()]
        features.append(FeatureBins.fit(name, kind, values))
    scores = FeatureBins.fit("score", "numeric", [float(s) for s in test_scores])
    return Profile(spec.name, version, len(frame), features, scores)


@dataclass
class Counts:
    """An interval's rows counted into a profile's bins, one chunk at a time."""

    profile: Profile
    rows: int = 0
    scored: int = 0  # rows scored by the profile's version (the prediction drift's sample)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    coder: CategoryCoder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.features = {f.name: np.zeros(f.size, dtype=np.int64) for f in self.profile.features}
        self.scores = np.zeros(self.profile.scores.size, dtype=np.int64)
        self._numeric = [f for f in self.profile.features if f.kind == "numeric"]
        self._categorical = [f for f in self.profile.features if f.kind != "numeric"]
        self._edges = [np.asarray(f.edges, dtype=float) for f in self._numeric]
        # One coder for every categorical feature and the whole interval: what it learnt of one chunk's
        # values serves the next.
        self.coder = CategoryCoder(self._categorical)
        self._decode = values_decoder([[f.name for f in self._numeric], [f.name for f in self._categorical]])

    def add(self, inputs: Sequence[dict], probabilities: Sequence[float]) -> None:
        """``inputs``: the logged request rows; ``probabilities``: the scores of the profile's version
        among them (may be fewer: rows served by another version add to the features only)."""
        numeric = row_values(inputs, [f.name for f in self._numeric]) if self._numeric else []
        keys = row_values(inputs, [f.name for f in self._categorical]) if self._categorical else []
        self._count(len(inputs), numeric, keys, probabilities)

    def add_json(self, texts: Sequence[str | bytes], probabilities: Sequence[float]) -> None:
        """:meth:`add` for request rows as the log holds them, JSON objects: decoded straight to the
        features' values when msgspec reads every row (:func:`values_decoder`), else
        parsed to dicts (orjson); both count the same, the decoders agree on every value."""
        decoded = self._decode(texts) if self._decode is not None else None
        if decoded is None:
            import orjson

            self.add(list(map(orjson.loads, texts)), probabilities)
            return
        numeric, keys = decoded
        self._count(len(texts), numeric, keys, probabilities)

    def _count(self, n: int, numeric: list, keys: list, probabilities: Sequence[float]) -> None:
        """Count ``n`` rows given as their numeric values (a tuple per row, or the value for one
        feature) and their categorical keys (:class:`CategoryCoder`'s)."""
        self.rows += n
        if n and self._numeric:
            values = np.array(numeric, dtype=float).reshape(n, len(self._numeric))
            for j, (f, edges) in enumerate(zip(self._numeric, self._edges, strict=True)):
                self.features[f.name] += np.bincount(numeric_bins(values[:, j], edges), minlength=f.size)
        if n and self._categorical:
            bins = self.coder(keys)
            for j, f in enumerate(self._categorical):
                self.features[f.name] += np.bincount(bins[:, j], minlength=f.size)
        if len(probabilities):
            self.scored += len(probabilities)
            self.scores += np.bincount(
                self.profile.scores.bin_of(probabilities), minlength=self.profile.scores.size
            )

    def feature_psi(self) -> dict[str, float]:
        return {
            f.name: psi_from_shares(f.shares, self.features[f.name] / max(1, self.rows))
            for f in self.profile.features
        }

    def score_psi(self) -> float | None:
        if not self.scored:
            return None
        return psi_from_shares(self.profile.scores.shares, self.scores / self.scored)


def count_window(chunks: Iterable[list[tuple[str, int, float]]], profile: Profile, sample_rows: int = 0):
    """Count streamed rows into ``profile``'s bins; also keep a uniform sample of up to
    ``sample_rows`` request rows (reservoir sampling, seeded) for the Evidently report."""
    import orjson

    counts = Counts(profile)
    rng = np.random.default_rng(0)
    sample: list[dict] = []
    seen = 0
    with _cyclic_gc_paused(), contextlib.closing(read_ahead(chunks)) as stream:
        for rows in stream:
            if not rows:
                continue
            texts, versions, probabilities = list(zip(*rows, strict=True))[:3]
            ours = np.array(versions, dtype=np.int64) == profile.version
            counts.add_json(texts, np.array(probabilities, dtype=float)[ours])
            if sample_rows:
                # Only the rows the sample takes are parsed to dicts (a few in a hundred).
                fill = min(len(texts), sample_rows - len(sample))
                sample.extend(map(orjson.loads, texts[:fill]))
                if fill < len(texts):
                    # Reservoir sampling: row number ``seen`` (from 1) takes slot j = integers(0, seen)
                    # when j < sample_rows. One call for the chunk's rows draws the very numbers one
                    # call per row would, in order (numpy's bounded integers take the same draws per
                    # element; a test holds the two equal): the sample is the one per-row sampling kept.
                    slots = rng.integers(0, np.arange(seen + fill + 1, seen + len(texts) + 1))
                    for i in np.flatnonzero(slots < sample_rows).tolist():
                        sample[int(slots[i])] = orjson.loads(texts[fill + i])
            seen += len(texts)
    return counts, sample


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Python's cycle collector paused for the count: every chunk brings tens of thousands of fresh
    rows and tuples (none in a cycle, all freed by reference counting when the chunk is done), and
    the collector kept traversing them: a fifth of the check's time (3.9 s against 3.1 s here)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_ahead(chunks: Iterable[T]) -> Generator[T, None, None]:
    """``chunks``, the next one read by a helper thread while the caller counts this one: the
    database's share of a read (SQLite's page reads, PostgreSQL's server and network time) runs
    beside the counting instead of before it. At most two chunks are held at once."""
    from concurrent.futures import ThreadPoolExecutor

    source = iter(chunks)
    with ThreadPoolExecutor(1, thread_name_prefix="slipway-read-ahead") as reader:
        pending = reader.submit(_next_or_end, source)
        try:
            while (got := pending.result()) is not None:
                pending = reader.submit(_next_or_end, source)
                yield got[0]
        finally:
            # Stopped early or failed: close the source (its connection) after the read in flight.
            close = getattr(source, "close", None)
            if close is not None:
                reader.submit(close).result()


def _next_or_end(source: Iterator[T]) -> tuple[T] | None:
    """The next item of ``source`` in a 1-tuple, or None at its end."""
    for item in source:
        return (item,)
    return None


def drift_checks(cfg, counts: Counts) -> list[dict]:
    """Gate-shaped results: one per feature, one for the scores. Below ``cfg.min_rows``: not applicable."""
    gate = "drift"
    if counts.rows < cfg.min_rows:
        return [
            not_applicable(
                gate,
                "feature_psi",
                f"{counts.rows} served rows in the interval; drift is judged from {cfg.min_rows}",
            )
        ]
    results = [
        check(gate, f"psi[{name}]", value, cfg.max_feature_psi, "<=")
        for name, value in sorted(counts.feature_psi().items())
    ]
    score = counts.score_psi()
    if score is not None and counts.scored >= cfg.min_rows:
        results.append(check(gate, "psi[prediction]", score, cfg.max_prediction_psi, "<="))
    else:
        results.append(
            not_applicable(
                gate,
                "psi[prediction]",
                f"{counts.scored} rows scored by version {counts.profile.version}; judged from {cfg.min_rows}",
            )
        )
    return results


def report_frames(kinds: dict[str, str], reference, sample: list[dict]):
    """The reference sample and the interval's sample as the report compares them: numeric columns as
    floats, binary and categorical ones spelled as the check spells them (:func:`category_key`: the
    log holds a binary 1 as 1.0, the snapshot as 1; as plain strings the report would see two
    disjoint categories and call every binary column drifted)."""
    import pandas as pd

    ref = reference[list(kinds)].reset_index(drop=True)
    cur = pd.DataFrame(sample, columns=list(kinds))
    for name, kind in kinds.items():
        if kind == "numeric":
            ref[name], cur[name] = ref[name].astype(float), pd.to_numeric(cur[name], errors="coerce")
        else:
            ref[name], cur[name] = ref[name].map(category_key), cur[name].map(category_key)
    return ref, cur


def evidently_report(reference, current, html_path: str, json_path: str, psi_threshold: float = 0.25) -> dict:
    """Evidently's DataDriftPreset on two DataFrames of the same columns; writes HTML and JSON and
    returns its dataset-level summary (drifted columns, their share) and which columns drifted.

    The report measures what the drift check measures, PSI against the same threshold, so the two
    agree on what "drifted" means; they still differ in what they see: the check counts every row
    of the interval into the reference profile's bins, the report compares a sample of the interval
    with the reference's stored sample in Evidently's own bins (``measure`` says so)."""
    import warnings

    from evidently import Report
    from evidently.presets import DataDriftPreset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset(method="psi", threshold=psi_threshold)]).run(
            reference_data=reference, current_data=current
        )
    snapshot.save_html(html_path)
    body = snapshot.json()
    with open(json_path, "w") as fh:
        fh.write(body)
    summary: dict = {
        "measure": (
            f"Evidently: PSI > {psi_threshold:g} per column, {len(current)} sampled rows of the interval "
            f"against {len(reference)} reference rows"
        ),
        "drifted": [],
    }
    for metric in json.loads(body).get("metrics", []):
        name = str(metric.get("metric_name", ""))
        value = metric.get("value")
        if name.startswith("DriftedColumnsCount"):
            value = value or {}
            summary |= {"drifted_columns": int(value.get("count") or 0), "share": value.get("share")}
        elif name.startswith("ValueDrift(") and isinstance(value, int | float) and value > psi_threshold:
            column = name[len("ValueDrift(column=") :].split(",method=")[0]
            summary["drifted"].append(column)
    return summary


def read_snapshot(snapshot_uri: str):
    import pandas as pd

    from include import storage

    return pd.read_parquet(io.BytesIO(storage.read_bytes(snapshot_uri)))
