"""Rollout: the sandboxed infra validation, the shadow and canary phases and their guardrails, and
the promotion's checks, in the order of ``<pipeline>__rollout``."""
