"""Writing MRC files: :func:`write_mrc`, streaming chunk by chunk into an atomic file.

Each dask chunk is written into the file at its own offset (:class:`_MrcWriteTarget`),
through :func:`store_guarded`, which also computes the statistics of the header in the
same pass and, when a task fails, lets no write start after the error (so the temporary
file can be removed safely). :func:`store_guarded` serves the OME-Zarr writer too.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from numpy.typing import DTypeLike

from cryoxr.errors import InvalidValueError
from cryoxr.image import Image, validate_image
from cryoxr.io._atomic import atomic_path
from cryoxr.io.mrc.header import HEADER_BYTES, MRC_MODES, WRITE_MODE_BY_DTYPE, _attr_bytes, _build_header

__all__ = ["store_guarded", "write_mrc"]


class _MrcWriteTarget:
    """``da.store`` target: each region write maps only the planes it covers."""

    __slots__ = ("dtype", "offset", "path", "shape")

    def __init__(self, path: str, offset: int, shape: tuple[int, int, int], dtype: np.dtype[Any]) -> None:
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, dtype

    def __setitem__(self, key: tuple[slice, ...], value: np.ndarray) -> None:
        # write_mrc hands over blocks of whole rows: one write per plane, at its offset
        nz, ny, nx = self.shape
        planes = range(nz)[key[0]]
        rows = range(ny)[key[1]]
        if (key[2].start or 0, key[2].stop, rows.step) not in {(0, nx, 1), (0, None, 1)}:
            raise ValueError(f"_MrcWriteTarget: blocks must span whole rows, found key {key}")
        block = np.ascontiguousarray(value, dtype=self.dtype)
        row_bytes = nx * self.dtype.itemsize
        with open(self.path, "r+b", buffering=0) as f:
            for i, z in enumerate(planes):
                f.seek(self.offset + (z * ny + rows.start) * row_bytes)
                f.write(memoryview(block[i]).cast("B"))


class _WriteGuard:
    """Shared by the targets of one write: refuses writes once cancelled, counts writes in flight.

    When a dask task fails, the threaded scheduler raises at once while other tasks are
    still running; without this, they could write into the temporary file or folder
    after it was removed (and recreate it).
    """

    def __init__(self) -> None:
        self.cancelled = False
        self.active = 0
        self.condition = threading.Condition()

    def cancel_and_wait(self) -> None:
        with self.condition:
            self.cancelled = True
            self.condition.wait_for(lambda: self.active == 0)


class _GuardedTarget:
    """A ``da.store`` target that writes through ``target`` unless the guard was cancelled."""

    def __init__(self, target: Any, guard: _WriteGuard) -> None:
        self.target, self.guard = target, guard
        self.shape, self.dtype, self.ndim = target.shape, target.dtype, len(target.shape)

    def __setitem__(self, key: Any, value: Any) -> None:
        with self.guard.condition:
            if self.guard.cancelled:
                return
            self.guard.active += 1
        try:
            self.target[key] = value
        finally:
            with self.guard.condition:
                self.guard.active -= 1
                self.guard.condition.notify_all()

    def __reduce__(self) -> tuple[Any, ...]:
        # other processes cannot share the guard: they write unguarded
        return (_unguarded, (self.target,))


def _unguarded(target: Any) -> Any:
    return target


def store_guarded(sources: list[da.Array], targets: list[Any], *extra: Any) -> list[Any]:
    """``da.store`` the sources into the targets, computing ``extra`` in the same pass.

    If anything fails, writes still in flight finish and no later write starts before
    the error propagates (threaded scheduler), so the caller can remove its temporary
    output safely.

    Returns
    -------
    list
        The computed ``extra`` values.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> target = np.zeros(6)
    >>> x = da.arange(6.0, chunks=2)
    >>> store_guarded([x], [target], x.sum())
    [np.float64(15.0)]
    >>> target.tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    """
    guard = _WriteGuard()
    stored = da.store(sources, [_GuardedTarget(t, guard) for t in targets], lock=False, compute=False)  # type: ignore[misc]
    try:
        _, *values = dask.compute(stored, *extra)
    except BaseException:
        guard.cancel_and_wait()
        raise
    return values


#: what to suggest for a dtype MRC does not hold
_SUGGEST = {"f": "float32", "c": "complex64", "i": "int16 or float32", "u": "uint16 or float32", "b": "uint8"}


def _target_dtype(
    source: np.dtype[Any], path: Any, *, mode: int | None, dtype: DTypeLike | None
) -> np.dtype[Any]:
    """The dtype written: the source's if MRC holds it exactly, else the one asked for."""
    if mode is not None and dtype is not None:
        raise InvalidValueError(f"write_mrc: {path}: pass one of mode= and dtype=, found both")
    if mode is not None:
        if mode not in MRC_MODES:
            raise InvalidValueError(
                f"write_mrc: {path}: mode must be one of {sorted(MRC_MODES)}, found {mode!r}"
            )
        return np.dtype(np.uint8) if mode == 0 and source == np.uint8 else MRC_MODES[mode]
    wanted = source
    if dtype is not None:
        try:
            wanted = np.dtype(dtype)
        except TypeError:
            raise InvalidValueError(f"write_mrc: {path}: dtype= {dtype!r} is not a numpy dtype") from None
    if f"{wanted.kind}{wanted.itemsize}" in WRITE_MODE_BY_DTYPE:
        return wanted.newbyteorder("=")
    held = "float32, float16, int8, uint8, int16, uint16, complex64"
    if dtype is not None:
        raise InvalidValueError(f"write_mrc: {path}: dtype= must be one MRC holds ({held}), found {wanted}")
    raise InvalidValueError(
        f"write_mrc: {path}: MRC cannot hold {source} exactly; pass dtype='{_SUGGEST.get(source.kind, 'float32')}' "
        f"to convert (or cast the image first). MRC holds {held}"
    )


