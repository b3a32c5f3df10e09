"""API keys against real databases: SQLite in a temporary folder and the machine's PostgreSQL."""

from __future__ import annotations

import hashlib
import re
import threading
import time

import pytest

from include.serving.keys import SCOPES, ApiKey, KeyStore, KeyStoreError, presented_key


def _sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'serving.db'}"


@pytest.fixture
def store(tmp_path) -> KeyStore:
    s = KeyStore(_sqlite_url(tmp_path))
    s.start()
    return s


def _all_rows(url: str) -> list[tuple]:
    from include.database import database

    conn = database(url).connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT * FROM slipway_api_keys")
        return cur.fetchall()
    finally:
        conn.close()


def _wait_until(predicate, deadline_s: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds or the (generous) deadline passes; the caller asserts the result."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# --- create / authenticate / storage -------------------------------------------------------------------


def test_create_returns_plaintext_once_and_stores_only_its_hash(store, tmp_path):
    record, plaintext = store.create(["predict"], pipeline="telco_churn", name="scoring job")

    prefix, key_id, secret = plaintext[:4], plaintext[4:16], plaintext[17:]
    assert prefix == "slw_" and plaintext[16] == "_"
    assert key_id == record.key_id and re.fullmatch(r"[0-9a-f]{12}", key_id)
    assert len(secret) >= 43

    assert store.authenticate(plaintext) == record
    assert record.scopes == frozenset({"predict"}) and record.pipeline == "telco_churn"
    assert record.name == "scoring job" and record.revoked_at is None
    assert record.created_at.endswith("+00:00")

    rows = _all_rows(_sqlite_url(tmp_path))
    assert len(rows) == 1
    for column in rows[0]:
        assert secret not in str(column)
        assert plaintext not in str(column)
    assert hashlib.sha256(secret.encode()).hexdigest() in rows[0]


def test_list_shows_keys_but_no_secret_or_hash(store):
    first, plain_first = store.create(["predict"], name="a")
    second, plain_second = store.create(["admin"], pipeline="telco_churn", name="b")

    listed = store.list()
    assert {k.key_id for k in listed} == {first.key_id, second.key_id}
    assert all(isinstance(k, ApiKey) for k in listed)
    dumped = repr(listed)
    for plain in (plain_first, plain_second):
        secret = plain[17:]
        assert secret not in dumped
        assert hashlib.sha256(secret.encode()).hexdigest() not in dumped


def test_wrong_secret_with_a_valid_key_id_is_refused(store):
    record, plaintext = store.create(["predict"])
    forged = f"slw_{record.key_id}_{'A' * 43}"
    assert store.authenticate(forged) is None
    # the cached row must not make the wrong secret pass, nor the right one fail
    assert store.authenticate(forged) is None
    assert store.authenticate(plaintext) == record


@pytest.mark.parametrize(
    "junk",
    [
        None,
        "",
        "slw_",
        "slw__",
        "Bearer x",
        "slw_zzzzzzzzzzzz_" + "A" * 43,
        "slw_0123456789ab",
        "slw_0123456789ab_" + "A" * 43,  # well formed, unknown id
        "x" * 10_240,
        "slw_0123456789ab_" + "A" * 10_240,
        "slw_0123456789ab_\x00\n" + "é" * 50,
    ],
)
def test_missing_malformed_or_unknown_keys_are_refused_without_exceptions(store, junk):
    store.create(["admin"])
    assert store.authenticate(junk) is None


# --- scopes and pipelines ------------------------------------------------------------------------------


def test_a_predict_key_allows_predict_only(store):
    record, plaintext = store.create(["predict"])
    key = store.authenticate(plaintext)
    assert key is not None
    assert key.allows("predict", "telco_churn")
    assert not key.allows("feedback", "telco_churn")
    assert not key.allows("admin", "telco_churn")


def test_admin_implies_every_scope(store):
    _, plaintext = store.create(["admin"])
    key = store.authenticate(plaintext)
    assert key is not None
    assert all(key.allows(scope, "telco_churn") for scope in SCOPES)
    assert key.allows("metrics", None)


def test_a_key_bound_to_a_pipeline_refuses_other_pipelines(store):
    _, plaintext = store.create(["predict", "feedback"], pipeline="pipeline_a")
    key = store.authenticate(plaintext)
    assert key is not None
    assert key.allows("predict", "pipeline_a")
    assert not key.allows("predict", "pipeline_b")
    assert not key.allows("predict", None)  # an endpoint spanning pipelines is out of its reach


def test_an_unbound_key_allows_every_pipeline(store):
    _, plaintext = store.create(["predict"])
    key = store.authenticate(plaintext)
    assert key is not None and key.allows("predict", "pipeline_a") and key.allows("predict", "pipeline_b")


def test_unknown_scope_at_create_names_the_valid_scopes(store):
    with pytest.raises(KeyStoreError) as err:
        store.create(["predict", "delete_everything"])
    message = str(err.value)
    assert "delete_everything" in message
    assert all(scope in message for scope in SCOPES)
    assert store.list() == []


def test_empty_scopes_are_refused(store):
    with pytest.raises(KeyStoreError, match="at least one scope"):
        store.create([])


@pytest.mark.parametrize("bad", ["Telco", "1churn", "telco-churn", "", "a" * 64, "telco churn"])
def test_bad_pipeline_names_are_refused(store, bad):
    with pytest.raises(KeyStoreError, match="pipeline name"):
        store.create(["predict"], pipeline=bad)
    assert store.list() == []


def test_allows_with_an_unknown_scope_raises_rather_than_pass_for_admin(store):
    _, plaintext = store.create(["admin"])
    key = store.authenticate(plaintext)
    assert key is not None
    with pytest.raises(KeyStoreError, match="unknown scope"):
        key.allows("predcit", "telco_churn")


# --- revocation ----------------------------------------------------------------------------------------


def test_revoke_takes_effect_at_once_in_this_process(store):
    record, plaintext = store.create(["predict"])
    assert store.authenticate(plaintext) == record  # now cached
    assert store.revoke(record.key_id) is True
    assert store.authenticate(plaintext) is None
    assert store.revoke(record.key_id) is False  # no longer active
    assert store.revoke("0123456789ab") is False  # unknown
    [listed] = store.list()
    assert listed.revoked_at is not None
    assert not listed.allows("predict", None)


def test_revoke_reaches_another_replica_within_its_cache_ttl(tmp_path):
    url = _sqlite_url(tmp_path)
    admin = KeyStore(url)
    admin.start()
    record, plaintext = admin.create(["predict"])
    replica = KeyStore(url, cache_ttl_s=0.2)
    assert replica.authenticate(plaintext) == record  # cached as active on the replica

    assert admin.revoke(record.key_id)
    assert _wait_until(lambda: replica.authenticate(plaintext) is None)


def test_the_replica_cache_actually_serves_lookups_within_the_ttl(tmp_path):
    """With a long TTL a replica keeps its cached answer: the cache is in front of the database."""
    url = _sqlite_url(tmp_path)
    admin = KeyStore(url)
    admin.start()
    record, plaintext = admin.create(["predict"])
    replica = KeyStore(url, cache_ttl_s=3600)
    assert replica.authenticate(plaintext) == record
    admin.revoke(record.key_id)
    assert replica.authenticate(plaintext) == record


def test_authenticate_is_safe_from_many_threads(store):
    keys = [store.create(["predict"]) for _ in range(4)]
    errors: list[BaseException] = []
    wrong: list[str] = []

    def hammer(record, plaintext):
        try:
            for _ in range(50):
                if store.authenticate(plaintext) != record:
                    wrong.append(record.key_id)
                if store.authenticate(f"slw_{record.key_id}_{'B' * 43}") is not None:
                    wrong.append(record.key_id)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=k) for k in keys for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and wrong == []


