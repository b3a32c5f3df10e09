"""Monitoring: drift of served traffic, live performance, and what an interval's checks decide."""
