"""The ``slipway`` command line: ``commands`` (the parser and each command), ``reports`` (what they print)."""
