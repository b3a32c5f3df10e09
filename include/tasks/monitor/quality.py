"""Data quality of the served inputs of an interval, against the champion's reference profile.

Per feature, three shares of the interval's served rows (every row, streamed in chunks like the
drift check, into the same reference bins of :mod:`include.tasks.monitor.drift`):

* **null rate**: the share of missing values, against the training rows' own null rate (the
  profile's missing bin) plus ``max_null_rate_increase``;
* **out of range** (numeric): the share of values outside the range the expectation suite allows
  (``expect_column_values_to_be_between``), or, where the suite gives none, the training rows'
  smallest and largest value; above ``max_out_of_range_share`` breaches;
* **unseen categories** (binary and categorical): the share of values the training rows never had
  (the profile's unseen bin); above ``max_unseen_share`` breaches.

Drift asks whether the mix of valid values moved; this check asks whether the values are still
valid: a broken upstream join that turns a column into nulls may move its PSI little when the
column was often missing, and a unit change that puts every charge 100 times higher is a range
breach before it is a drift.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from include.tasks.gates import check, not_applicable
from include.tasks.monitor.drift import Profile

GATE = "data_quality"


def suite_ranges(suite_path: str | Path | None) -> dict[str, tuple[float | None, float | None]]:
    """``{column: (min, max)}`` of the suite's ``expect_column_values_to_be_between`` (either side may be
    open); none when there is no suite file."""
    if suite_path is None or not Path(suite_path).is_file():
        return {}
    body = json.loads(Path(suite_path).read_text(encoding="utf-8"))
    out: dict[str, tuple[float | None, float | None]] = {}
    for e in body.get("expectations", []):
        kind = e.get("type") or e.get("expectation_type")
        kw = e.get("kwargs") or {}
        if kind == "expect_column_values_to_be_between" and "column" in kw:
            lo, hi = kw.get("min_value"), kw.get("max_value")
            out[kw["column"]] = (None if lo is None else float(lo), None if hi is None else float(hi))
    return out


@dataclass
class QualityCounts:
    """The interval's rows counted per feature: missing, unseen category, out of range."""

    profile: Profile
    ranges: dict[str, tuple[float | None, float | None]]  # per numeric feature; absent: no range known
    ranges_from: dict[str, str]  # per numeric feature: "suite" | "training rows"
    rows: int = 0
    nulls: dict[str, int] = field(default_factory=dict)
    unseen: dict[str, int] = field(default_factory=dict)
    out_of_range: dict[str, int] = field(default_factory=dict)

    def add(self, inputs: list[dict]) -> None:
        self.rows += len(inputs)
        for f in self.profile.features:
            values = [row.get(f.name) for row in inputs]
            bins = f.bin_of(values)
            self.nulls[f.name] = self.nulls.get(f.name, 0) + int((bins == f.size - 1).sum())
            if f.kind == "categorical":
                self.unseen[f.name] = self.unseen.get(f.name, 0) + int((bins == f.size - 2).sum())
            elif f.name in self.ranges:
                lo, hi = self.ranges[f.name]
                x = np.array([np.nan if v is None else v for v in values], dtype=float)
                bad = np.zeros(len(x), dtype=bool)
                if lo is not None:
                    bad |= x < lo
                if hi is not None:
                    bad |= x > hi
                self.out_of_range[f.name] = self.out_of_range.get(f.name, 0) + int(bad.sum())


def allowed_ranges(profile: Profile, suite: dict[str, tuple[float | None, float | None]]):
    """Per numeric feature the range checked and where it comes from: the suite's where it has one,
    else the training rows' (recorded in profiles built since ranges were kept)."""
    ranges: dict[str, tuple[float | None, float | None]] = {}
    origin: dict[str, str] = {}
    for f in profile.features:
        if f.kind != "numeric":
            continue
        if f.name in suite:
            ranges[f.name], origin[f.name] = suite[f.name], "suite"
        elif f.low is not None and f.high is not None:
            ranges[f.name], origin[f.name] = (f.low, f.high), "training rows"
    return ranges, origin


def count_quality(
    chunks: Iterable[list[tuple[str, int, float]]],
    profile: Profile,
    suite: dict[str, tuple[float | None, float | None]],
) -> QualityCounts:
    """Count the streamed rows (``served_inputs``' chunks) of an interval."""
    import orjson

    ranges, origin = allowed_ranges(profile, suite)
    counts = QualityCounts(profile, ranges, origin)
    for rows in chunks:
        counts.add([orjson.loads(r[0]) for r in rows])
    return counts


def _fmt(r: tuple[float | None, float | None]) -> str:
    return f"[{'-inf' if r[0] is None else f'{r[0]:g}'}, {'inf' if r[1] is None else f'{r[1]:g}'}]"


def quality_checks(cfg, counts: QualityCounts | None) -> list[dict]:
    """Gate-shaped results, per feature: null rate, and out-of-range or unseen share. A disabled check,
    or fewer than ``cfg.min_rows`` rows: one ``not_applicable`` result with the reason."""
    if not cfg.enabled:
        return [not_applicable(GATE, "data_quality", "monitoring.data_quality.enabled is false")]
    if counts is None:
        raise ValueError("quality_checks needs the interval's counts when the check is enabled")
    n = counts.rows
    if n < cfg.min_rows:
        return [
            not_applicable(
                GATE,
                "data_quality",
                f"{n} served rows in the interval; data quality is judged from {cfg.min_rows}",
            )
        ]
    results = []
    for f in counts.profile.features:
        base = f.missing_share
        results.append(
            check(
                GATE,
                f"null_rate[{f.name}]",
                counts.nulls[f.name] / n,
                round(min(1.0, base + cfg.max_null_rate_increase), 6),
                "<=",
                note=f"training null rate {base:.4f}; {counts.nulls[f.name]} of {n} served rows missing",
            )
        )
        if f.kind == "categorical":
            results.append(
                check(
                    GATE,
                    f"unseen_share[{f.name}]",
                    counts.unseen[f.name] / n,
                    cfg.max_unseen_share,
                    "<=",
                    note=f"{counts.unseen[f.name]} of {n} served rows outside the training categories "
                    f"{f.categories[:12]}",
                )
            )
        elif f.name in counts.ranges:
            results.append(
                check(
                    GATE,
                    f"out_of_range_share[{f.name}]",
                    counts.out_of_range[f.name] / n,
                    cfg.max_out_of_range_share,
                    "<=",
                    note=f"{counts.out_of_range[f.name]} of {n} served rows outside "
                    f"{_fmt(counts.ranges[f.name])} (from the {counts.ranges_from[f.name]})",
                )
            )
        else:
            results.append(
                not_applicable(
                    GATE,
                    f"out_of_range_share[{f.name}]",
                    f"no range for {f.name!r}: the suite has no expect_column_values_to_be_between for it "
                    "and the version's reference profile predates recorded training ranges",
                )
            )
    return results