# --- start ---------------------------------------------------------------------------------------------


def _start_concurrently(url: str, n: int = 8) -> list[BaseException]:
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run():
        try:
            barrier.wait()
            KeyStore(url).start()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_start_on_a_fresh_sqlite_database(tmp_path):
    # The race (every starter switching a fresh file to WAL) lost about one start in 25: try 40.
    for i in range(40):
        fresh = tmp_path / f"fresh-{i}"
        fresh.mkdir()
        assert _start_concurrently(_sqlite_url(fresh)) == [], f"attempt {i}"
    url = _sqlite_url(tmp_path)
    store = KeyStore(url)
    store.start()  # and once more, idempotently
    record, plaintext = store.create(["predict"])
    assert store.authenticate(plaintext) == record


def test_memory_sqlite_is_refused_with_the_fix():
    with pytest.raises(KeyStoreError, match="SLIPWAY_SERVING_DB"):
        KeyStore("sqlite:///:memory:")


# --- PostgreSQL ----------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_create_authenticate_revoke(pg_db):
    store = KeyStore(pg_db.url)
    store.start()
    record, plaintext = store.create(["predict", "explain"], pipeline="telco_churn", name="pg")
    assert store.authenticate(plaintext) == record
    assert store.authenticate(f"slw_{record.key_id}_{'A' * 43}") is None

    rows = _all_rows(pg_db.url)
    assert len(rows) == 1 and all(plaintext[17:] not in str(c) for c in rows[0])
    assert rows[0][3] == "explain,predict"  # comma-separated, sorted

    replica = KeyStore(pg_db.url, cache_ttl_s=0.2)
    assert replica.authenticate(plaintext) == record
    assert store.revoke(record.key_id) is True
    assert store.authenticate(plaintext) is None
    assert _wait_until(lambda: replica.authenticate(plaintext) is None)
    assert [k.key_id for k in store.list()] == [record.key_id]
    assert store.list()[0].revoked_at is not None


