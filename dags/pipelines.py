"""
### Slipway pipelines (Airflow DAGs generated from specs)

One DAG per purpose for every spec in `include/pipelines/` (`<pipeline>__train`, ...). This file
only asks the factory to build them: to add a pipeline, add a spec and its expectation suite.
A spec that does not validate appears under "Import errors" with the file, field and fix,
and every other pipeline keeps loading.
"""

from __future__ import annotations

from include.dag_factory import generate

generate(globals())
