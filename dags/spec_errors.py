"""
### Invalid pipeline specs

This file defines no DAG. It fails to import, on purpose, while any spec in `include/pipelines/`
does not validate, so that the Airflow UI lists it under **Import errors** with each file, field
and fix. Because the error belongs to this file alone, every DAG of every valid spec keeps being
parsed and scheduled; the broken pipeline's DAGs are simply absent until its spec is fixed.
Check a spec before it lands with `slipway check-spec include/pipelines/<name>.yaml`.
"""

from __future__ import annotations

from include.spec import SpecError, discover

_errors = discover()[1]
if _errors:
    raise SpecError(
        f"{len(_errors)} invalid pipeline spec(s); their DAGs are not loaded until fixed "
        "(every other pipeline runs as usual):\n" + "\n".join(_errors.values())
    )
