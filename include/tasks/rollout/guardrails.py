"""Shadow and canary evidence from the prediction log, judged against the spec's rollout section.

A window is every row of a pipeline in ``[since, until)`` for the two versions in play, read from
the prediction log (the one record every replica of the service writes).

* **Shadow**: each request scored by the champion (served) and mirrored to the challenger (logged,
  never returned). Paired by request id: decision disagreement (0/1, or the decided class) and mean
  |Δp| (over every class for a multiclass model), or for a regression the mean relative |Δ| of the
  predictions; the challenger's p99 model latency and failure rate.
* **Canary**: each entity routed to one variant. Error rate, p99 model latency, the PSI of the
  challenger's scores against the champion's in the same window (the probability; per class, the
  largest; the predicted number) and, once labels arrived, a one-sided Welch t-test of the loss
  (brier, log loss or error rate; a regression's squared or absolute error): the challenger fails when
  it is worse than the champion by more than ``max_metric_degradation`` (for a regression, that share
  of the champion's mean loss) at the spec's confidence. An entity's rows are averaged into one
  observation; looks before a step's end need ``interim_confidence``, its last look the spec's
  ``confidence`` (why: docs/design.md, "The canary's statistics").

Every result is a gate check (:mod:`include.tasks.gates`); a check with too little data is
``not_applicable`` with the count it had, never ``passed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from include.prediction_log import reads
from include.tasks.gates import FAILED, PASSED, check, not_applicable
from include.tasks.psi import numeric_edges, psi_from_shares

PSI_BINS = 10


@dataclass
class Arm:
    """One variant's rows in a window."""

    version: int
    probability: np.ndarray = field(default_factory=lambda: np.empty(0))
    decision: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=int))
    latency_ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    label: np.ndarray = field(default_factory=lambda: np.empty(0))  # NaN where no label yet
    scores: np.ndarray | None = None  # multiclass: rows x classes probabilities (the log's scores)
    request_id: list[str] = field(default_factory=list)
    entity: list[str | None] = field(default_factory=list)  # hashed entity key; None when absent
    failures: int = 0

    @property
    def rows(self) -> int:
        return len(self.probability)

    @property
    def routed(self) -> int:
        """Rows sent to this variant: scored plus failed."""
        return self.rows + self.failures


@dataclass
class Window:
    since: str
    until: str
    champion: Arm
    challenger: Arm

    def summary(self) -> dict:
        return {
            "since": self.since,
            "until": self.until,
            "champion": {"version": self.champion.version, "rows": self.champion.rows},
            "challenger": {
                "version": self.challenger.version,
                "rows": self.challenger.rows,
                "failures": self.challenger.failures,
            },
        }


def read_window(
    db_url: str | None, pipeline: str, champion: int, challenger: int, since: str, until: str, shadow: bool
) -> Window:
    """The window's rows from the prediction log. ``shadow``: the challenger's unserved mirror rows;
    otherwise the rows each variant served. ``since``/``until`` are ISO-8601 UTC (the log's format)."""
    rows, failed = reads.rollout_window(db_url, pipeline, champion, challenger, since, until, shadow)
    arms = {"champion": Arm(champion), "challenger": Arm(challenger, failures=int(failed))}
    for variant, arm in arms.items():
        mine = [r for r in rows if r[1] == variant]
        arm.request_id = [r[0] for r in mine]
        arm.entity = [r[7] for r in mine]
        arm.probability = np.array([r[3] for r in mine], dtype=float)
        arm.decision = np.array([r[4] for r in mine], dtype=float)  # a regression's amount, or a class
        arm.latency_ms = np.array([r[5] for r in mine], dtype=float)
        arm.label = np.array([np.nan if r[6] is None else r[6] for r in mine], dtype=float)
        if mine and len(mine[0]) > 8 and all(r[8] for r in mine):
            import orjson

            arm.scores = np.array([orjson.loads(r[8]) for r in mine], dtype=float)
    return Window(since, until, arms["champion"], arms["challenger"])


def p99(values: np.ndarray) -> float | None:
    return float(np.percentile(values, 99)) if len(values) else None