@pytest.mark.postgres
def test_concurrent_start_on_a_fresh_postgres_database(pg_db):
    assert _start_concurrently(pg_db.url) == []
    store = KeyStore(pg_db.url)
    store.start()
    record, plaintext = store.create(["metrics"])
    assert store.authenticate(plaintext) == record


# --- presented_key -------------------------------------------------------------------------------------


def test_presented_key_reads_bearer_and_x_api_key():
    assert presented_key({"Authorization": "Bearer slw_abc"}) == "slw_abc"
    assert presented_key({"authorization": "bearer   slw_abc  "}) == "slw_abc"
    assert presented_key({"X-API-Key": "slw_def"}) == "slw_def"
    assert presented_key({"authorization": "Bearer slw_abc"}) == "slw_abc"
    assert presented_key({"x-api-key": "slw_def"}) == "slw_def"
    # Two different keys are refused (None -> 401); the same key in both is fine;
    # another scheme falls through to X-API-Key
    assert presented_key({"authorization": "Bearer one", "x-api-key": "two"}) is None
    assert presented_key({"authorization": "Bearer one", "x-api-key": "one"}) == "one"
    assert presented_key({"authorization": "Basic dXNlcjpwdw==", "x-api-key": "two"}) == "two"


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Basic dXNlcjpwdw=="}, {"authorization": "Bearer "}, {"x-api-key": "  "}],
)
def test_presented_key_missing_is_none(headers):
    assert presented_key(headers) is None


# --- keys handed over as secrets (the deployment's admin and metrics keys) ------------------------------


def test_an_adopted_key_is_stored_hashed_idempotent_and_never_overwritten(store, tmp_path):
    import secrets as pysecrets

    key_id = pysecrets.token_hex(6)
    secret = pysecrets.token_urlsafe(32)
    presented = f"slw_{key_id}_{secret}"
    adopted = store.adopt(presented, ["admin"], "from SLIPWAY_SERVING_ADMIN_KEY")
    again = store.adopt(presented, ["admin"], "from SLIPWAY_SERVING_ADMIN_KEY")  # a restart, a replica

    assert adopted.key_id == again.key_id == key_id
    assert store.authenticate(presented).allows("explain", "telco_churn")
    rows = _all_rows(_sqlite_url(tmp_path))
    assert len(rows) == 1 and secret not in repr(rows)
    with pytest.raises(KeyStoreError, match="already stored with another secret"):
        store.adopt(f"slw_{key_id}_{pysecrets.token_urlsafe(32)}", ["admin"], "an impostor")
    with pytest.raises(KeyStoreError, match="already stored with another secret or other scopes"):
        store.adopt(presented, ["metrics"], "a narrower copy")
    assert store.authenticate(presented).allows("admin", None)  # the stored key is unchanged
    with pytest.raises(KeyStoreError, match="must read slw_"):
        store.adopt("admin-password", ["admin"], "not a key")


def test_a_rotated_secret_revokes_the_key_it_replaced(store, tmp_path, monkeypatch):
    from include.serving import cli
    from include.serving.keys import new_presented_key

    monkeypatch.setenv("SLIPWAY_SERVING_DB", _sqlite_url(tmp_path))
    old, new = new_presented_key(), new_presented_key()
    monkeypatch.setenv("SLIPWAY_SERVING_METRICS_KEY", old)
    cli._adopt_keys_from_secrets()  # the service starts with the first secret
    assert store.authenticate(old).allows("metrics", None)
    monkeypatch.setenv("SLIPWAY_SERVING_METRICS_KEY", new)
    cli._adopt_keys_from_secrets()  # ... and restarts after the secret was rotated
    replica = KeyStore(
        _sqlite_url(tmp_path)
    )  # a replica's view (this store's cache holds the old key for its TTL)
    replica.start()
    assert replica.authenticate(new).allows("metrics", None)
    assert replica.authenticate(old) is None  # the leaked or retired key no longer works
    cli._adopt_keys_from_secrets()  # a replica starting with the same secret changes nothing
    assert KeyStore(_sqlite_url(tmp_path)).authenticate(new) is not None


