"""API keys for the inference service: who may call which endpoint, for which pipeline.

A key reads ``slw_<key_id>_<secret>``. The ``key_id`` is public: it is what logs, the CLI and error
messages show. The secret is ``secrets.token_urlsafe(32)`` (256 random bits) and is shown once, when the
key is created; the table keeps only its SHA-256. A slow password hash (bcrypt, argon2) buys nothing for
a secret that long and random, and would cost a hash per request: the choice GitHub and Stripe make for
their tokens.

Lookups are cached per ``key_id`` for ``cache_ttl_s`` (positive and negative), so a busy service does not
query the database per request, and a revocation made on any replica takes effect everywhere within that
time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from include.database import Database, database

log = logging.getLogger(__name__)

SCOPES = ("predict", "feedback", "explain", "admin", "metrics")

TABLE = "slipway_api_keys"
PREFIX = "slw_"
PIPELINE_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{12}$")
# token_urlsafe(32) is 43 characters; a little slack costs nothing and the upper bound keeps junk cheap.
_PRESENTED_RE = re.compile(r"^slw_([0-9a-f]{12})_([A-Za-z0-9_-]{32,128})$")
_MAX_PRESENTED = 200
_MAX_NAME = 200
# Negative lookups of random key ids must not grow the cache without bound.
_MAX_CACHE = 10_000
# pg_advisory_xact_lock id serialising CREATE TABLE: concurrent "IF NOT EXISTS" races on PostgreSQL's
# catalogue (pg_type unique index) and one of the processes would fail.
_PG_DDL_LOCK = 0x534C5700_4B455953  # "SLW\0KEYS"

_DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    key_id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    pipeline TEXT,
    scopes TEXT NOT NULL,
    name TEXT,
    created_at TEXT,
    revoked_at TEXT
)"""
_COLUMNS = "key_id, pipeline, scopes, name, created_at, revoked_at"


class KeyStoreError(ValueError):
    """A key was asked for with an unknown scope, no scope, or a malformed pipeline name."""


@dataclass(frozen=True)
class ApiKey:
    """One API key as the service sees it: never its secret, never its hash."""

    key_id: str
    pipeline: str | None
    scopes: frozenset[str]
    name: str
    created_at: str
    revoked_at: str | None

    def allows(self, scope: str, pipeline: str | None) -> bool:
        """Whether this key may use ``scope`` on ``pipeline``.

        ``admin`` implies every scope. A key bound to a pipeline allows that pipeline only, so it is
        refused on endpoints that span pipelines (``pipeline=None``); an unbound key allows all.
        An unknown ``scope`` raises: a typo in the caller would otherwise pass for every admin key.
        """
        if scope not in SCOPES:
            raise KeyStoreError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
        if self.revoked_at is not None:
            return False
        if scope not in self.scopes and "admin" not in self.scopes:
            return False
        return self.pipeline is None or self.pipeline == pipeline


def new_presented_key() -> str:
    """A fresh key in the form a caller presents (``slw_<12 hex>_<secret>``), for a deployment to hand
    the service as a secret it adopts (``SLIPWAY_SERVING_ADMIN_KEY``, ``SLIPWAY_SERVING_METRICS_KEY``)."""
    return f"{PREFIX}{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _validate_scopes(scopes: list[str]) -> frozenset[str]:
    if isinstance(scopes, str):  # "predict" would otherwise be read as seven one-letter scopes
        scopes = [scopes]
    wanted = frozenset(s.strip() for s in scopes if s and s.strip())
    if not wanted:
        raise KeyStoreError(f"an API key needs at least one scope; choose from {', '.join(SCOPES)}")
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise KeyStoreError(f"unknown scope(s) {', '.join(unknown)}; valid scopes are {', '.join(SCOPES)}")
    return wanted


def _validate_pipeline(pipeline: str | None) -> str | None:
    if pipeline is None:
        return None
    if not isinstance(pipeline, str) or not PIPELINE_RE.match(pipeline):
        raise KeyStoreError(
            f"pipeline name {pipeline!r} is not valid: use lowercase letters, digits and underscores, "
            "starting with a letter, at most 63 characters (e.g. telco_churn), or no pipeline for all"
        )
    return pipeline


def _row_to_key(row) -> ApiKey:
    key_id, pipeline, scopes, name, created_at, revoked_at = row
    return ApiKey(
        key_id=key_id,
        pipeline=pipeline,
        scopes=frozenset(s for s in (scopes or "").split(",") if s),
        name=name or "",
        created_at=created_at or "",
        revoked_at=revoked_at,
    )


