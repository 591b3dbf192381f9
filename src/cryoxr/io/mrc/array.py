"""Lazy, picklable access to the data block of an MRC file: :class:`MrcArray`.

An :class:`MrcArray` holds only the path, offset, shape and dtype of the voxels (it
pickles in a few hundred bytes); each read opens the file itself, so dask tasks run the
same under the threaded, process and distributed schedulers:

- whole planes in native byte order come back as a read-only view of a memory map of just
  those planes (no copy: whole-volume reductions run at numpy-on-memmap speed; the map
  closes when the chunk is dropped);
- other runs of whole rows (a y-slice, a block of rows) are read with one ``readinto`` per
  plane (a memory map would also map the page-cache folios around the rows and count
  them as this process's memory);
- scattered short runs (a box, a column) are copied out of a memory map advised
  ``MADV_RANDOM``, which pages in only what is touched.

:class:`_MrcBackendArray` is xarray's lazy-indexing door to it, for reads without dask
(``read_mrc(..., chunks=None)``).
"""

from __future__ import annotations

import io
import math
import mmap
import operator
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from dask.array.dispatch import nannumel_lookup, numel_lookup
from xarray.backends import BackendArray
from xarray.core import indexing

from cryoxr.errors import FormatError
from cryoxr.io._paths import open_file

__all__ = ["MAP_ALIGNMENT", "MrcArray", "NanCheckedArray"]

#: maps start at a file offset that is a multiple of 2 MiB, so that the kernel can map
#: large page-cache folios whole (about 4x fewer page faults than 4 KiB-aligned maps)
MAP_ALIGNMENT = max(2 * 2**20, mmap.ALLOCATIONGRANULARITY)


def _plane_range(zkey: Any, nz: int) -> tuple[int, int, Any]:
    """Planes ``[lo, hi)`` a key along z touches, and the key relative to ``lo``."""
    if isinstance(zkey, int | np.integer):
        i = operator.index(zkey)
        i = i + nz if i < 0 else i
        if not 0 <= i < nz:
            raise IndexError(f"index {zkey} is out of bounds for axis 0 with size {nz}")
        return i, i + 1, 0
    if isinstance(zkey, slice):
        planes = range(nz)[zkey]
        if len(planes) == 0:
            return 0, 0, slice(0, 0)
        if planes.step == 1:
            return planes.start, planes.stop, slice(0, len(planes))
        lo, hi = min(planes), max(planes) + 1
        return lo, hi, np.asarray(planes) - lo
    idx = np.asarray(zkey)
    if idx.dtype == bool:
        (idx,) = np.nonzero(idx)
    idx = np.where(idx < 0, idx + nz, idx)
    if idx.size == 0:
        return 0, 0, idx
    lo, hi = int(idx.min()), int(idx.max()) + 1
    return lo, hi, idx - lo


def _expand_key(key: Any, ndim: int) -> tuple[Any, ...]:
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    return key + (slice(None),) * (ndim - len(key))


class _Mapped(np.ndarray):
    """An ndarray over an :class:`mmap.mmap` that it keeps (for ``madvise``)."""

    mm: mmap.mmap


def _map_planes(
    f: io.BufferedReader,
    offset: int,
    planes: tuple[int, int],
    file_shape: tuple[int, ...],
    dtype: np.dtype[Any],
) -> tuple[mmap.mmap, np.ndarray]:
    """A read-only memory map of planes ``[lo, hi)`` and an array over it, which keeps it alive."""
    lo, hi = planes
    _, ny, nx = file_shape
    plane = ny * nx * dtype.itemsize
    start = offset + lo * plane
    aligned = start - start % MAP_ALIGNMENT
    with f:
        mm = mmap.mmap(
            f.fileno(), (hi - lo) * plane + start - aligned, access=mmap.ACCESS_READ, offset=aligned
        )
    return mm, np.ndarray((hi - lo, ny, nx), dtype, buffer=mm, offset=start - aligned)


@contextmanager
def _mapped(
    f: io.BufferedReader,
    offset: int,
    planes: tuple[int, int],
    file_shape: tuple[int, ...],
    dtype: np.dtype[Any],
) -> Iterator[_Mapped]:
    """Map planes ``[lo, hi)`` of a data block, read-only; unmap on exit (keep no views)."""
    mm, array = _map_planes(f, offset, planes, file_shape, dtype)
    try:
        view = array.view(_Mapped)
        del array  # the view holds the only reference
        view.mm = mm
        yield view
        del view
    finally:
        mm.close()


