"""MRC / CCP4 files (MRC2014): lazy reading into an Image, streaming writing.

Reading parses the 1024-byte header only; the voxels stay on disk behind a small picklable
array (:class:`MrcArray`: path, offset, shape, dtype) wrapped in dask. Each read opens the
file itself, so tasks run the same under the threaded, process and distributed schedulers:

- whole planes in native byte order come back as a read-only view of a memory map of just
  those planes (no copy: whole-volume reductions run at numpy-on-memmap speed; the map
  closes when the chunk is dropped);
- other runs of whole rows (a y-slice, a block of rows) are read with one ``readinto`` per
  plane (a memory map would also map the page-cache folios around the rows and count
  them as this process's memory);
- scattered short runs (a box, a column) are copied out of a memory map advised
  ``MADV_RANDOM``, which pages in only what is touched.

Header fields cryoxr does not model are kept *raw* in the DataArray's attrs, under
``mrc_*`` keys, so that :func:`write_mrc` restores them (CONVENTIONS 1.4: the ``origin``
is not combined with ``nxstart`` nor sign-flipped; both are kept as stored):

========================  ===================================================
attr                      header field(s)
========================  ===================================================
``mrc_origin``            ``origin`` (x, y, z), Å, as stored
``mrc_nstart``            ``nxstart, nystart, nzstart``
``mrc_cella``             ``cella`` (x, y, z), Å
``mrc_sampling``          ``mx, my, mz``
``mrc_cellb``             ``cellb`` (alpha, beta, gamma), degrees
``mrc_ispg``              ``ispg``
``mrc_nversion``          ``nversion``
``mrc_exttyp``            ``exttyp`` (str)
``mrc_labels``            the ``nlabl`` first labels (list of str)
``mrc_extended_header``   the ``nsymbt`` bytes after the header, base64
``mrc_extra1/2``          the ``extra1`` / ``extra2`` bytes, base64 (if not all zero)
``mrc_stats``             ``dmin, dmax, dmean, rms``
========================  ===================================================

The writer recomputes ``dmin, dmax, dmean, rms`` in the same pass as the data (as mrcfile
does; in float64 where mrcfile uses float32); where they agree with ``mrc_stats`` to float32 precision the stored
values are written back, so that unchanged data round-trip bit for bit. The machine stamp
and byte order of written files are always little-endian.

Chunking: a volume read with ``chunks="auto"`` is chunked in slabs of whole planes of
about 64 MiB (at least one plane): contiguous in the file, mapped without copying, a few
dozen tasks for a whole-volume pass. Small selections (a z-slice, a y-slice, a 64^3 box)
read only their own bytes whatever the chunking, because dask fuses the selection into
the read. Converting to OME-Zarr's 128-cubes would merge slabs (holding a band of planes
per output chunk), so :func:`rechunk_from_file` reads an unmodified image afresh in blocks
of whole rows instead. Stacks are chunked one image per chunk. ``chunks=None`` skips dask
altogether: the DataArray is lazily indexed by xarray and each selection reads straight
from the file (no graph: the fastest path for viewing single slices). The trade-offs are
measured in ``benchmarks/README.md``.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> from cryoxr import Tomogram
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> tomo = Tomogram.from_array(np.arange(60, dtype=np.float32).reshape(3, 4, 5),
...                            pixel_spacing=13.48, experiment_id="TS_01")
>>> path = write_mrc(tomo, folder / "TS_01.mrc")
>>> back = read_mrc(path)
>>> type(back).__name__, back.shape, back.pixel_spacing, back.experiment_id
('Tomogram', (3, 4, 5), 13.48, 'TS_01')
>>> float(back.data.sel(z=13.48).mean())
29.5
"""

from __future__ import annotations

import base64
import math
import mmap
import operator
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import mrcfile.dtypes
import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from cryoxr.errors import (
    CryoxrFileNotFoundError,
    FormatError,
    InvalidValueError,
    UnknownFormatError,
)
from cryoxr.image import IMAGE_DIMS, Chunks, Image, Micrograph, Tomogram, image_coords, validate_image
from cryoxr.io._atomic import atomic_path

__all__ = ["MRC_MODES", "MRC_SUFFIXES", "MrcArray", "read_mrc", "rechunk_from_file", "write_mrc"]

