"""The named lock the alias changes and the lineage's parent runs share: one holder at a time across
processes, on SQLite (flock) and on PostgreSQL (advisory lock), and a clear timeout."""

from __future__ import annotations

import threading
import time

import pytest

from include.database import LockTimeout, named_lock


def test_one_holder_at_a_time_and_a_timeout(log_url):
    inside: list[int] = []
    overlaps: list[int] = []

    def hold(i: int) -> None:
        with named_lock("lineage-dag-run", log_url, timeout_s=30):
            if inside:
                overlaps.append(i)
            inside.append(i)
            time.sleep(0.2)
            inside.remove(i)

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert overlaps == []
    with named_lock("lineage-dag-run", log_url), pytest.raises(LockTimeout, match="held for 1 s"):
        with named_lock("lineage-dag-run", log_url, timeout_s=1):
            pass
    with named_lock("lineage-dag-run", log_url), named_lock("another-name", log_url, timeout_s=1):
        pass  # other names are other locks