def _whole_rows(basic: list[Any], nx: int) -> bool:
    """True when a basic key reads whole rows (x complete, y an int or a step-1 slice)."""
    y, x = basic[1], basic[2]
    whole_x = isinstance(x, slice) and range(nx)[x] == range(nx)
    y_ok = isinstance(y, int | np.integer) or (isinstance(y, slice) and y.step in (None, 1))
    return whole_x and y_ok


def _read_rows(
    f: io.BufferedReader,
    offset: int,
    planes: np.ndarray,
    rows: Any,
    file_shape: tuple[int, ...],
    dtype: np.dtype[Any],
) -> np.ndarray:
    """Rows ``rows`` (int or step-1 slice) of the given planes, with one read per plane."""
    _, ny, nx = file_shape
    span = (
        range(ny)[rows] if isinstance(rows, slice) else range(operator.index(rows), operator.index(rows) + 1)
    )
    out = np.empty((len(planes), len(span), nx), dtype)
    if out.size == 0:
        f.close()
        return out
    row_bytes = nx * dtype.itemsize
    with f:
        for i, z in enumerate(planes):
            f.seek(offset + (int(z) * ny + span.start) * row_bytes)
            target = memoryview(out[i]).cast("B")
            filled = 0
            while filled < len(target):
                n = f.readinto(target[filled:])
                if not n:
                    raise FormatError(f"{f.name}: data block ends early, at plane {z}")
                filled += n
    return out


def _advise_random(view: _Mapped) -> None:
    """No read-around: a scattered selection pages in only the pages it touches."""
    if hasattr(mmap, "MADV_RANDOM"):  # not on Windows
        view.mm.madvise(mmap.MADV_RANDOM)


class NanCheckedArray(np.ndarray):
    """Values read from a file (MRC, OME-Zarr), whose NaN-skipping reductions try the plain one first.

    xarray reduces floating-point data with ``skipna=True`` by default, which dask runs as
    ``np.nansum`` and a count of the non-NaN values per chunk: about 5 passes over the
    data (a NaN mask, a copy with the NaNs replaced, the sum, a second mask, its count)
    where ``np.sum`` makes one. Voxels of a file are seldom NaN, so here ``np.nansum``,
    ``np.nanmax``, ``np.nanmin``, ``np.nanmean``, ``np.nanvar`` and ``np.nanstd`` first
    run the plain reduction: NaN propagates through it, so a result without NaN is the
    NaN-skipping result, and only a result holding NaN is computed again the NaN-skipping
    way. dask's count of non-NaN values (``nannumel``) is the plain count when a sum
    finds no NaN, and that sum is kept for the ``np.nansum`` that follows on the same
    chunk with the same axes and dtype. Everything else behaves as for :class:`numpy.ndarray`.

    Examples
    --------
    >>> a = np.array([1.0, 2.0, 3.0], np.float32).view(NanCheckedArray)
    >>> float(np.nanmean(a)), float(np.nanmax(np.append(a, np.nan).view(NanCheckedArray)))
    (2.0, 3.0)
    """

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        fast = _PLAIN_FIRST.get(func)
        if fast is not None:
            return fast(*args, **kwargs)
        return super().__array_function__(func, types, args, kwargs)


def _plain(a: Any) -> Any:
    return a.view(np.ndarray) if isinstance(a, NanCheckedArray) else a


def _sum_key(a: np.ndarray, axis: Any, keepdims: bool, dtype: Any) -> tuple[Any, ...]:
    axis = tuple(axis) if isinstance(axis, list) else axis
    return axis, bool(keepdims), np.dtype(a.dtype if dtype is None else dtype)


def _plain_first(plain: Any, nan: Any) -> Any:
    def reduce(a: Any, *args: Any, **kwargs: Any) -> Any:
        cached = getattr(a, "_cryoxr_sum", None)
        if (
            nan is np.nansum
            and not args
            and cached is not None
            and cached[0]
            == _sum_key(a, kwargs.get("axis"), kwargs.get("keepdims", False), kwargs.get("dtype"))
        ):
            # dask's nannumel just summed this chunk over these axes: reuse it
            return cached[1]
        base = _plain(a)
        result = plain(base, *args, **kwargs)
        if np.isnan(result).any():
            return nan(base, *args, **kwargs)
        return result

    return reduce