#: Suffixes that :func:`cryoxr.io.images.open_image` reads as MRC; ``.mrcs`` is a stack.
MRC_SUFFIXES: tuple[str, ...] = (".mrc", ".mrcs", ".st", ".ali", ".rec", ".map")
STACK_SUFFIXES: frozenset[str] = frozenset({".mrcs"})

ByteOrder = Literal["<", ">"]
HEADER_BYTES = 1024
HEADER_DTYPE: np.dtype[Any] = mrcfile.dtypes.HEADER_DTYPE

#: MRC mode -> numpy dtype (mrcfile ``utils.dtype_from_mode``; modes 3 and 101 unsupported)
MRC_MODES: dict[int, np.dtype[Any]] = {
    0: np.dtype(np.int8),
    1: np.dtype(np.int16),
    2: np.dtype(np.float32),
    4: np.dtype(np.complex64),
    6: np.dtype(np.uint16),
    12: np.dtype(np.float16),
}

#: numpy dtype (kind + itemsize) -> MRC mode written when ``mode=None``. uint8 is widened
#: to mode 6 (as mrcfile does); float64 / complex128 are narrowed to modes 2 / 4.
WRITE_MODE_BY_DTYPE: dict[str, int] = {
    "i1": 0,
    "i2": 1,
    "f4": 2,
    "c8": 4,
    "u2": 6,
    "u1": 6,
    "f2": 12,
    "f8": 2,
    "c16": 4,
}

#: first byte of the machine stamp -> byte order (mrcfile ``utils.byte_order_from_machine_stamp``)
BYTE_ORDER_BY_STAMP: dict[int, ByteOrder] = {0x44: "<", 0x11: ">"}
LITTLE_ENDIAN_STAMP = (0x44, 0x44, 0x00, 0x00)

#: ``mapc/mapr/maps`` value -> axis name
AXIS_BY_MAP: dict[int, str] = {1: "x", 2: "y", 3: "z"}

#: ispg values: 0 = image stack, 1 = volume, 401..630 = volume stack (mrcfile constants)
IMAGE_STACK_ISPG = 0
VOLUME_ISPG = 1
VOLUME_STACK_ISPG = range(401, 631)

#: the wrapper class for (spatial ndim, stack)
IMAGE_CLASS: dict[tuple[int, bool], type[Image]] = {
    (2, False): Micrograph,
    (3, False): Tomogram,
    (2, True): Image,
}

#: target bytes of one auto chunk of a volume, and its z depth
AUTO_CHUNK_BYTES = 64 * 2**20

NVERSION = 20141

#: maps start at a file offset that is a multiple of 2 MiB, so that the kernel can map
#: large page-cache folios whole (about 4x fewer page faults than 4 KiB-aligned maps)
MAP_ALIGNMENT = max(2 * 2**20, mmap.ALLOCATIONGRANULARITY)


# ----------------------------------------------------------------------------------------
# lazy, picklable access to the data block
# ----------------------------------------------------------------------------------------
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


@contextmanager
def _mapped(
    path: str,
    offset: int,
    planes: tuple[int, int],
    file_shape: tuple[int, ...],
    dtype: np.dtype[Any],
) -> Iterator[_Mapped]:
    """Map planes ``[lo, hi)`` of a data block, read-only; unmap on exit (keep no views)."""
    lo, hi = planes
    _, ny, nx = file_shape
    plane = ny * nx * dtype.itemsize
    start = offset + lo * plane
    aligned = start - start % MAP_ALIGNMENT
    with open(path, "rb") as f:
        mm = mmap.mmap(
            f.fileno(), (hi - lo) * plane + start - aligned, access=mmap.ACCESS_READ, offset=aligned
        )
    try:
        view = np.ndarray((hi - lo, ny, nx), dtype, buffer=mm, offset=start - aligned).view(_Mapped)
        view.mm = mm
        yield view
        del view
    finally:
        mm.close()


