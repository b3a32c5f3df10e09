"""Drift of served traffic against a model version's reference, on bins fixed once per version.

The **reference profile** of a version is computed once from its own training snapshot (the rows of
the training split) and its own scores on the held-out test split, and stored as JSON in the lake:
per feature the bins (numeric: the reference's inner deciles, or one bin per value when it has ten
or fewer; categorical and binary: one bin per category) with the reference's share in each, plus a
bin for unseen categories and one for missing values; the same for the scores.

The **hourly check** (the lean path) streams an interval's logged requests from the prediction log
in chunks, counts them into those bins and computes a population stability index per feature and
for the champion's scores. Memory stays bounded by one chunk whatever the traffic; no second pass.
Evidently renders the report stored with each run from a bounded sample of the same rows
(:func:`evidently_report`): its DataDriftPreset on the full interval would not fit the hour (about
139 s for 1M rows here), see ``make bench``.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from include.tasks.gates import check, not_applicable
from include.tasks.psi import numeric_bins, numeric_edges, psi_from_shares

PROFILE_FORMAT = 1
MISSING = "__missing__"
UNSEEN = "__unseen__"


def category_key(value) -> str:
    """A categorical or binary value as the profile spells it: 1, 1.0 and True are one category."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
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

    def bin_of(self, values: list) -> np.ndarray:
        if self.kind == "numeric":
            floats = np.array([np.nan if v is None else v for v in values], dtype=float)
            return numeric_bins(floats, np.asarray(self.edges, dtype=float))
        index = {c: i for i, c in enumerate(self.categories)}
        unseen, missing = len(self.categories), len(self.categories) + 1
        keys = (category_key(v) for v in values)
        return np.fromiter(
            (missing if k == MISSING else index.get(k, unseen) for k in keys),
            dtype=np.int64,
            count=len(values),
        )

    @classmethod
    def fit(cls, name: str, kind: str, values: list) -> FeatureBins:
        if kind == "numeric":
            floats = np.array([np.nan if v is None else v for v in values], dtype=float)
            bins = cls(name, kind, [], edges=[float(e) for e in numeric_edges(floats)])
            if np.isfinite(floats).any():
                bins.low, bins.high = float(np.nanmin(floats)), float(np.nanmax(floats))
        else:
            keys = sorted({category_key(v) for v in values} - {MISSING})
            bins = cls(name, kind, [], categories=keys)
        counts = np.bincount(bins.bin_of(values), minlength=bins.size)
        bins.shares = (counts / max(1, len(values))).tolist()
        return bins


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

    def __post_init__(self) -> None:
        self.features = {f.name: np.zeros(f.size, dtype=np.int64) for f in self.profile.features}
        self.scores = np.zeros(self.profile.scores.size, dtype=np.int64)

    def add(self, inputs: list[dict], probabilities: list[float]) -> None:
        """``inputs``: the logged request rows; ``probabilities``: the scores of the profile's version
        among them (may be fewer: rows served by another version add to the features only)."""
        self.rows += len(inputs)
        for f in self.profile.features:
            values = [row.get(f.name) for row in inputs]
            self.features[f.name] += np.bincount(f.bin_of(values), minlength=f.size)
        if probabilities:
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
    for rows in chunks:
        inputs = [orjson.loads(r[0]) for r in rows]
        scores = [float(r[2]) for r in rows if int(r[1]) == profile.version]
        counts.add(inputs, scores)
        for row in inputs:
            seen += 1
            if len(sample) < sample_rows:
                sample.append(row)
            elif sample_rows:
                j = int(rng.integers(0, seen))
                if j < sample_rows:
                    sample[j] = row
    return counts, sample


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