_PLAIN_FIRST = {
    nan: _plain_first(plain, nan)
    for plain, nan in [
        (np.sum, np.nansum), (np.max, np.nanmax), (np.min, np.nanmin),
        (np.mean, np.nanmean), (np.var, np.nanvar), (np.std, np.nanstd),
    ]
}  # fmt: skip


@nannumel_lookup.register(NanCheckedArray)
def _nannumel(x: NanCheckedArray, axis: Any = None, keepdims: bool = False, **kwargs: Any) -> Any:
    """dask's count of non-NaN values: the plain count when the chunk's sum holds no NaN."""
    base = _plain(x)
    if base.dtype.kind not in "fc":
        return numel_lookup(base, axis=axis, keepdims=keepdims, **kwargs)
    dtype = kwargs.get("dtype") if np.dtype(kwargs.get("dtype") or "O").kind in "fc" else None
    total = np.sum(base, axis=axis, keepdims=keepdims, dtype=dtype)
    if np.isnan(total).any():
        return nannumel_lookup(base, axis=axis, keepdims=keepdims, **kwargs)
    x._cryoxr_sum = (_sum_key(base, axis, keepdims, dtype), total)  # type: ignore[attr-defined]
    return numel_lookup(base, axis=axis, keepdims=keepdims, **kwargs)