def psi(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``current`` against ``reference``, on the reference's bins
    (its inner deciles, or one bin per value when it has ``bins`` or fewer: see
    :func:`include.tasks.psi.numeric_edges`)."""
    edges = numeric_edges(reference, bins)
    shares = [
        np.bincount(
            np.searchsorted(edges, np.asarray(x, dtype=float), side="right"), minlength=len(edges) + 1
        )
        / len(x)
        for x in (reference, current)
    ]
    return psi_from_shares(shares[0], shares[1])


def row_loss(
    metric: str,
    probability: np.ndarray,
    label: np.ndarray,
    threshold: float = 0.5,
    scores: np.ndarray | None = None,
    decision: np.ndarray | None = None,
) -> np.ndarray:
    """Per-row loss, lower is better: squared error of the probability (brier), log loss, or a wrong
    decision (error_rate); a regression's squared_error or absolute_error of the prediction. A
    multiclass row's log loss is -log of the probability of its true class (``scores``), its error a
    decided class (``decision``) that is not the label."""
    if scores is not None:  # multiclass
        if metric == "log_loss":
            true = scores[np.arange(len(label)), label.astype(int)]
            return -np.log(np.clip(true, 1e-7, 1.0))
        if metric == "error_rate" and decision is not None:
            return (decision != label).astype(float)
        raise ValueError(
            f"metric {metric!r} is not defined for a multiclass model; use log_loss or error_rate"
        )
    if metric == "squared_error":
        return (probability - label) ** 2
    if metric == "absolute_error":
        return np.abs(probability - label)
    p = np.clip(probability, 1e-7, 1 - 1e-7)
    if metric == "brier":
        return (probability - label) ** 2
    if metric == "log_loss":
        return -(label * np.log(p) + (1 - label) * np.log(1 - p))
    if metric == "error_rate":
        return ((probability >= threshold).astype(float) != label).astype(float)
    raise ValueError(
        f"unknown metric {metric!r}; use brier, log_loss, error_rate, squared_error or absolute_error"
    )


def worse_test(challenger_loss: np.ndarray, champion_loss: np.ndarray, margin: float) -> tuple[float, float]:
    """(mean difference, one-sided p-value) of H1: challenger's mean loss > champion's + margin
    (Welch's t-test: the two arms are different customers, with different variances)."""
    from scipy import stats

    diff = float(challenger_loss.mean() - champion_loss.mean())
    result = stats.ttest_ind(challenger_loss - margin, champion_loss, equal_var=False, alternative="greater")
    pvalue = float(result.pvalue)
    return diff, (1.0 if math.isnan(pvalue) else pvalue)


def entity_losses(arm: Arm, metric: str, threshold: float) -> tuple[np.ndarray, int]:
    """(one mean loss per labelled entity, labelled rows): an entity's repeated rows are one
    observation; a row without an entity key (or an arm built without keys) stands alone."""
    labelled = ~np.isnan(arm.label)
    losses = row_loss(
        metric,
        arm.probability[labelled],
        arm.label[labelled],
        threshold,
        arm.scores[labelled] if arm.scores is not None else None,
        arm.decision[labelled] if arm.scores is not None else None,
    )
    entities = arm.entity if len(arm.entity) == arm.rows else [None] * arm.rows
    keys = [e if e is not None else ("row", i) for i, e in enumerate(entities) if labelled[i]]
    ids: dict = {}  # entity -> its group, in order of first appearance
    group = np.fromiter((ids.setdefault(k, len(ids)) for k in keys), dtype=np.intp, count=len(keys))
    sums = np.bincount(group, weights=losses, minlength=len(ids))
    return sums / np.bincount(group, minlength=len(ids)), len(keys)


def shadow_checks(cfg, window: Window, final: bool, task: str = "binary") -> list[dict]:
    """The shadow gate on the window so far. ``final``: the window is over, too little data fails."""
    ch, cp = window.challenger, window.champion
    gate = "shadow"
    results: list[dict] = []
    if final:
        results.append(check(gate, "requests", ch.routed, cfg.min_requests, ">="))
    error_rate = ch.failures / ch.routed if ch.routed else None
    if ch.routed:
        results.append(check(gate, "error_rate", error_rate, cfg.max_error_rate, "<="))
    if ch.rows:
        results.append(check(gate, "p99_latency_ms", p99(ch.latency_ms), cfg.max_p99_latency_ms, "<="))
    paired = dict(zip(cp.request_id, range(cp.rows), strict=True))
    pairs = [(paired[r], j) for j, r in enumerate(ch.request_id) if r in paired]
    if pairs:
        a = np.array([i for i, _ in pairs])
        b = np.array([j for _, j in pairs])
        if task == "regression":
            before, after = cp.probability[a], ch.probability[b]  # the predicted numbers
            relative = float(np.mean(np.abs(after - before) / np.maximum(1.0, np.abs(before))))
            results.append(check(gate, "mean_relative_delta", relative, cfg.max_mean_relative_delta, "<="))
        else:
            disagreement = float(np.mean(cp.decision[a] != ch.decision[b]))
            if task == "multiclass" and cp.scores is not None and ch.scores is not None:
                delta = float(np.mean(np.abs(cp.scores[a] - ch.scores[b]).mean(axis=1)))
            else:
                delta = float(np.mean(np.abs(cp.probability[a] - ch.probability[b])))
            results.append(
                check(gate, "decision_disagreement", disagreement, cfg.max_decision_disagreement, "<=")
            )
            results.append(check(gate, "mean_abs_delta", delta, cfg.max_mean_abs_delta, "<="))
    elif final:  # every mirrored request also has its served answer: none paired means nothing compared
        results.append(
            check(gate, "paired_requests", 0, 1, ">=", note="no request was scored by both variants")
        )
    return results


def score_psi(champion: Arm, challenger: Arm) -> float:
    """PSI of the challenger's scores against the champion's: the probability or the predicted number;
    for a multiclass model the largest PSI over the classes' probabilities."""
    if champion.scores is not None and challenger.scores is not None:
        return max(
            psi(champion.scores[:, k], challenger.scores[:, k]) for k in range(champion.scores.shape[1])
        )
    return psi(champion.probability, challenger.probability)


def canary_checks(
    guard, window: Window, final: bool, min_requests: int, threshold: float = 0.5, task: str = "binary"
) -> list[dict]:
    """The canary step's guardrails on the window so far (see the module docstring)."""
    ch, cp = window.challenger, window.champion
    gate = "canary"
    results: list[dict] = []
    if final:
        results.append(check(gate, "requests", ch.routed, min_requests, ">="))
    if ch.routed >= guard.min_requests_per_check or (final and ch.routed):
        results.append(check(gate, "error_rate", ch.failures / ch.routed, guard.max_error_rate, "<="))
    if ch.rows >= guard.min_requests_per_check or (final and ch.rows):
        results.append(check(gate, "p99_latency_ms", p99(ch.latency_ms), guard.max_p99_latency_ms, "<="))
    if min(ch.rows, cp.rows) >= guard.min_rows_for_psi:
        results.append(check(gate, "score_psi", score_psi(cp, ch), guard.max_score_psi, "<="))
    elif final:
        results.append(
            not_applicable(
                gate,
                "score_psi",
                f"{ch.rows} challenger and {cp.rows} champion rows; a PSI needs {guard.min_rows_for_psi} of "
                "each to tell a shift from sampling noise",
            )
        )
    loss = guard.loss(task)
    (loss_ch, rows_ch), (loss_cp, rows_cp) = (entity_losses(arm, loss, threshold) for arm in (ch, cp))
    n_ch, n_cp = len(loss_ch), len(loss_cp)
    metric = f"{loss}_worse_pvalue"
    if min(n_ch, n_cp) >= guard.min_labelled_per_variant:
        # A regression's loss is in the target's units: the margin is a share of the champion's mean loss.
        margin = guard.max_metric_degradation * (float(loss_cp.mean()) if task == "regression" else 1.0)
        diff, pvalue = worse_test(loss_ch, loss_cp, margin)
        confidence = guard.confidence if final else guard.interim_confidence
        look = (
            "the step's final look"
            if final
            else "an interim look (stricter: stops early only on strong evidence)"
        )
        result = check(
            gate,
            metric,
            pvalue,
            round(1 - confidence, 6),
            ">=",
            note=f"Welch t-test, one-sided, H1: challenger {loss} > champion's + "
            f"{margin:.4g}; mean difference {diff:+.4f} on {n_ch} vs {n_cp} labelled "
            f"entities ({rows_ch} vs {rows_cp} rows; an entity's repeated rows count once); {look} "
            f"at confidence {confidence}",
        )
        if result["status"] == PASSED and diff > margin:
            # Not a failure (the evidence is too weak to say so), but not a clean pass either.
            result["warning"] = (
                f"the estimate is worse than the margin (challenger's {loss} {diff:+.4f} against "
                f"the champion's, margin {margin:.4g}), but not significantly "
                f"(p = {pvalue:.3f}): more labelled traffic would tell"
            )
        results.append(result)
    elif final:
        results.append(
            not_applicable(
                gate,
                metric,
                f"{n_ch} challenger and {n_cp} champion entities have labels ({rows_ch} vs {rows_cp} rows; "
                f"an entity's repeated rows count once); the test needs {guard.min_labelled_per_variant} of "
                "each (labels arrive later: the approval shows this)",
            )
        )
    return results


def breached(results: list[dict]) -> list[dict]:
    return [r for r in results if r["status"] == FAILED]
