"""Dask arrays whose own compute writes every chunk into one output array.

``da.Array.compute()`` computes each chunk into an array of its own and then
concatenates them into a fresh one: the result is held twice at the peak and written
twice. An array passed through :func:`share_output` stays an ordinary dask array (same
type, name, chunks and graph, so every graph built on it streams as before) except when
it is computed *by itself* on an in-process scheduler (threads, synchronous): then its
graph is swapped for
one whose tasks write their rows straight into one array allocated on first use, and
that array is the result. Anything derived from it (a slice, a reduction, a fused
kernel) is a plain dask array and never sees the shared output.

Examples
--------
>>> import numpy as np, dask.array as da
>>> def rows(target):  # the row-writing graph: every task fills its rows of the target
...     def fill(block, starts, target):
...         out = target.rows(int(starts[0]), block.shape[0])
...         out[...] = 2 * block
...         return out
...     starts = da.from_array(np.array([0, 3]), chunks=1)
...     return da.blockwise(fill, "i", x, "i", starts, "i", target, None, name=y.name,
...                         align_arrays=False, dtype=float, meta=np.empty(0))
>>> x = da.arange(6.0, chunks=3)
>>> y = share_output(2 * x, rows)
>>> y.compute().tolist()
[0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
>>> type(y) is da.Array and type(y + 1) is da.Array
True
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
from dask.array.core import finalize as _dask_finalize
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph

from cryoxr.errors import InvalidValueError

__all__ = ["SharedOutput", "scheduler_ships_tasks", "share_output"]


def scheduler_ships_tasks() -> bool:
    """Whether the active dask scheduler runs tasks in other processes (copies of any target)."""
    import dask.base
    import dask.multiprocessing

    get = dask.base.get_scheduler()
    owner = getattr(get, "__self__", None)
    return get is dask.multiprocessing.get or type(owner).__name__ == "Client"


class SharedOutput:
    """An output array of ``shape`` and ``dtype``, allocated on first use, handed out by rows.

    Tasks call :meth:`rows` for their rows. Once every row has been handed out the object
    forgets the array (the views keep it alive), so running the same graph again fills a
    new one; so does asking twice for the same rows (a task run again). In another process (a pickled copy) there is no shared array: each task gets
    an array of its own rows, which dask then concatenates as usual.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._array: np.ndarray | None = None
        self._starts: set[int] = set()
        self._handed = 0

    def rows(self, start: int, n: int) -> np.ndarray:
        """A writable ``(n, *shape[1:])`` view of rows ``start:start + n`` of the output."""
        if os.getpid() != self._pid:
            return np.empty((n, *self.shape[1:]), dtype=self.dtype)
        with self._lock:
            if self._array is None or start in self._starts:  # a task run again: never overwrite
                self._array, self._starts, self._handed = np.empty(self.shape, dtype=self.dtype), set(), 0
            array = self._array
            self._starts.add(start)
            self._handed += n
            if self._handed >= self.shape[0]:
                self._array = None
        return array[start : start + n]

    def __getstate__(self) -> dict[str, Any]:
        return {"shape": self.shape, "dtype": self.dtype, "_pid": self._pid}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _array=None, _starts=set(), _handed=0)

    def __dask_tokenize__(self) -> tuple[str, int]:
        return ("cryoxr-shared-output", id(self))


def _finalize(results: Any) -> Any:
    """The one output when every chunk is its rows, in order; else dask's concatenation."""
    blocks = list(flatten(results))
    base = getattr(blocks[0], "base", None) if blocks else None
    if isinstance(base, np.ndarray) and base.flags.c_contiguous and base.ndim == blocks[0].ndim:
        row_bytes = base.strides[0]
        pointer = base.__array_interface__["data"][0]
        for block in blocks:
            if block.base is not base or block.__array_interface__["data"][0] != pointer:
                break
            pointer += block.shape[0] * row_bytes
        else:
            if pointer == base.__array_interface__["data"][0] + base.shape[0] * row_bytes:
                return base
    return _dask_finalize(results)


def ensure_hlg(dsk: Any) -> HighLevelGraph:
    """``dsk`` as a HighLevelGraph (dask hands optimizers either)."""
    if isinstance(dsk, HighLevelGraph):
        return dsk
    return HighLevelGraph.from_collections(f"graph-{id(dsk)}", dict(dsk), dependencies=())


class _OneOutput:
    """The hooks :func:`share_output` sets on one dask array (see there)."""

    def __init__(self, array: da.Array, rows: Callable[[SharedOutput], da.Array]) -> None:
        self.name, self.chunks, self.graph = array.name, array.chunks, array.dask
        self.shape, self.dtype = array.shape, array.dtype
        self.rows = rows

    def optimize(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """dask's array optimisation, after swapping the chunk layer for the row writers."""
        if np.prod(self.shape) > 0 and not scheduler_ships_tasks() and self._computed_whole(keys):
            written = self.rows(SharedOutput(self.shape, self.dtype))
            if written.name == self.name and written.chunks == self.chunks:
                # the chunk layer replaced; other tasks asked for (dask's finalize) kept
                dsk = HighLevelGraph.merge(ensure_hlg(dsk), written.__dask_graph__())
        return da.Array.__dask_optimize__(dsk, keys, **kwargs)

    def _computed_whole(self, keys: Any) -> bool:
        """Whether ``keys`` ask for a result made from all chunks (dask's compute asks for one
        finalize task over them) rather than for the chunks themselves: ``persist`` and
        ``to_delayed`` keep the chunks apart (their blocks may be computed one at a time,
        which must not keep one whole-size array alive)."""
        requested = set(flatten(keys))
        return bool(requested) and not requested & set(self.graph.keys())

    @staticmethod
    def postcompute() -> tuple[Callable[..., Any], tuple[()]]:
        """The one output when the chunks are its rows in order, else dask's concatenation."""
        return _finalize, ()


def share_output(array: da.Array, rows: Callable[[SharedOutput], da.Array]) -> da.Array:
    """``array`` itself, set to compute into one output when it is computed alone.

    ``rows(target)`` builds the graph that computes the same chunks (same name, same keys)
    by writing each one into ``target.rows(start, n)`` of a :class:`SharedOutput` and
    returning that view. The array stays a plain :class:`dask.array.Array` (xarray refuses
    to mix array types in one Dataset); only its instance gets its own
    ``__dask_optimize__`` (dask reads it from the collection it computes) and
    ``__dask_postcompute__``. The swap happens when dask computes the array itself
    (``compute``, ``.values``), on an in-process scheduler; ``persist``, ``to_delayed``,
    slices, reductions, copies and every other derived array run the original graph.
    """
    if any(len(c) != 1 for c in array.chunks[1:]):
        raise InvalidValueError(f"share_output: chunked along the first axis only, found {array.chunks}")
    hooks = _OneOutput(array, rows)
    vars(array).update(__dask_optimize__=hooks.optimize, __dask_postcompute__=hooks.postcompute)
    return array
