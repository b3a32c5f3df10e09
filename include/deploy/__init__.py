"""Deployment helpers used by docker-compose.yaml."""
