"""Start waiting for an iterator's first item before the caller is ready for it.

A training run's first batch waits for the whole data pipeline to start (its Ray Data actors are
processes that take seconds to start on a small machine). Asking for it from a thread while the
model builds overlaps the two; the caller then iterates on from where the thread stopped.
"""

from __future__ import annotations

import threading
from typing import Iterable, Iterator, TypeVar

Item = TypeVar("Item")


def first_item_fetched_ahead(items: Iterable[Item]) -> Iterator[Item]:
    """`items`, whose first item a thread starts fetching now. An error the thread meets is raised
    where the caller asks for that item, as if the caller had fetched it."""
    iterator = iter(items)
    fetched: list = []

    def fetch() -> None:
        try:
            fetched.append(next(iterator))
        except StopIteration:
            pass
        except BaseException as err:  # noqa: BLE001 - handed to the caller unchanged
            fetched.append(err)

    thread = threading.Thread(target=fetch, name="mmtrain-fetch-ahead", daemon=True)
    thread.start()

    def items_from_here() -> Iterator[Item]:
        thread.join()
        for first in fetched:
            if isinstance(first, BaseException):
                raise first
            yield first
            yield from iterator

    return items_from_here()
