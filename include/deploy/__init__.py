"""How Slipway runs: the embedded stack, the production topology, one DAG run in this process,
and the helpers and configuration files docker-compose.yaml mounts."""
