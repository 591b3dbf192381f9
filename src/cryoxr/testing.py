"""Helpers for testing code built on cryoxr: prove that nothing is computed.

Examples
--------
>>> import dask.array as da
>>> from cryoxr.testing import raise_if_dask_computes
>>> x = da.ones(10, chunks=5)
>>> with raise_if_dask_computes():
...     y = x + 1                    # building a graph computes nothing
>>> with raise_if_dask_computes(max_computes=1) as scheduler:
...     _ = y.sum().compute()
>>> scheduler.total_computes
1
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask

__all__ = ["CountingScheduler", "raise_if_dask_computes"]


class CountingScheduler:
    """A dask scheduler that counts computes and fails past a budget (as in xarray's tests).

    Parameters
    ----------
    max_computes
        How many computes are allowed before a RuntimeError.
    """

    def __init__(self, max_computes: int = 0) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(f"Too many computes. Total: {self.total_computes} > max: {self.max_computes}.")
        return dask.get(dsk, keys, **kwargs)


@contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    """Fail if the block computes dask graphs more than ``max_computes`` times.

    Inside the block a distributed Client is overridden by this scheduler.
    """
    scheduler = CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler
