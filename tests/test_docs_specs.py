"""The specs the authoring guide shows are valid specs, as a data engineer would copy them."""

from __future__ import annotations

import re

import pytest

from include.settings import PROJECT_ROOT
from include.spec import parse_spec

GUIDE = PROJECT_ROOT / "docs" / "authoring.md"
BLOCKS = [b for b in re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), flags=re.S) if b.startswith("name:")]


def test_the_guide_shows_a_spec_of_every_task():
    assert sorted(parse_spec(b).task for b in BLOCKS) == ["binary", "multiclass", "regression"]


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.split("\n", 1)[0])
def test_each_spec_in_the_guide_loads(block):
    spec = parse_spec(block)
    assert spec.name in {"telco_churn", "job_runtime", "salary_benchmark"}
