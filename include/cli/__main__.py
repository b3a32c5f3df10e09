"""``python -m include.cli``: the ``slipway`` command."""

from include.cli.commands import main

main()