def _stats(darr: da.Array) -> list[da.Array]:
    """dmin, dmax, dmean, rms as mrcfile computes them (complex: rms only)."""
    if np.iscomplexobj(darr):
        return [darr.std(dtype=np.complex128).real]
    return [darr.min(), darr.max(), darr.mean(dtype=np.float64), darr.std(dtype=np.float64)]


def write_mrc(
    image: Image | xr.DataArray,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    mode: int | None = None,
    dtype: DTypeLike | None = None,
) -> Path:
    """Write an image to an MRC file, streaming chunk by chunk.

    Each dask chunk is computed and written into a memory map of only the planes it
    covers, so peak memory is a few chunks, never the whole volume. The file is written to
    a temporary sibling and renamed when complete (:func:`cryoxr.io._atomic.atomic_path`):
    a failed write leaves no partial file and an existing target untouched. The raw
    ``mrc_*`` attrs (:mod:`cryoxr.io.mrc.header`) are restored; ``cella`` / ``mx, my, mz``
    only while they still give the image's pixel spacing, otherwise they are rewritten
    as ``pixel_spacing * shape``. Statistics are recomputed in the same pass.

    One rule for dtypes: the ones MRC holds exactly are written as they are (float32 ->
    mode 2, float16 -> 12, int8 and uint8 -> 0, int16 -> 1, uint16 -> 6, complex64 -> 4;
    uint8 with IMOD's unsigned-bytes flag, see :mod:`cryoxr.io.mrc.header`); any other
    (float64, complex128, int32, bool, ...) is refused unless ``dtype=`` (or ``mode=``)
    asks for a conversion. Nothing is narrowed silently.

    Parameters
    ----------
    image
        An Image (or image DataArray).
    path
        Destination file.
    overwrite
        Replace an existing file (a regular file only: never a folder).
    mode
        MRC mode to write (0, 1, 2, 4, 6, 12): converts to its dtype (mode 0 keeps uint8
        data unsigned).
    dtype
        Convert to this dtype (one MRC holds, as above) before writing, with numpy
        ``astype`` (no rounding, no clipping: float64 values beyond float32's range become
        inf, integers wrap). Pass one of ``mode`` and ``dtype``.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    FileExistsNoOverwriteError
        ``path`` exists and ``overwrite`` is False, or ``path`` is a folder.
    InvalidValueError
        A dtype MRC cannot hold (without ``dtype=``), an unknown mode or dtype, or
        malformed ``mrc_*`` attrs.
    WriteError
        The disk refused; nothing is left behind.

    Examples
    --------
    >>> import tempfile, pathlib, mrcfile, numpy as np
    >>> from cryoxr import Micrograph
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> m = Micrograph.from_array(np.eye(4, dtype=np.uint8) * 200, pixel_spacing=1.0, experiment_id="m")
    >>> p = write_mrc(m, folder / "m.mrc")
    >>> from cryoxr.io.mrc import read_mrc
    >>> back = read_mrc(p)
    >>> back.data.dtype.name, int(back.data.max())
    ('uint8', 200)
    >>> d = Micrograph.from_array(np.eye(4), pixel_spacing=1.0, experiment_id="d")  # float64
    >>> write_mrc(d, folder / "d.mrc")
    Traceback (most recent call last):
    ...
    cryoxr.errors.InvalidValueError: write_mrc: .../d.mrc: MRC cannot hold float64 exactly; pass dtype='float32' to convert ...
    >>> write_mrc(d, folder / "d.mrc", dtype="float32").name
    'd.mrc'
    """
    data = validate_image(image)
    target_dtype = _target_dtype(data.dtype, path, mode=mode, dtype=dtype)
    mode = WRITE_MODE_BY_DTYPE[f"{target_dtype.kind}{target_dtype.itemsize}"]
    file_dtype = target_dtype.newbyteorder("<")
    darr = (
        data.data if isinstance(data.data, da.Array) else da.from_array(np.asarray(data.data), chunks="auto")
    )
    if darr.ndim == 2:
        darr = darr[np.newaxis]
    # blocks of whole rows, so that each block is one contiguous write per plane
    darr = darr.astype(file_dtype.newbyteorder("=")).rechunk({darr.ndim - 1: -1})
    file_shape = tuple(int(n) for n in darr.shape)
    extended = _attr_bytes(data.attrs, "mrc_extended_header")
    header = _build_header(data, mode, file_shape, extended, signed_bytes=target_dtype.kind == "i")  # type: ignore[arg-type]
    offset = HEADER_BYTES + len(extended)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "r+b") as f:
            f.truncate(offset + darr.size * file_dtype.itemsize)  # sparse until written
            f.seek(HEADER_BYTES)
            f.write(extended)
        target = _MrcWriteTarget(str(tmp), offset, file_shape, file_dtype)  # type: ignore[arg-type]
        stats = store_guarded([darr], [target], *_stats(darr))
        values = np.array(stats if len(stats) == 4 else [0, -1, -2, stats[0]], dtype=np.float64)
        stored = np.array(data.attrs.get("mrc_stats", [np.nan] * 4), dtype=np.float64)
        scale = float(np.max(np.abs(values), initial=0.0, where=np.isfinite(values)))
        if stored.shape == (4,) and np.allclose(values, stored, rtol=1e-5, atol=1e-6 * scale):
            values = stored  # the file's own statistics, where they still hold: round trips stay exact
        header["dmin"], header["dmax"], header["dmean"], header["rms"] = values.astype(np.float32)
        with open(tmp, "r+b") as f:
            f.write(header.tobytes())
    return Path(path)
