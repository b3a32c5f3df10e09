"""The service app's start-up."""

from __future__ import annotations


def test_a_started_worker_keeps_its_start_up_objects_out_of_the_collector():
    """The service's start-up (app lifespan) freezes what the imports allocated: full collections
    then skip it, instead of pausing the event loop ~100 ms every second under load."""
    import gc

    from include.serving.app import settle_heap

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        settle_heap()
        assert gc.get_freeze_count() > 10_000  # this test process's libraries, at least
    finally:
        gc.unfreeze()
