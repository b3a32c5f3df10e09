"""API keys for the inference service: who may call which endpoint, for which pipeline.

A key reads ``slw_<key_id>_<secret>``. The ``key_id`` is public: it is what logs, the CLI and error
messages show. The secret is ``secrets.token_urlsafe(32)`` (256 random bits) and is shown once, when the
key is created; the table keeps only its SHA-256. A slow password hash (bcrypt, argon2) buys nothing for
a secret that long and random, and would cost a hash per request: the choice GitHub and Stripe make for
their tokens.

Lookups are cached per ``key_id`` for ``cache_ttl_s``, so a busy service does not query the database per
request, and a revocation made on any replica takes effect everywhere within that time. Known keys and
unknown ids are cached apart: a flood of random ids fills (and evicts from) the unknown ones only, never
the known. The service looks up a key it has not cached off the event loop, on a few threads with a
connection each, at most ``max_pending`` at a time per process and, per client address, a burst of
``client_burst`` then ``client_rate`` a second: a caller cycling through random ids costs the database
a bounded number of queries and gets 429, and nobody else waits for it. Requests that present an id
whose lookup is already under way wait for that one lookup (a busy client's requests all miss together
when its entry expires: 64 lookups and a spent budget, else).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
# Negative lookups of random key ids must not grow the cache without bound (known keys are never evicted).
_MAX_UNKNOWN = 10_000
_MAX_CLIENTS = 10_000  # client addresses whose lookup budget is tracked (least recently seen dropped)
_LOOKUP_THREADS = 2


class TooManyLookups(RuntimeError):
    """This client has looked up too many keys the service had not cached: answer 429."""

    retry_after_s = 1


class LookupsBusy(RuntimeError):
    """Too many key lookups are waiting for the database in this process: answer 503."""

    retry_after_s = 1


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


def _parse(presented: str | None) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed presented key, else None (checked before any lookup)."""
    if not presented or not isinstance(presented, str) or len(presented) > _MAX_PRESENTED:
        return None
    match = _PRESENTED_RE.match(presented.strip())
    return match.groups() if match else None  # type: ignore[return-value]


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

    def __init__(
        self,
        url: str | None = None,
        *,
        cache_ttl_s: float = 5.0,
        max_pending: int = 64,
        client_burst: int = 20,
        client_rate: float = 5.0,
    ):
        self.db: Database = database(url)
        if self.db.dialect == "sqlite" and self.db.url.split("sqlite:///", 1)[1] in ("", ":memory:"):
            # Each operation opens its own connection, and every in-memory connection is a new database.
            raise KeyStoreError(
                "the API key store needs a database file or server, not sqlite in-memory; "
                "set SLIPWAY_SERVING_DB to sqlite:////path/to/serving.db or a postgresql:// URL"
            )
        self.cache_ttl_s = float(cache_ttl_s)
        # key_id -> (expires at, monotonic clock; (ApiKey, secret_sha256)): rows that exist
        self._known: dict[str, tuple[float, tuple[ApiKey, str]]] = {}
        # key_id -> expires at: ids with no row, least recently stored first
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        # Bumped by revoke(): a lookup that read the row before the revocation must not cache it after.
        self._generation = 0
        self.max_pending, self.client_burst, self.client_rate = max_pending, client_burst, client_rate
        self._pending = 0  # lookups handed to the threads and not finished (the event loop's thread only)
        # key_id -> the lookup under way (the event loop's thread only): requests presenting the same id
        # meanwhile share it
        self._inflight: dict[str, asyncio.Future] = {}
        self._budgets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()  # each lookup thread's own connection

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
            self._forget(key_id)  # a negative entry from an earlier probe must not shadow it
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
            self._forget(key_id, *replaced)
        for old in replaced:
            log.info("revoked API key %s: %s now names key %s", old, name, key_id)
        return record

    def _fetch(self, key_id: str, conn=None) -> tuple[ApiKey, str] | None:
        """The key's row, on ``conn`` (a lookup thread's own) or a connection of its own."""
        sql = self._sql(f"SELECT {_COLUMNS}, secret_sha256 FROM {TABLE} WHERE key_id = ?")
        if conn is None:
            with self._connect() as own:
                cur = own.cursor()
                cur.execute(sql, (key_id,))
                row = cur.fetchone()
        else:
            cur = conn.cursor()
            try:
                cur.execute(sql, (key_id,))
                row = cur.fetchone()
            finally:
                cur.close()
        if row is None:
            return None
        return _row_to_key(row[:6]), row[6]

    def _cached(self, key_id: str) -> tuple[bool, tuple[ApiKey, str] | None]:
        """(found in the cache, what it holds): a known key's row, or None for an id with no key."""
        if self.cache_ttl_s <= 0:
            return False, None
        now = time.monotonic()
        with self._lock:
            known = self._known.get(key_id)
            if known is not None and known[0] > now:
                return True, known[1]
            expires = self._unknown.get(key_id)
            if expires is not None and expires > now:
                return True, None
        return False, None

    def _remember(self, key_id: str, found: tuple[ApiKey, str] | None, generation: int) -> None:
        if self.cache_ttl_s <= 0:
            return
        with self._lock:
            if generation != self._generation:
                return  # a revocation raced this read; the next lookup fetches again
            expires = time.monotonic() + self.cache_ttl_s
            if found is not None:
                self._unknown.pop(key_id, None)
                self._known[key_id] = (expires, found)  # bounded by the table: only real keys get here
                return
            self._known.pop(key_id, None)
            self._unknown[key_id] = expires
            self._unknown.move_to_end(key_id)
            while len(self._unknown) > _MAX_UNKNOWN:
                self._unknown.popitem(last=False)

    def _forget(self, *key_ids: str) -> None:
        """Drop cached entries (the caller holds the lock)."""
        for key_id in key_ids:
            self._known.pop(key_id, None)
            self._unknown.pop(key_id, None)

    def _lookup(self, key_id: str) -> tuple[ApiKey, str] | None:
        hit, found = self._cached(key_id)
        if hit:
            return found
        # Fetched outside the lock: a slow database must not stall requests whose keys are cached.
        with self._lock:
            generation = self._generation
        found = self._fetch(key_id)
        self._remember(key_id, found, generation)
        return found

    def _fetch_pooled(self, key_id: str) -> tuple[ApiKey, str] | None:
        """A lookup on this thread's connection, opened once. A kept connection that fails (the
        database restarted since) is replaced and the lookup tried once more on a new one."""
        for attempt in (1, 2):
            kept = getattr(self._local, "conn", None)
            fresh = kept is None
            conn = self._local.conn = self.db.connect() if kept is None else kept
            if fresh:
                if self.db.dialect == "postgresql":
                    conn.autocommit = True  # each lookup its own transaction: no snapshot held open
            try:
                return self._fetch(key_id, conn)
            except Exception:
                self._local.conn = None
                try:
                    conn.close()
                except Exception:  # already broken
                    pass
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _take_budget(self, client: str) -> bool:
        """One lookup from ``client``'s token bucket (``client_burst``, refilled ``client_rate``/s)."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._budgets.pop(client, (float(self.client_burst), now))
            tokens = min(float(self.client_burst), tokens + (now - at) * self.client_rate)
            allowed = tokens >= 1.0
            self._budgets[client] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._budgets) > _MAX_CLIENTS:
                self._budgets.popitem(last=False)
        return allowed

    def _verified(self, secret: str, found: tuple[ApiKey, str] | None) -> ApiKey | None:
        if found is None:
            return None
        record, stored_hash = found
        if not hmac.compare_digest(_sha256(secret), stored_hash) or record.revoked_at is not None:
            return None
        return record

    def authenticate(self, presented: str | None) -> ApiKey | None:
        """The active key ``presented`` names, or None if it is missing, malformed, unknown, wrong or revoked.

        Blocking (the CLI, tests, threads); the service uses :meth:`authenticate_async`. Database errors
        propagate: an outage should answer 503, not pass for a wrong key.
        """
        parsed = _parse(presented)
        if parsed is None:
            return None
        key_id, secret = parsed
        return self._verified(secret, self._lookup(key_id))

    async def authenticate_async(self, presented: str | None, client: str | None) -> ApiKey | None:
        """:meth:`authenticate` for the event loop: a cached key answers at once; any other lookup runs
        on the lookup threads, charged to ``client`` (its address). Raises :class:`TooManyLookups`
        when the client's budget is spent and :class:`LookupsBusy` when ``max_pending`` lookups are
        already waiting; neither touches the database."""
        parsed = _parse(presented)
        if parsed is None:
            return None
        key_id, secret = parsed
        hit, found = self._cached(key_id)
        if hit:
            return self._verified(secret, found)
        loop = asyncio.get_running_loop()
        flight = self._inflight.get(key_id)
        if flight is not None and flight.get_loop() is loop:
            # The same id is being looked up already (every request of a busy client misses together
            # when its cache entry expires): wait for that lookup, charged to nobody, no second query.
            return self._verified(secret, await asyncio.shield(flight))
        if not self._take_budget(client or "unknown"):
            raise TooManyLookups(f"too many lookups of unknown API keys from {client}; retry in a second")
        if self._pending >= self.max_pending:
            raise LookupsBusy("API key lookups are busy; retry in a second")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(_LOOKUP_THREADS, thread_name_prefix="slipway-key-lookup")
        with self._lock:
            generation = self._generation
        self._pending += 1
        flight = loop.run_in_executor(self._executor, self._fetch_pooled, key_id)
        self._inflight[key_id] = flight
        try:
            found = await asyncio.shield(flight)
        finally:
            self._pending -= 1
            if self._inflight.get(key_id) is flight:
                del self._inflight[key_id]
        self._remember(key_id, found, generation)
        return self._verified(secret, found)

    def close(self) -> None:
        """Stop the lookup threads (their connections close with them)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

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
            self._forget(key_id)
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
