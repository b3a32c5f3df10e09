"""Model card: Markdown and HTML from the spec (what people decided) and the records (what happened)."""

from __future__ import annotations

import html
import shutil
from pathlib import Path

from include.spec import PipelineSpec

_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
th{background:#f3f3f3}img{max-width:100%}code{background:#f5f5f5;padding:0 .2rem}
.passed{color:#17692b}.failed{color:#a11}"""


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_{}[]()#+!|"})


def _text(value) -> str:
    """A value from the data or a run (a group's name, an error) as literal text: HTML escaped and
    Markdown's syntax characters backslashed, so a crafted group name renders as itself, never as a
    tag, a link or a table cell of its own."""
    return html.escape(_fmt(value), quote=False).translate(_MARKDOWN_SPECIAL).replace("\n", " ")


def _table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_text(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


_TASK_TEXT = {
    "binary": "binary classification",
    "multiclass": "multiclass classification",
    "regression": "regression",
}


def _decision(spec: PipelineSpec, biz: dict, prefix: str = "") -> str:
    """The decision rule of the candidate (or, with ``prefix='champion_'``, of the champion)."""
    from include.problem import describe_rule

    rule = biz.get(f"{prefix}decision")
    if rule is None and biz.get(f"{prefix}threshold") is not None:
        rule = {"threshold": biz[f"{prefix}threshold"]}
    return describe_rule(spec, rule, spec.business.unit) if rule else "n/a"


def _value_model(spec: PipelineSpec) -> str:
    b = spec.business
    if spec.task == "multiclass":
        if not b.value_matrix:
            return "No value matrix declared: every decision is worth 0."
        cells = "; ".join(
            f"truth {t}: " + ", ".join(f"decide {d} {v:g}" for d, v in row.items())
            for t, row in b.value_matrix.items()
        )
        return f"Value of each decision ({b.unit}): {cells}."
    if spec.task == "regression":
        return (
            f"Cost per unit over-predicted {b.cost_per_unit_over:g} {b.unit}, per unit under-predicted "
            f"{b.cost_per_unit_under:g} {b.unit}; value is the negative expected cost."
        )
    return (
        f"Value of a true positive {b.value_of_true_positive:g} {b.unit}, cost of acting "
        f"{b.cost_of_action:g} {b.unit}, acceptance rate {b.offer_acceptance_rate:g}."
    )


def _fairness_section(attr: str, a: dict) -> list[str]:
    """A multiclass or regression attribute: its gap metrics, then one row per group."""
    gaps = ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in a.items() if isinstance(v, int | float))
    notes = " ".join(f"{v}." for v in (a.get("notes") or {}).values())
    groups = a.get("by_group", {}) or {}
    keys = sorted({k for v in groups.values() for k, x in v.items() if not isinstance(x, dict)})
    return [
        f"### {attr}",
        (gaps + ".") if gaps else "",
        notes,
        "",
        _table(["group", *keys], [[g, *[v.get(k) for k in keys]] for g, v in groups.items()])
        if groups
        else "",
        "",
    ]


def render_markdown(spec: PipelineSpec, rec: dict) -> str:
    """The card as Markdown. ``rec`` holds the records gathered by the pipeline's tasks."""
    card = spec.model_card
    m = rec.get("metrics", {})
    biz = rec.get("business", {})
    blessing = rec.get("blessing", {})
    lines = [
        f"# Model card: {spec.name}",
        "",
        spec.description,
        "",
        "## Intended use",
        card.intended_use or "_Not stated in the spec._",
        "",
        "## Users",
        card.users or "_Not stated in the spec._",
        "",
        "## Model",
        _table(
            ["field", "value"],
            [
                ["estimator", spec.estimator_path],
                ["parameters", ", ".join(f"{k}={v}" for k, v in spec.estimator.params.items()) or "defaults"],
                ["task", _TASK_TEXT[spec.task]],
                [
                    "class imbalance",
                    spec.class_imbalance if spec.task != "regression" else "n/a (regression)",
                ],
                ["features", ", ".join(spec.features.all)],
                ["preprocessing", _preprocessing(spec)],
                ["not used as features (sensitive)", ", ".join(spec.sensitive_attributes) or "none"],
                ["decision", _decision(spec, biz)],
                ["code version", rec.get("code_version")],
                ["DAG run", f"{rec.get('dag_id')} / {rec.get('run_id')}"],
            ],
        ),
        "",
        "## Training data",
        _table(
            ["field", "value"],
            [
                ["data version (DVC md5)", rec.get("data_version")],
                ["snapshot", rec.get("dvc_uri")],
                [
                    "rows (train / validation / test)",
                    " / ".join(str(v) for v in rec.get("rows", {}).values()),
                ],
                [
                    "target (train)",
                    ", ".join(f"{k} {v}" for k, v in (rec.get("target_summary") or {}).items())
                    or rec.get("positive_rate"),
                ],
                ["data validation", rec.get("validation")],
            ],
        ),
        "",
        "## Metrics (held-out test split)",
        _table(["metric", "value"], [[k, v] for k, v in m.items() if k != "rows"]),
        "",
        "## Business value",
        f"Objective: {spec.business.objective}. {_value_model(spec)}",
        "",
        _table(
            ["model", "decision", f"expected value per 1,000 ({spec.business.unit})"],
            [["candidate", _decision(spec, biz), biz.get("value_per_1000")]]
            + (
                [
                    [
                        "champion v" + str(biz["champion_version"]),
                        _decision(spec, biz, "champion_"),
                        biz.get("champion_value_per_1000"),
                    ]
                ]
                if biz.get("champion_version")
                else []
            ),
        ),
        "",
        "## Fairness",
    ]
    for attr, a in rec.get("fairness", {}).get("attributes", {}).items():
        if spec.task != "binary":
            lines += _fairness_section(attr, a)
            continue
        lines += [
            f"### {attr}",
            f"Demographic parity difference {_fmt(a.get('demographic_parity_difference'))}, disparate impact "
            f"ratio {_fmt(a.get('disparate_impact_ratio'))}, equal opportunity difference "
            f"{_fmt(a.get('equal_opportunity_difference'))}, equalized odds difference "
            f"{_fmt(a.get('equalized_odds_difference'))}.",
            "",
            _table(
                ["group", "count", "selection rate", "recall", "precision"],
                [
                    [g, v.get("count"), v.get("selection_rate"), v.get("recall"), v.get("precision")]
                    for g, v in a.get("by_group", {}).items()
                ],
            ),
            "",
        ]
    if not rec.get("fairness", {}).get("attributes"):
        lines += ["No sensitive attributes declared.", ""]
    shap = rec.get("explain", {})
    lines += [
        "## Explainability (SHAP)",
        f"Explainer: {shap.get('explainer', 'n/a')}. Most important features: "
        + ", ".join(shap.get("top_k", [])[:10]),
        "",
    ]
    if rec.get("shap_plot"):
        lines += [f"![SHAP importance]({rec['shap_plot']})", ""]
    rob = rec.get("robustness", {})
    moved = (
        "Share of predictions moved past the tolerance" if spec.task == "regression" else "Decision flip rate"
    )
    lines += [
        "## Robustness",
        f"{moved} under realistic perturbations: {_fmt(rob.get('flip_rate'))} "
        + "("
        + ", ".join(f"{k} {_fmt(v)}" for k, v in rob.get("per_feature", {}).items())
        + ")",
        "",
        "## ONNX",
    ]
    onnx = rec.get("onnx", {})
    if onnx.get("converted", True) and onnx:
        lat = onnx.get("latency_ms", {})
        lines += [
            _table(
                ["field", "value"],
                [
                    [
                        "max abs difference vs scikit-learn"
                        + (" (prediction)" if spec.task == "regression" else " (probability)"),
                        onnx.get("max_abs_diff"),
                    ],
                    *(
                        [["max relative difference", onnx.get("max_rel_diff")]]
                        if spec.task == "regression"
                        else [["label agreement", onnx.get("label_agreement")]]
                    ),
                    ["rows compared", onnx.get("rows")],
                    [
                        "single-row p50 / p99 (ms), onnxruntime",
                        f"{_fmt(lat.get('onnx', {}).get('p50'), 3)} / {_fmt(lat.get('onnx', {}).get('p99'), 3)}",
                    ],
                    [
                        "single-row p50 / p99 (ms), scikit-learn",
                        f"{_fmt(lat.get('sklearn', {}).get('p50'), 3)} / {_fmt(lat.get('sklearn', {}).get('p99'), 3)}",
                    ],
                    ["quantisation", (onnx.get("quantisation") or {}).get("reason")],
                ],
            ),
            "",
        ]
    else:
        lines += [f"Not converted: {_text(onnx.get('error', 'n/a'))}", ""]
    lines += [
        "## Limitations",
        card.limitations or "_Not stated in the spec._",
        "",
        "## Ethical considerations",
        card.ethical_considerations or "_Not stated in the spec._",
        "",
        "## Blessing",
        f"**{'PASSED' if blessing.get('state') == 'passed' else 'NOT PASSED'}**"
        + (f" (missing: {', '.join(blessing['missing'])})" if blessing.get("missing") else ""),
        "",
        _table(
            ["gate", "metric", "value", "threshold", "result"],
            [
                [
                    r["gate"],
                    r["metric"],
                    r["value"],
                    f"{r['comparison']} {r['threshold']}" if r["status"] != "not_applicable" else "",
                    {"passed": "passed", "failed": "FAILED"}.get(
                        r["status"], f"not applicable: {r.get('note', '')}"
                    ),
                ]
                for r in blessing.get("results", [])
            ],
        ),
        "",
    ]
    return "\n".join(lines)


def render_html(markdown_text: str, title: str) -> str:
    """Standalone HTML page of a Markdown card."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"])
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>{body}</body></html>"
    )


def write_model_card(
    spec: PipelineSpec, rec: dict, out_dir: str | Path, images: list[str] | None = None
) -> dict:
    """Write ``model_card.md``, ``model_card.html`` (and copies of ``images``) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for img in images or []:
        shutil.copy(img, out / Path(img).name)
    md = render_markdown(spec, rec)
    (out / "model_card.md").write_text(md, encoding="utf-8")
    (out / "model_card.html").write_text(render_html(md, f"Model card: {spec.name}"), encoding="utf-8")
    return {"markdown": str(out / "model_card.md"), "html": str(out / "model_card.html")}


def _preprocessing(spec: PipelineSpec) -> str:
    """What the spec declares per column, then the defaults for the rest, in one line."""
    from include.tasks.train.fit import LINEAR

    declared = [
        f"{col}: "
        + ", ".join(f"{k} {v}" for k, v in prep.model_dump(exclude_none=True, exclude_defaults=True).items())
        for col, prep in spec.preprocessing.items()
    ]
    scaled = " and standardised" if spec.estimator.kind in LINEAR else ""
    rest = f"others: numeric and binary median-imputed{scaled}; categorical one-hot, unknown values ignored"
    return "; ".join([*declared, rest])
