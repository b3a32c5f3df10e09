"""Building blocks of Slipway's DAGs: one module per DAG family, one adapter for them all.

* :mod:`include.blocks.adapter`: ``@block`` turns a :mod:`include.tasks` function into a tracked
  TaskFlow task; ``custom_task`` does the same for an author's plain function.
* :mod:`include.blocks.train`: the training family (``dags/train.py``), and
  :mod:`include.blocks.sensors` its deferrable wait for a landed batch.
* :mod:`include.blocks.rollout`: the rollout and rollback families (``dags/rollout.py``); shadow
  and canary are a deferrable operator.
* :mod:`include.blocks.monitor`: the monitor family (``dags/monitor.py``).
* :mod:`include.blocks.retire`: the retirement family (``dags/retire.py``).

Hand-written DAGs import a family's module (``from include.blocks import train``) and the
adapter, exactly as the generated DAGs in ``dags/`` do.
"""