def presented_key(headers) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

    Both headers with different keys present no key (the request gets 401).

    ``headers`` is any mapping with ``.get`` and lowercase (or canonically capitalised) names, such as
    the service's request headers.
    """

    def header(name: str) -> str | None:
        value = headers.get(name.lower())
        if value is None:
            value = headers.get(name)
        return value.strip() if isinstance(value, str) and value.strip() else None

    bearer = None
    auth = header("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            bearer = token.strip()
    api_key = header("X-API-Key")
    if bearer and api_key and bearer != api_key:
        # Two different credentials: which one was meant is a guess, and guessing in favour of the
        # valid one would let a forged header ride along unnoticed. Refuse (401).
        return None
    return bearer or api_key


class KeyStore:
    """The ``slipway_api_keys`` table, with a short per-process cache in front of it for ``authenticate``."""

    def __init__(self, url: str | None = None, *, cache_ttl_s: float = 5.0):
        self.db: Database = database(url)
        if self.db.dialect == "sqlite" and self.db.url.split("sqlite:///", 1)[1] in ("", ":memory:"):
            # Each operation opens its own connection, and every in-memory connection is a new database.
            raise KeyStoreError(
                "the API key store needs a database file or server, not sqlite in-memory; "
                "set SLIPWAY_SERVING_DB to sqlite:////path/to/serving.db or a postgresql:// URL"
            )
        self.cache_ttl_s = float(cache_ttl_s)
        # key_id -> (expires at, monotonic clock; (ApiKey, secret_sha256) or None for "no such key")
        self._cache: dict[str, tuple[float, tuple[ApiKey, str] | None]] = {}
        self._lock = threading.Lock()
        # Bumped by revoke(): a lookup that read the row before the revocation must not cache it after.
        self._generation = 0

    @contextmanager
    def _connect(self) -> Iterator:
        # One connection per operation: lookups are rare behind the cache, and a fresh connection never
        # carries a dead socket from a database restart or a transaction left open by another thread.
        conn = self.db.connect()
        try:
            yield conn
        finally:
            conn.close()

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.db.param)

    def start(self) -> None:
        """Create the table if it is missing; safe to call from several processes at once."""
        with self._connect() as conn:
            cur = conn.cursor()
            if self.db.dialect == "postgresql":
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_DDL_LOCK,))
                cur.execute(_DDL)
                conn.commit()
            else:
                # SQLite serialises writers itself; busy_timeout makes the second one wait, not fail.
                cur.execute(_DDL)

    def create(self, scopes: list[str], pipeline: str | None = None, name: str = "") -> tuple[ApiKey, str]:
        """A new key: its record and the plaintext, which is shown once and never stored."""
        wanted = _validate_scopes(scopes)
        pipeline = _validate_pipeline(pipeline)
        name = (name or "").strip()
        if len(name) > _MAX_NAME or any(ord(c) < 32 for c in name):
            raise KeyStoreError(
                f"key name must be at most {_MAX_NAME} printable characters on one line; shorten it"
            )
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = ApiKey(key_id, pipeline, wanted, name, _now(), None)
        with self._connect() as conn:
            conn.cursor().execute(
                self._sql(
                    f"INSERT INTO {TABLE} (key_id, secret_sha256, pipeline, scopes, name, created_at, revoked_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, NULL)"
                ),
                (key_id, _sha256(secret), pipeline, ",".join(sorted(wanted)), name, record.created_at),
            )
            if self.db.dialect == "postgresql":
                conn.commit()
        with self._lock:
            self._cache.pop(key_id, None)  # a negative entry from an earlier probe must not shadow it
        log.info("created API key %s (scopes %s, pipeline %s)", key_id, ",".join(sorted(wanted)), pipeline)
        return record, f"{PREFIX}{key_id}_{secret}"

    def adopt(self, presented: str, scopes: list[str], name: str, rotate: bool = False) -> ApiKey:
        """Register a key generated elsewhere (a deployment's secret, e.g. the admin key) by its hash.

        Idempotent: a replica or a restart adopting the same key changes nothing. A key id already
        stored with another secret or other scopes is refused, never overwritten. With ``rotate``,
        every other active key of the same ``name`` is revoked: the secret was replaced, so the key
        it replaced must stop working.
        """
        match = _PRESENTED_RE.match(presented or "")
        if not match:
            raise KeyStoreError(
                "the key to adopt must read slw_<12 hex>_<secret of 32+ URL-safe characters>; generate one "
                "with: python -c \"import secrets; print('slw_' + secrets.token_hex(6) + '_' + "
                'secrets.token_urlsafe(32))"'
            )
        key_id, secret = match.groups()
        wanted = _validate_scopes(scopes)
        record = ApiKey(key_id, None, wanted, name, _now(), None)
        with self._connect() as conn:
            cur = conn.cursor()
            cur.execute(
                self._sql(
                    f"INSERT INTO {TABLE} (key_id, secret_sha256, pipeline, scopes, name, created_at, revoked_at)"
                    " VALUES (?, ?, NULL, ?, ?, ?, NULL) ON CONFLICT (key_id) DO NOTHING"
                ),
                (key_id, _sha256(secret), ",".join(sorted(wanted)), name, record.created_at),
            )
            cur.execute(self._sql(f"SELECT secret_sha256, scopes FROM {TABLE} WHERE key_id = ?"), (key_id,))
            stored_hash, stored_scopes = cur.fetchone()
            matches = (
                hmac.compare_digest(stored_hash, _sha256(secret)) and set(stored_scopes.split(",")) == wanted
            )
            replaced = []
            if matches and rotate:
                cur.execute(
                    self._sql(
                        f"SELECT key_id FROM {TABLE} WHERE name = ? AND key_id <> ? AND revoked_at IS NULL"
                    ),
                    (name, key_id),
                )
                replaced = [r[0] for r in cur.fetchall()]
                cur.execute(
                    self._sql(
                        f"UPDATE {TABLE} SET revoked_at = ? WHERE name = ? AND key_id <> ? AND revoked_at IS NULL"
                    ),
                    (_now(), name, key_id),
                )
            if self.db.dialect == "postgresql":
                conn.commit()
        if not matches:
            raise KeyStoreError(
                f"key {key_id} is already stored with another secret or other scopes; generate a new key "
                "for the secret, or revoke the stored one first"
            )
        with self._lock:
            self._generation += 1
            self._cache.pop(key_id, None)
            for old in replaced:
                self._cache.pop(old, None)
        for old in replaced:
            log.info("revoked API key %s: %s now names key %s", old, name, key_id)
        return record

    def _fetch(self, key_id: str) -> tuple[ApiKey, str] | None:
        with self._connect() as conn:
            cur = conn.cursor()
            cur.execute(
                self._sql(f"SELECT {_COLUMNS}, secret_sha256 FROM {TABLE} WHERE key_id = ?"), (key_id,)
            )
            row = cur.fetchone()
        if row is None:
            return None
        return _row_to_key(row[:6]), row[6]

    def _lookup(self, key_id: str) -> tuple[ApiKey, str] | None:
        if self.cache_ttl_s <= 0:
            return self._fetch(key_id)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        # Fetched outside the lock: a slow database must not stall requests whose keys are cached.
        with self._lock:
            generation = self._generation
        found = self._fetch(key_id)
        with self._lock:
            if generation != self._generation:
                return found  # a revocation raced this read; the next lookup fetches again
            if len(self._cache) >= _MAX_CACHE:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= _MAX_CACHE:
                    self._cache.clear()
            self._cache[key_id] = (time.monotonic() + self.cache_ttl_s, found)
        return found

    def authenticate(self, presented: str | None) -> ApiKey | None:
        """The active key ``presented`` names, or None if it is missing, malformed, unknown, wrong or revoked.

        Database errors propagate: an outage should answer 503, not pass for a wrong key.
        """
        if not presented or not isinstance(presented, str) or len(presented) > _MAX_PRESENTED:
            return None
        match = _PRESENTED_RE.match(presented.strip())
        if match is None:
            return None
        key_id, secret = match.groups()
        found = self._lookup(key_id)
        if found is None:
            return None
        record, stored_hash = found
        if not hmac.compare_digest(_sha256(secret), stored_hash):
            return None
        if record.revoked_at is not None:
            return None
        return record

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; True if it was active. Other replicas stop accepting it within their cache TTL."""
        if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
            return False
        with self._connect() as conn:
            cur = conn.cursor()
            cur.execute(
                self._sql(f"UPDATE {TABLE} SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL"),
                (_now(), key_id),
            )
            changed = cur.rowcount == 1
            if self.db.dialect == "postgresql":
                conn.commit()
        with self._lock:
            self._generation += 1
            self._cache.pop(key_id, None)
        if changed:
            log.info("revoked API key %s", key_id)
        return changed

    def list(self) -> list[ApiKey]:
        """Every key, oldest first, revoked ones included; never a hash or a secret."""
        with self._connect() as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT {_COLUMNS} FROM {TABLE} ORDER BY created_at, key_id")
            rows = cur.fetchall()
        return [_row_to_key(row) for row in rows]
