"""Batch scoring: a population scored in chunks with a registered version (the <pipeline>__score family)."""