class MrcArray:
    """The data block of an MRC file as a lazy, picklable array.

    Holds only the path, offset, shape and dtype; each ``__getitem__`` maps the planes the
    key touches with :class:`numpy.memmap`, copies the selection into memory (in native
    byte order) and unmaps the file, so nothing stays resident between reads and the
    object pickles in a few hundred bytes (process and distributed schedulers).

    Parameters
    ----------
    path
        The MRC file.
    offset
        Byte offset of the data block (1024 + ``nsymbt``).
    file_shape
        ``(nz, ny, nx)``.
    file_dtype
        dtype with the file's byte order.
    squeeze
        Present a single-section file as 2D ``(ny, nx)``.
    opened
        ``(st_size, st_mtime_ns)`` of the file when it was opened (:func:`read_mrc` records
        it): a read finding another size or modification time raises a
        :class:`~cryoxr.errors.FormatError` saying the file changed since it was opened
        (a truncated file would otherwise fail inside ``mmap``, a rewritten one give other
        voxels). Without it, only a data block that no longer fits is refused.

    Examples
    --------
    >>> import tempfile, pathlib, mrcfile, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.mrc"
    >>> mrcfile.write(p, np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    >>> a = MrcArray(str(p), 1024, (2, 3, 4), np.dtype("<i2"))
    >>> a[1, :, 2].tolist()
    [14, 18, 22]
    """

    __slots__ = ("dtype", "file_dtype", "file_shape", "ndim", "offset", "opened", "path", "shape", "squeeze")

    def __init__(
        self,
        path: str,
        offset: int,
        file_shape: tuple[int, int, int],
        file_dtype: np.dtype[Any],
        *,
        squeeze: bool = False,
        opened: tuple[int, int] | None = None,
    ) -> None:
        self.path = str(path)
        self.opened = None if opened is None else (int(opened[0]), int(opened[1]))
        self.offset = int(offset)
        self.file_shape = tuple(int(n) for n in file_shape)
        self.file_dtype = np.dtype(file_dtype)
        self.dtype = self.file_dtype.newbyteorder("=")
        self.squeeze = bool(squeeze)
        self.shape = self.file_shape[1:] if squeeze else self.file_shape
        self.ndim = len(self.shape)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        stamp: tuple[int, int] | None = self.opened
        if stamp is None:
            try:
                st = os.stat(self.path)
                stamp = (st.st_size, st.st_mtime_ns)
            except OSError:
                stamp = (-1, -1)  # reading will say what is wrong
        return ("cryoxr.MrcArray", self.path, *stamp, self.offset,
                self.file_shape, self.file_dtype.str, self.squeeze)  # fmt: skip

    def _open(self) -> io.BufferedReader:
        """The file, opened and checked: still a regular file, unchanged since it was opened."""
        f, st = open_file(self.path, what="MRC")
        now = (st.st_size, st.st_mtime_ns)
        needed = self.offset + math.prod(self.file_shape) * self.file_dtype.itemsize
        if (self.opened is not None and now != self.opened) or st.st_size < needed:
            f.close()
            then = (
                "" if self.opened is None else f"{self.opened[0]} bytes, modified {self.opened[1]} ns then; "
            )
            raise FormatError(
                f"{self.path}: the file changed since it was opened ({then}{st.st_size} bytes, modified "
                f"{st.st_mtime_ns} ns now; the data block needs {needed} bytes): open it again with read_mrc"
            )
        return f

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _expand_key(key, self.ndim)
        if self.squeeze:
            key = (0, *key)
        nz, ny, nx = self.file_shape
        lo, hi, zrel = _plane_range(key[0], nz)
        # outer indexing (as xarray and dask expect): ints and slices first, then each
        # integer array along its own axis, over the bounding range it spans
        basic: list[Any] = [zrel]
        arrays: list[tuple[int, np.ndarray]] = []
        for size, k in zip((ny, nx), key[1:], strict=True):
            if isinstance(k, int | np.integer | slice):
                basic.append(k)
                continue
            start, stop, rel = _plane_range(k, size)
            basic.append(slice(start, stop))
            arrays.append((len(basic) - 1, np.asarray(rel)))
        if isinstance(zrel, np.ndarray):
            basic[0] = slice(0, hi - lo)
            arrays.append((0, zrel))
        if hi == lo:
            # nothing to read: index a zero-strided stand-in for the right result shape
            empty = np.broadcast_to(np.zeros((), self.dtype), (0, ny, nx))
            out = np.array(empty[tuple(basic)])
        elif (
            isinstance(zrel, slice | int)
            and range(ny)[basic[1]] == range(ny)
            and range(nx)[basic[2]] == range(nx)
            and self.file_dtype == self.dtype
        ):
            # whole planes in native byte order: a read-only view of a map of just these
            # planes, no copy (reductions run at memory-map speed); the map closes when the
            # last view of it is dropped
            _, planes_view = _map_planes(
                self._open(), self.offset, (lo, hi), self.file_shape, self.file_dtype
            )
            out = planes_view[zrel]
        elif _whole_rows(basic, nx):
            # runs of whole rows: plain reads into the result, one per plane. (A memory map
            # would map whole page-cache folios around them: several times the bytes read
            # would count as this process's memory.)
            planes = np.arange(lo, hi)[zrel]
            out = _read_rows(
                self._open(), self.offset, np.atleast_1d(planes), basic[1], self.file_shape, self.file_dtype
            )
            out = out.astype(self.dtype, copy=False)
            out = out[
                (
                    0 if planes.ndim == 0 else slice(None),
                    0 if isinstance(basic[1], int | np.integer) else slice(None),
                )
            ]
            arrays = [(axis, rel) for axis, rel in arrays if axis != 0]  # planes are already picked
        else:
            # scattered short runs (a box, a column): map the planes, page in only what is touched
            with _mapped(self._open(), self.offset, (lo, hi), self.file_shape, self.file_dtype) as view:
                _advise_random(view)
                out = np.array(view[tuple(basic)], dtype=self.dtype)  # a copy: the map closes
        dropped = [i for i, k in enumerate(basic) if isinstance(k, int | np.integer)]
        for axis, rel in arrays:
            out = np.take(out, rel, axis=axis - sum(d < axis for d in dropped))
        return out.view(NanCheckedArray)  # NaN-skipping reductions try the plain one first

    def __repr__(self) -> str:
        return f"MrcArray({self.path!r}, shape={self.shape}, dtype={self.dtype})"


class _MrcBackendArray(BackendArray):
    """xarray's lazy-indexing door to :class:`MrcArray` (``chunks=None``: no dask)."""

    __slots__ = ("array", "dtype", "shape")

    def __init__(self, array: MrcArray) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype

    def __getitem__(self, key: indexing.ExplicitIndexer) -> Any:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER_1VECTOR, self.array.__getitem__
        )