def _map_planes(
    path: str, offset: int, planes: tuple[int, int], file_shape: tuple[int, ...], dtype: np.dtype[Any]
) -> np.ndarray:
    """A read-only array over a memory map of planes ``[lo, hi)``, which it keeps alive."""
    lo, hi = planes
    _, ny, nx = file_shape
    plane = ny * nx * dtype.itemsize
    start = offset + lo * plane
    aligned = start - start % MAP_ALIGNMENT
    with open(path, "rb") as f:
        mm = mmap.mmap(
            f.fileno(), (hi - lo) * plane + start - aligned, access=mmap.ACCESS_READ, offset=aligned
        )
    return np.ndarray((hi - lo, ny, nx), dtype, buffer=mm, offset=start - aligned)


def _whole_rows(basic: list[Any], nx: int) -> bool:
    """True when a basic key reads whole rows (x complete, y an int or a step-1 slice)."""
    y, x = basic[1], basic[2]
    whole_x = isinstance(x, slice) and range(nx)[x] == range(nx)
    y_ok = isinstance(y, int | np.integer) or (isinstance(y, slice) and y.step in (None, 1))
    return whole_x and y_ok


def _read_rows(
    path: str, offset: int, planes: np.ndarray, rows: Any, file_shape: tuple[int, ...], dtype: np.dtype[Any]
) -> np.ndarray:
    """Rows ``rows`` (int or step-1 slice) of the given planes, with one read per plane."""
    _, ny, nx = file_shape
    span = (
        range(ny)[rows] if isinstance(rows, slice) else range(operator.index(rows), operator.index(rows) + 1)
    )
    out = np.empty((len(planes), len(span), nx), dtype)
    if out.size == 0:
        return out
    row_bytes = nx * dtype.itemsize
    with open(path, "rb", buffering=0) as f:
        for i, z in enumerate(planes):
            f.seek(offset + (int(z) * ny + span.start) * row_bytes)
            target = memoryview(out[i]).cast("B")
            filled = 0
            while filled < len(target):
                n = f.readinto(target[filled:])
                if not n:
                    raise FormatError(f"{path}: data block ends early, at plane {z}")
                filled += n
    return out


