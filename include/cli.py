"""The ``slipway`` command: run, inspect and trace pipelines."""