# --- lookups of keys the service has not cached (random ids from an attacker) -------------------------


def _random_key() -> str:
    import secrets as pysecrets

    return f"slw_{pysecrets.token_hex(6)}_{pysecrets.token_urlsafe(32)}"


def test_an_unknown_key_is_looked_up_off_the_event_loop(tmp_path, monkeypatch):
    import asyncio

    store = KeyStore(_sqlite_url(tmp_path))
    store.start()
    real = store._fetch

    def slow_fetch(key_id, conn=None):  # a database that takes half a second to answer
        time.sleep(0.5)
        return real(key_id, conn)

    monkeypatch.setattr(store, "_fetch", slow_fetch)

    async def scenario() -> int:
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        assert await store.authenticate_async(_random_key(), "10.0.0.1") is None
        task.cancel()
        return ticks

    assert asyncio.run(scenario()) >= 20  # the loop kept running while the lookup waited
    store.close()


def test_random_ids_are_bounded_per_client_and_never_evict_known_keys(tmp_path, monkeypatch):
    import asyncio

    from include.serving import keys as keys_module
    from include.serving.keys import TooManyLookups

    store = KeyStore(_sqlite_url(tmp_path), client_burst=20, client_rate=0.001)
    store.start()
    _, valid = store.create(["predict"], "telco_churn")
    monkeypatch.setattr(keys_module, "_MAX_UNKNOWN", 50)  # a small cache, flooded below
    connects = []
    real_connect = store.db.connect
    monkeypatch.setattr(
        type(store.db), "connect", lambda self, *a, **k: connects.append(1) or real_connect(*a, **k)
    )

    async def scenario():
        assert await store.authenticate_async(valid, "10.0.0.9") is not None  # known, and cached
        refused = 0
        for i in range(200):  # 200 random ids from 10 addresses: 20 lookups each at most
            try:
                await store.authenticate_async(_random_key(), f"10.0.0.{i % 10}")
            except TooManyLookups:
                refused += 1
        return refused

    refused = asyncio.run(scenario())
    assert refused == 200 - 10 * 20 + 1  # 10.0.0.9 had spent one lookup on the valid key
    assert len(store._unknown) == 50 and len(connects) <= 2  # the lookup threads' own connections
    monkeypatch.setattr(
        store, "_fetch", lambda *a, **k: pytest.fail("the known key went back to the database")
    )
    assert asyncio.run(store.authenticate_async(valid, "10.0.0.9")) is not None
    store.close()


def test_too_many_pending_lookups_are_refused_without_the_database(tmp_path):
    import asyncio

    from include.serving.keys import LookupsBusy

    store = KeyStore(_sqlite_url(tmp_path), max_pending=0)
    store.start()
    with pytest.raises(LookupsBusy):
        asyncio.run(store.authenticate_async(_random_key(), "10.0.0.1"))
    store.close()


def test_concurrent_misses_of_one_key_share_one_lookup(tmp_path, monkeypatch):
    """A busy client's requests all miss together when its cache entry expires: one query answers them
    all, and none is charged to the client's budget but the first (no 429 for a valid key)."""
    import asyncio

    store = KeyStore(_sqlite_url(tmp_path), client_burst=1, client_rate=0.001)
    store.start()
    _, valid = store.create(["predict"], "telco_churn")
    fetched = []
    real = store._fetch

    def slow_fetch(key_id, conn=None):
        fetched.append(key_id)
        time.sleep(0.2)
        return real(key_id, conn)

    monkeypatch.setattr(store, "_fetch", slow_fetch)

    async def scenario():
        return await asyncio.gather(*(store.authenticate_async(valid, "10.0.0.1") for _ in range(64)))

    keys = asyncio.run(scenario())
    assert len(fetched) == 1 and all(k is not None and k.pipeline == "telco_churn" for k in keys)
    assert store._inflight == {}
    # a wrong secret with the same id shares the lookup but is still refused
    wrong = valid[:-4] + ("AAAA" if not valid.endswith("AAAA") else "BBBB")
    store._known.clear()

    async def mixed():
        return await asyncio.gather(
            store.authenticate_async(valid, "10.0.0.2"), store.authenticate_async(wrong, "10.0.0.2")
        )

    good, bad = asyncio.run(mixed())
    assert good is not None and bad is None and len(fetched) == 2
    store.close()
