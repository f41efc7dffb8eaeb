"""The first batch is fetched from a thread while the model builds; the loop sees the same stream."""

import threading

import pytest

from mmtrain.training.engine.fetch_ahead import first_item_fetched_ahead


def test_the_caller_gets_every_item_in_order_and_the_first_was_fetched_before_it_asked():
    fetched_by = []

    def items():
        for index in range(5):
            fetched_by.append(threading.current_thread().name)
            yield index

    stream = first_item_fetched_ahead(items())
    assert list(stream) == [0, 1, 2, 3, 4]
    assert fetched_by[0] == "mmtrain-fetch-ahead"
    assert set(fetched_by[1:]) == {threading.current_thread().name}


def test_the_fetch_starts_before_the_caller_iterates():
    started = threading.Event()

    def items():
        started.set()
        yield "batch"

    stream = first_item_fetched_ahead(items())
    assert started.wait(timeout=10)  # nobody has iterated yet
    assert next(stream) == "batch"


def test_an_error_while_fetching_the_first_item_reaches_the_caller_when_it_asks():
    def items():
        raise RuntimeError("too many bad samples")
        yield  # pragma: no cover

    stream = first_item_fetched_ahead(items())
    with pytest.raises(RuntimeError, match="too many bad samples"):
        next(stream)


def test_an_empty_stream_stays_empty():
    assert list(first_item_fetched_ahead(iter(()))) == []
