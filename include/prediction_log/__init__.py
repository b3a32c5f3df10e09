"""The prediction log: the contract between the service, which writes every scored row, and the
DAGs that judge what was served (rollout, monitor, feedback, retirement).

``rows`` (what a row is), ``schema`` (the tables), ``writer`` (the group commit), ``labels``
(feedback), ``reads`` (every query the service and the DAGs run), ``monitor_checks`` (the
monitor's record of each interval).
"""
