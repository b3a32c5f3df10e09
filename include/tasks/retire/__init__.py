"""Retirement: which versions the retirement policy archives, and what archiving does."""