def _advise_random(view: _Mapped) -> None:
    """No read-around: a scattered selection pages in only the pages it touches."""
    if hasattr(mmap, "MADV_RANDOM"):  # not on Windows
        view.mm.madvise(mmap.MADV_RANDOM)


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

    Examples
    --------
    >>> import tempfile, pathlib, mrcfile, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.mrc"
    >>> mrcfile.write(p, np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    >>> a = MrcArray(str(p), 1024, (2, 3, 4), np.dtype("<i2"))
    >>> a[1, :, 2].tolist()
    [14, 18, 22]
    """

    __slots__ = ("dtype", "file_dtype", "file_shape", "ndim", "offset", "path", "shape", "squeeze")

    def __init__(
        self,
        path: str,
        offset: int,
        file_shape: tuple[int, int, int],
        file_dtype: np.dtype[Any],
        *,
        squeeze: bool = False,
    ) -> None:
        self.path = str(path)
        self.offset = int(offset)
        self.file_shape = tuple(int(n) for n in file_shape)
        self.file_dtype = np.dtype(file_dtype)
        self.dtype = self.file_dtype.newbyteorder("=")
        self.squeeze = bool(squeeze)
        self.shape = self.file_shape[1:] if squeeze else self.file_shape
        self.ndim = len(self.shape)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        stat = os.stat(self.path)
        return ("cryoxr.MrcArray", self.path, stat.st_mtime_ns, stat.st_size, self.offset,
                self.file_shape, self.file_dtype.str, self.squeeze)  # fmt: skip

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
            out = _map_planes(self.path, self.offset, (lo, hi), self.file_shape, self.file_dtype)[zrel]
        elif _whole_rows(basic, nx):
            # runs of whole rows: plain reads into the result, one per plane. (A memory map
            # would map whole page-cache folios around them: several times the bytes read
            # would count as this process's memory.)
            planes = np.arange(lo, hi)[zrel]
            out = _read_rows(
                self.path, self.offset, np.atleast_1d(planes), basic[1], self.file_shape, self.file_dtype
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
            with _mapped(self.path, self.offset, (lo, hi), self.file_shape, self.file_dtype) as view:
                _advise_random(view)
                out = np.array(view[tuple(basic)], dtype=self.dtype)  # a copy: the map closes
        dropped = [i for i, k in enumerate(basic) if isinstance(k, int | np.integer)]
        for axis, rel in arrays:
            out = np.take(out, rel, axis=axis - sum(d < axis for d in dropped))
        return out

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


# ----------------------------------------------------------------------------------------
# header
# ----------------------------------------------------------------------------------------
def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _read_header(path: Path, size: int) -> tuple[np.void, ByteOrder]:
    """The header record (in the file's byte order) and that byte order."""
    if size < HEADER_BYTES:
        raise FormatError(f"{path}: truncated header: the file has {size} bytes, an MRC header has 1024")
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    little = np.frombuffer(raw, HEADER_DTYPE.newbyteorder("<"), count=1)[0]
    order = BYTE_ORDER_BY_STAMP.get(int(little["machst"][0]))
    if order is None:
        # unknown stamp (old writers): take the byte order in which the mode is valid
        big = np.frombuffer(raw, HEADER_DTYPE.newbyteorder(">"), count=1)[0]
        order = "<" if int(little["mode"]) in MRC_MODES or int(big["mode"]) not in MRC_MODES else ">"
    return np.frombuffer(raw, HEADER_DTYPE.newbyteorder(order), count=1)[0], order


def _voxel_size(
    path: Path, header: np.void, spatial: str, *, pixel_spacing: float | None, allow_anisotropic: bool
) -> float:
    """Isotropic voxel size in Å from ``cella / (mx, my, mz)`` over the ``spatial`` axes."""
    if pixel_spacing is not None:
        return float(pixel_spacing)
    sizes: dict[str, float] = {}
    for axis in spatial:
        cell = float(header["cella"][axis])
        m = int(header[f"m{axis}"])
        if m <= 0:
            raise FormatError(f"{path}: header field m{axis} must be > 0 to give a voxel size, found {m}")
        # cella is float32 (~7.2 significant digits): round the quotient to 7 of them,
        # so that 12509.44 / 928 gives 13.48 and not 13.480000463
        value = float(f"{cell / m:.7g}")
        if not math.isfinite(value) or value <= 0:
            raise FormatError(
                f"{path}: header field cella.{axis} gives voxel size {value} Å (cella.{axis} = {cell}, "
                f"m{axis} = {m}); expected a positive finite number (pass pixel_spacing= to override)"
            )
        sizes[axis] = value
    # np.allclose(rtol=1e-5, atol=0) on three floats, without numpy's fixed cost
    if any(abs(v - sizes["x"]) > 1e-5 * abs(sizes["x"]) for v in sizes.values()):
        text = ", ".join(f"{a}: {v:g}" for a, v in sizes.items())
        if not allow_anisotropic:
            raise FormatError(
                f"{path}: header field cella: voxel size is anisotropic ({text} Å); cryoxr images "
                "are isotropic: pass allow_anisotropic=True to keep the x spacing"
            )
        warnings.warn(f"{path}: anisotropic voxel size ({text} Å); keeping x: {sizes['x']:g} Å", stacklevel=3)
    return sizes["x"]


def _header_attrs(header: np.void, extended: bytes) -> dict[str, Any]:
    """The header fields cryoxr does not model, raw and JSON-friendly."""
    nlabl = max(0, min(int(header["nlabl"]), 10))
    attrs: dict[str, Any] = {
        "mrc_origin": [float(header["origin"][a]) for a in "xyz"],
        "mrc_nstart": [int(header[f"n{a}start"]) for a in "xyz"],
        "mrc_cella": [float(header["cella"][a]) for a in "xyz"],
        "mrc_sampling": [int(header[f"m{a}"]) for a in "xyz"],
        "mrc_cellb": [float(header["cellb"][a]) for a in ("alpha", "beta", "gamma")],
        "mrc_ispg": int(header["ispg"]),
        "mrc_nversion": int(header["nversion"]),
        "mrc_exttyp": bytes(header["exttyp"]).decode("latin-1"),
        "mrc_labels": [bytes(label).decode("latin-1") for label in header["label"][:nlabl]],
        "mrc_stats": [float(header[f]) for f in ("dmin", "dmax", "dmean", "rms")],
    }
    if extended:
        attrs["mrc_extended_header"] = _b64(extended)
    for field in ("extra1", "extra2"):
        raw = bytes(header[field])
        if any(raw):
            attrs[f"mrc_{field}"] = _b64(raw)
    return attrs


def _auto_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Slabs of whole planes, about 64 MiB (at least one plane)."""
    nz, ny, nx = shape
    return max(1, min(nz, AUTO_CHUNK_BYTES // (ny * nx * itemsize))), ny, nx


# ----------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------
def read_mrc(
    path: str | os.PathLike[str],
    *,
    chunks: Chunks = "auto",
    experiment_id: str | None = None,
    pixel_spacing: float | None = None,
    allow_anisotropic: bool = False,
) -> Image:
    """Open an MRC file lazily as a Micrograph, Tomogram or stack Image.

    Only the header is read. The kind comes from the header: ``ispg`` 0 with ``nz > 1``
    (or the ``.mrcs`` suffix) is a stack of 2D images, dims ``("image", "y", "x")``;
    ``ispg`` 1 or 401-630 with ``nz > 1`` is a volume ``("z", "y", "x")``; ``nz == 1``
    is a 2D micrograph. ``mapc/mapr/maps`` other than 1, 2, 3 are honoured by a lazy
    transpose of volumes. Every MRC mode mrcfile supports (0, 1, 2, 4, 6, 12) in either
    byte order is read, into native byte order. The pixel spacing is ``cella / mx``
    (CONVENTIONS 1.3) rounded to the 7 significant digits a float32 ``cella`` holds;
    the other header fields are kept raw in ``attrs["mrc_*"]`` (module docstring).

    Parameters
    ----------
    path
        The file (any suffix).
    chunks
        ``"auto"`` (see the module docstring), any dask chunks, or None for a DataArray
        lazily indexed by xarray without dask (fastest for single slices).
    experiment_id
        Name of the experiment; default the file name without its suffix.
    pixel_spacing
        Å per pixel, overriding the header (for files whose ``cella`` is unset).
    allow_anisotropic
        Accept different voxel sizes along x, y (and z): keep the x size and warn.

    Returns
    -------
    Image
        :class:`~cryoxr.Tomogram`, :class:`~cryoxr.Micrograph` or a stack
        :class:`~cryoxr.Image`; raw header fields in ``data.attrs["mrc_*"]``.

    Raises
    ------
    CryoxrFileNotFoundError
        No such file.
    FormatError
        Truncated header or data block, unknown mode, non-positive sizes, NaN or
        anisotropic voxel size; the message names the file and the header field.
    UnknownFormatError
        A volume stack (``ispg`` 401-630 with ``mz < nz``), which cryoxr does not model.

    Notes
    -----
    Values of whole-plane selections can be read-only views of the file (as with
    ``mrcfile.mmap``): copy them before modifying them in place. Replacing the file with
    :func:`write_mrc` is safe while such views live (the old file stays mapped).

    Examples
    --------
    >>> import tempfile, pathlib, mrcfile, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "tilts.mrcs"
    >>> with mrcfile.new(p) as mrc:
    ...     mrc.set_data(np.zeros((41, 8, 8), np.float16))
    ...     mrc.voxel_size = 1.35
    >>> ts = read_mrc(p)
    >>> ts.stack, ts.dims, ts.data.dtype.name, ts.pixel_spacing
    (True, ('image', 'y', 'x'), 'float16', 1.35)
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CryoxrFileNotFoundError(f"{path}: no such MRC file") from None
    header, order = _read_header(path, size)
    mode = int(header["mode"])
    if mode not in MRC_MODES:
        raise FormatError(
            f"{path}: header field mode: unknown or unsupported MRC mode {mode}; "
            f"cryoxr reads modes {sorted(MRC_MODES)}"
        )
    nx, ny, nz = (int(header[f"n{a}"]) for a in "xyz")
    for axis, n in zip("xyz", (nx, ny, nz), strict=True):
        if n <= 0:
            raise FormatError(f"{path}: header field n{axis} must be > 0, found {n}")
    nsymbt = int(header["nsymbt"])
    if nsymbt < 0:
        raise FormatError(f"{path}: header field nsymbt must be >= 0, found {nsymbt}")
    file_dtype = MRC_MODES[mode].newbyteorder(order)
    offset = HEADER_BYTES + nsymbt
    nbytes = nx * ny * nz * file_dtype.itemsize
    if size < offset + nbytes:
        raise FormatError(
            f"{path}: data block truncated: header fields nx, ny, nz, mode, nsymbt = {nx}, {ny}, {nz}, "
            f"{mode}, {nsymbt} need {offset + nbytes} bytes, the file has {size}"
        )
    mapcrs = tuple(int(header[f]) for f in ("mapc", "mapr", "maps"))
    if sorted(mapcrs) != [1, 2, 3]:
        raise FormatError(
            f"{path}: header fields mapc, mapr, maps must be a permutation of 1, 2, 3, found {mapcrs}"
        )
    ispg = int(header["ispg"])
    stack = path.suffix.lower() in STACK_SUFFIXES or (ispg == IMAGE_STACK_ISPG and nz > 1)
    if ispg in VOLUME_STACK_ISPG and int(header["mz"]) not in (0, nz) and not stack:
        raise UnknownFormatError(
            f"{path}: header fields ispg = {ispg}, mz = {int(header['mz'])}, nz = {nz}: a stack of volumes, "
            "which cryoxr does not model (read it with mrcfile and split it into Tomograms)"
        )
    spatial_ndim = 2 if (stack or nz == 1) else 3
    if stack and mapcrs != (1, 2, 3):
        raise FormatError(
            f"{path}: header fields mapc, mapr, maps must be 1, 2, 3 for an image stack, found {mapcrs}"
        )
    spacing = _voxel_size(
        path, header, "xyz" if spatial_ndim == 3 else "xy",
        pixel_spacing=pixel_spacing, allow_anisotropic=allow_anisotropic,
    )  # fmt: skip
    extended = b""
    if nsymbt:
        with open(path, "rb") as f:
            f.seek(HEADER_BYTES)
            extended = f.read(nsymbt)
    attrs = _header_attrs(header, extended)
    array = MrcArray(str(path), offset, (nz, ny, nx), file_dtype, squeeze=spatial_ndim == 2 and not stack)
    # axes of the file array (sections, rows, columns) and the transpose to (z, y, x)
    file_axes = tuple(AXIS_BY_MAP[m] for m in reversed(mapcrs))
    order_zyx = tuple(file_axes.index(a) for a in "zyx") if spatial_ndim == 3 else None
    cls = IMAGE_CLASS[(spatial_ndim, stack)]
    experiment_id = experiment_id if experiment_id is not None else path.name.split(".")[0] or path.name
    if chunks is None:
        dims = IMAGE_DIMS[(array.ndim, stack)]
        var = xr.Variable(
            dims if order_zyx is None else file_axes, indexing.LazilyIndexedArray(_MrcBackendArray(array))
        )
        var = var.transpose(*dims)
        data = xr.DataArray(var, coords=image_coords(var.shape, dims, spacing), name=experiment_id)
        data.attrs.update(attrs, experiment_id=experiment_id, pixel_spacing=spacing, source=str(path))
        return cls(data)
    source: Any = array
    if order_zyx is not None and order_zyx != (0, 1, 2):
        source = da.from_array(
            array, chunks=_auto_chunks(array.shape, file_dtype.itemsize), asarray=False, lock=False,
            meta=np.empty((0, 0, 0), array.dtype),
        ).transpose(order_zyx)  # fmt: skip
    elif chunks == "auto" and spatial_ndim == 3 and not stack:
        chunks = _auto_chunks(array.shape, file_dtype.itemsize)
    image = cls.from_array(
        source,
        pixel_spacing=spacing,
        experiment_id=experiment_id,
        source=str(path),
        stack=stack,
        chunks=chunks,
        attrs=attrs,
    )
    if source is array:
        _remember_source(image.data.data, array)
    return image


# ----------------------------------------------------------------------------------------
# re-reading at other chunks
# ----------------------------------------------------------------------------------------
#: dask name of an unmodified read -> its MrcArray (names are tokens of file, mtime, chunks)
_SOURCES: OrderedDict[str, MrcArray] = OrderedDict()
_SOURCES_KEPT = 256


def _remember_source(darr: da.Array, array: MrcArray) -> None:
    _SOURCES[darr.name] = array
    _SOURCES.move_to_end(darr.name)
    while len(_SOURCES) > _SOURCES_KEPT:
        _SOURCES.popitem(last=False)


def rechunk_from_file(darr: da.Array, chunks: tuple[int, ...]) -> da.Array:
    """``darr.rechunk(chunks)``, but read afresh from the file when ``darr`` is an unmodified read.

    Merging chunks (whole-plane slabs into 128-cubes, say) makes dask hold every input
    chunk an output needs: a band of planes. When ``darr`` is exactly what
    :func:`read_mrc` returned (same dask name, so same file, mtime and chunks), the file is
    instead read again in blocks of whole rows, ``chunks`` deep and high, each split
    into the requested chunks, so memory stays at a few such blocks. Any other array is
    rechunked by dask.

    Parameters
    ----------
    darr
        A dask array.
    chunks
        The wanted chunk shape.

    Returns
    -------
    dask.array.Array
        The same values, chunked as asked.

    Examples
    --------
    >>> import tempfile, pathlib, mrcfile, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.mrc"
    >>> mrcfile.write(p, np.arange(64, dtype=np.float32).reshape(4, 4, 4), voxel_size=1.0)
    >>> tomo = read_mrc(p)
    >>> rechunk_from_file(tomo.data.data, (2, 2, 2)).chunks
    ((2, 2), (2, 2), (2, 2))
    """
    array = _SOURCES.get(darr.name)
    if array is None or array.shape != darr.shape:
        return darr.rechunk(chunks)
    rows = (*chunks[:-1], array.shape[-1])
    fresh = da.from_array(
        array, chunks=rows, asarray=False, lock=False, meta=np.empty((0,) * darr.ndim, darr.dtype)
    )
    return fresh.rechunk(chunks)


# ----------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------
def _attr_array(attrs: Mapping[str, Any], key: str, default: Any, dtype: Any) -> np.ndarray:
    value = attrs.get(key, default)
    try:
        out = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise InvalidValueError(f"write_mrc: attr {key!r} must be 3 numbers, found {value!r}") from None
    if out.shape != (3,):
        raise InvalidValueError(f"write_mrc: attr {key!r} must be 3 numbers, found {value!r}")
    return out


def _attr_bytes(attrs: Mapping[str, Any], key: str) -> bytes:
    value = attrs.get(key, "")
    try:
        return base64.b64decode(value, validate=True) if value else b""
    except (TypeError, ValueError):
        raise InvalidValueError(f"write_mrc: attr {key!r} must be base64 text, found {value!r:.60}") from None


def _build_header(
    data: xr.DataArray, mode: int, file_shape: tuple[int, int, int], extended: bytes
) -> np.ndarray:
    """A little-endian header from the image, restoring the raw ``mrc_*`` attrs."""
    attrs = data.attrs
    stack = data.dims[0] == "image"
    volume = data.ndim == 3 and not stack
    nz, ny, nx = file_shape
    spacing = float(attrs["pixel_spacing"])
    h = np.zeros((), HEADER_DTYPE.newbyteorder("<"))
    h["nx"], h["ny"], h["nz"], h["mode"] = nx, ny, nz, mode
    standard = np.array([nx, ny, nz if volume else 1])
    sampling = _attr_array(attrs, "mrc_sampling", standard, np.int32)
    cella = _attr_array(attrs, "mrc_cella", standard * spacing, np.float32)
    # raw cell and sampling only while they still give this image's voxel size
    checked = 3 if volume else 2
    with np.errstate(divide="ignore", invalid="ignore"):
        raw_spacing = cella[:checked].astype(np.float64) / sampling[:checked]
    if not (np.all(sampling[:checked] > 0) and np.allclose(raw_spacing, spacing, rtol=1e-6, atol=0)):
        sampling, cella = standard, (standard * spacing).astype(np.float32)
    for i, axis in enumerate("xyz"):
        h[f"m{axis}"] = sampling[i]
        h["cella"][axis] = cella[i]
        h[f"n{axis}start"] = _attr_array(attrs, "mrc_nstart", (0, 0, 0), np.int32)[i]
        h["origin"][axis] = _attr_array(attrs, "mrc_origin", (0, 0, 0), np.float32)[i]
    for i, angle in enumerate(("alpha", "beta", "gamma")):
        h["cellb"][angle] = _attr_array(attrs, "mrc_cellb", (90, 90, 90), np.float32)[i]
    h["mapc"], h["mapr"], h["maps"] = 1, 2, 3
    ispg = int(attrs.get("mrc_ispg", VOLUME_ISPG if volume else IMAGE_STACK_ISPG))
    if stack:
        ispg = IMAGE_STACK_ISPG
    elif volume and ispg == IMAGE_STACK_ISPG:
        ispg = VOLUME_ISPG
    h["ispg"] = ispg
    h["nsymbt"] = len(extended)
    h["exttyp"] = str(attrs.get("mrc_exttyp", "")).encode("latin-1")
    h["nversion"] = int(attrs.get("mrc_nversion", NVERSION)) or NVERSION
    for field in ("extra1", "extra2"):
        raw = _attr_bytes(attrs, f"mrc_{field}")
        h[field] = raw.ljust(h[field].dtype.itemsize, b"\0")[: h[field].dtype.itemsize]
    h["map"] = b"MAP "
    h["machst"] = LITTLE_ENDIAN_STAMP
    labels = [str(label).encode("latin-1")[:80] for label in list(attrs.get("mrc_labels", []))[:10]]
    h["nlabl"] = len(labels)
    for i, label in enumerate(labels):
        h["label"][i] = label
    return h


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
) -> Path:
    """Write an image to an MRC file, streaming chunk by chunk.

    Each dask chunk is computed and written into a memory map of only the planes it
    covers, so peak memory is a few chunks, never the whole volume. The file is written to
    a temporary sibling and renamed when complete (:func:`cryoxr.io._atomic.atomic_path`):
    a failed write leaves no partial file and an existing target untouched. The raw
    ``mrc_*`` attrs (see the module docstring) are restored; ``cella`` / ``mx, my, mz``
    only while they still give the image's pixel spacing, otherwise they are rewritten
    as ``pixel_spacing * shape``. Statistics are recomputed in the same pass.

    Parameters
    ----------
    image
        An Image (or image DataArray).
    path
        Destination file.
    overwrite
        Replace an existing file.
    mode
        MRC mode to write; default from the dtype (float32 -> 2, float16 -> 12, int8 -> 0,
        int16 -> 1, uint16 and uint8 -> 6, complex64 -> 4; float64 and complex128 are
        narrowed to 2 and 4). The data are cast with numpy ``astype`` (no rounding).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    FileExistsNoOverwriteError
        ``path`` exists and ``overwrite`` is False.
    InvalidValueError
        A dtype or mode MRC cannot hold, or malformed ``mrc_*`` attrs.
    WriteError
        The disk refused; nothing is left behind.

    Examples
    --------
    >>> import tempfile, pathlib, mrcfile, numpy as np
    >>> from cryoxr import Micrograph
    >>> m = Micrograph.from_array(np.eye(4, dtype=np.uint8), pixel_spacing=1.0, experiment_id="m")
    >>> p = write_mrc(m, pathlib.Path(tempfile.mkdtemp()) / "m.mrc")
    >>> with mrcfile.open(p) as mrc:
    ...     int(mrc.header.mode), mrc.data.dtype.name, mrc.data.shape
    (6, 'uint16', (4, 4))
    """
    data = validate_image(image)
    if mode is None:
        key = f"{data.dtype.kind}{data.dtype.itemsize}"
        if key not in WRITE_MODE_BY_DTYPE:
            raise InvalidValueError(
                f"write_mrc: {path}: MRC cannot hold dtype {data.dtype}; pass mode= one of {sorted(MRC_MODES)} "
                "to cast, or cast the image first"
            )
        mode = WRITE_MODE_BY_DTYPE[key]
    elif mode not in MRC_MODES:
        raise InvalidValueError(f"write_mrc: {path}: mode must be one of {sorted(MRC_MODES)}, found {mode!r}")
    file_dtype = MRC_MODES[mode].newbyteorder("<")
    darr = (
        data.data if isinstance(data.data, da.Array) else da.from_array(np.asarray(data.data), chunks="auto")
    )
    if darr.ndim == 2:
        darr = darr[np.newaxis]
    # blocks of whole rows, so that each block is one contiguous write per plane
    darr = darr.astype(file_dtype.newbyteorder("=")).rechunk({darr.ndim - 1: -1})
    file_shape = tuple(int(n) for n in darr.shape)
    extended = _attr_bytes(data.attrs, "mrc_extended_header")
    header = _build_header(data, mode, file_shape, extended)  # type: ignore[arg-type]
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
