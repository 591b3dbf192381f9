"""Reading MRC files lazily into an Image (:func:`read_mrc`), and re-reading them at other chunks.

Only the header is parsed (:mod:`cryoxr.io.mrc.header`); the voxels stay on disk behind
an :class:`~cryoxr.io.mrc.array.MrcArray` wrapped in dask, or lazily indexed by xarray.

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
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from xarray.core import indexing

from cryoxr.errors import FormatError, UnknownFormatError
from cryoxr.image import IMAGE_DIMS, Chunks, Image, image_coords
from cryoxr.io._image_read import IMAGE_CLASS
from cryoxr.io._paths import open_file
from cryoxr.io.mrc.array import MrcArray, _MrcBackendArray
from cryoxr.io.mrc.compressed import COMPRESSED_SUFFIXES, compression_of, read_block, read_compressed
from cryoxr.io.mrc.header import (
    AXIS_BY_MAP,
    HEADER_BYTES,
    IMAGE_STACK_ISPG,
    MRC_MODES,
    VOLUME_STACK_ISPG,
    ByteOrder,
    _header_attrs,
    _read_header,
    _voxel_size,
    file_dtype,
)

__all__ = ["AUTO_CHUNK_BYTES", "MRC_SUFFIXES", "STACK_SUFFIXES", "read_mrc", "rechunk_from_file"]

#: Suffixes that :func:`cryoxr.io.images.open_image` reads as MRC; ``.mrcs`` is a stack.
MRC_SUFFIXES: tuple[str, ...] = (".mrc", ".mrcs", ".st", ".ali", ".rec", ".map")
STACK_SUFFIXES: frozenset[str] = frozenset({".mrcs"})

#: target bytes of one auto chunk of a volume, and its z depth
AUTO_CHUNK_BYTES = 64 * 2**20


def _auto_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Slabs of whole planes, about 64 MiB (at least one plane)."""
    nz, ny, nx = shape
    return max(1, min(nz, AUTO_CHUNK_BYTES // (ny * nx * itemsize))), ny, nx


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
    byte order is read, into native byte order; mode 0 is int8, or uint8 when IMOD's stamp
    says unsigned (:mod:`cryoxr.io.mrc.header`). The pixel spacing is ``cella / mx``
    (docs/CONVENTIONS.md §10) rounded to the 7 significant digits a float32 ``cella`` holds;
    the other header fields are kept raw in ``attrs["mrc_*"]`` (:mod:`cryoxr.io.mrc.header`).
    gzip- and bzip2-compressed files (recognised by their first bytes, whatever the
    suffix) are decompressed into memory when opened (:mod:`cryoxr.io.mrc.compressed`);
    only uncompressed files are read lazily.

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
        No such file, or not a regular file (a folder, a named pipe, a device: refused at
        once, never waited on).
    FormatError
        Truncated header or data block, unknown mode, non-positive sizes, NaN or
        anisotropic voxel size; the message names the file and the header field. When
        values are computed: the file changed (truncated, rewritten) since it was opened.
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
    opened = _open_mrc(
        Path(path),
        experiment_id=experiment_id,
        pixel_spacing=pixel_spacing,
        allow_anisotropic=allow_anisotropic,
    )
    if chunks is None:
        var, coords = _lazy_variable(opened)
        return opened.cls(xr.DataArray(var, coords=coords, name=opened.experiment_id))  # attrs on var
    array, layout, order_zyx, spatial_ndim, stack = (
        opened.array,
        opened.layout,
        opened.order_zyx,
        opened.layout.spatial_ndim,
        opened.layout.stack,
    )
    cls, spacing, attrs, experiment_id, path = (
        opened.cls,
        opened.spacing,
        opened.attrs,
        opened.experiment_id,
        opened.path,
    )
    source: Any = array
    if order_zyx is not None and order_zyx != (0, 1, 2):
        source = da.from_array(
            array, chunks=_auto_chunks(array.shape, layout.dtype.itemsize), asarray=False, lock=False,
            meta=np.empty((0, 0, 0), array.dtype),
        ).transpose(order_zyx)  # fmt: skip
    elif chunks == "auto" and spatial_ndim == 3 and not stack:
        chunks = _auto_chunks(array.shape, layout.dtype.itemsize)
    image = cls.from_array(
        source,
        pixel_spacing=spacing,
        experiment_id=experiment_id,
        source=str(path),
        stack=stack,
        chunks=chunks,
        attrs=attrs,
    )
    if isinstance(source, MrcArray):
        _remember_source(image.data.data, source)
    return image


@dataclass(frozen=True)
class _Opened:
    """An MRC file with its header parsed and checked, and its voxels not yet read."""

    path: Path
    cls: type[Image]
    array: MrcArray | np.ndarray  # the file's array (sections, rows, columns)
    layout: _Layout
    spacing: float
    attrs: dict[str, Any]
    experiment_id: str
    file_axes: tuple[str, ...]
    order_zyx: tuple[int, ...] | None  # the transpose to (z, y, x) of a volume


def _open_mrc(
    path: Path, *, experiment_id: str | None, pixel_spacing: float | None, allow_anisotropic: bool
) -> _Opened:
    """Parse and check the header (one open, one ``fstat``); map nothing, read no voxels."""
    handle, st = open_file(path, what="MRC")  # a folder, a FIFO, a device: refused at once
    with handle:
        head = handle.read(HEADER_BYTES)
        compression = compression_of(head)
        stream = None
        if compression is not None:
            handle.seek(0)
            stream, head = read_compressed(handle, path, compression)
        header, order = _read_header(path, head)
        layout = _layout(path, header, order, None if compression else st.st_size)
        spatial_ndim, stack = layout.spatial_ndim, layout.stack
        spacing = _voxel_size(
            path, header, "xyz" if spatial_ndim == 3 else "xy",
            pixel_spacing=pixel_spacing, allow_anisotropic=allow_anisotropic,
        )  # fmt: skip
        squeeze = spatial_ndim == 2 and not stack
        array: MrcArray | np.ndarray
        if compression is None or stream is None:  # an uncompressed file: read lazily
            handle.seek(HEADER_BYTES)
            extended = handle.read(layout.nsymbt)
            array = MrcArray(
                str(path), layout.offset, layout.shape, layout.dtype, squeeze=squeeze,
                opened=(st.st_size, st.st_mtime_ns),
            )  # fmt: skip
        else:
            with stream:
                extended = bytes(read_block(stream, path, compression, layout.nsymbt, "extended header"))
                block = read_block(stream, path, compression, layout.nbytes, "data block")
            array = np.frombuffer(block, layout.dtype).reshape(layout.shape)
            array = array.astype(layout.dtype.newbyteorder("="), copy=False)
            array = array[0] if squeeze else array
    attrs = _header_attrs(header, extended)
    mapcrs = layout.mapcrs
    # axes of the file array (sections, rows, columns) and the transpose to (z, y, x)
    file_axes = tuple(AXIS_BY_MAP[m] for m in reversed(mapcrs))
    order_zyx = tuple(file_axes.index(a) for a in "zyx") if spatial_ndim == 3 else None
    if order_zyx is not None and order_zyx != (0, 1, 2):
        # nxstart, nystart, nzstart belong to the columns, rows, sections: permute them with the data
        starts = dict(zip((AXIS_BY_MAP[m] for m in mapcrs), attrs["mrc_nstart"], strict=True))
        attrs["mrc_nstart"] = [starts[a] for a in "xyz"]
    return _Opened(
        path,
        IMAGE_CLASS[(spatial_ndim, stack)],
        array,
        layout,
        spacing,
        attrs,
        experiment_id if experiment_id is not None else path.name.split(".")[0] or path.name,
        file_axes,
        order_zyx,
    )


def _lazy_variable(opened: _Opened) -> tuple[xr.Variable, xr.Coordinates]:
    """The ``chunks=None`` variable (lazily indexed by xarray, no dask; the image attrs on
    it) and its coordinates."""
    array, layout = opened.array, opened.layout
    stack = layout.stack
    dims = IMAGE_DIMS[(array.ndim, stack)]
    lazy = indexing.LazilyIndexedArray(_MrcBackendArray(array)) if isinstance(array, MrcArray) else array
    attrs = {
        **opened.attrs,
        "experiment_id": opened.experiment_id,
        "pixel_spacing": opened.spacing,
        "source": str(opened.path),
    }
    order = opened.order_zyx
    if order is None or order == (0, 1, 2):
        var = xr.Variable(dims, lazy, attrs=attrs)
        # what xarray's ``open_dataarray(..., chunks=...)`` chunks along: read_mrc's own choice
        preferred = _auto_chunks(array.shape, layout.dtype.itemsize) if len(dims) == 3 else array.shape
        preferred = (1, *preferred[1:]) if stack else preferred
        var.encoding["preferred_chunks"] = dict(zip(dims, preferred, strict=True))
    else:
        var = xr.Variable(opened.file_axes, lazy, attrs=attrs).transpose(*dims)
    return var, image_coords(var.shape, dims, opened.spacing)


def mrc_dataset(path: str | os.PathLike[str], *, experiment_id: str | None = None) -> xr.Dataset:
    """The ``chunks=None`` image of :func:`read_mrc` as a Dataset of one variable named
    after the experiment, for the xarray engine: the same values, coords and attrs,
    built straight (no Image wrapper to validate what was just built)."""
    opened = _open_mrc(Path(path), experiment_id=experiment_id, pixel_spacing=None, allow_anisotropic=False)
    var, coords = _lazy_variable(opened)
    return xr.Dataset({opened.experiment_id: var}, coords=coords, attrs=dict(var.attrs))


@dataclass(frozen=True)
class _Layout:
    """Where the voxels are and what they are, from a checked header."""

    shape: tuple[int, int, int]
    dtype: np.dtype[Any]
    nsymbt: int
    mapcrs: tuple[int, int, int]
    spatial_ndim: int
    stack: bool

    @property
    def offset(self) -> int:
        return HEADER_BYTES + self.nsymbt

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _layout(path: Path, header: np.void, order: ByteOrder, size: int | None) -> _Layout:
    """Check the header fields that place the data (``size``: the file's, None for a stream)."""
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
    dtype = file_dtype(header, order)
    nbytes = nx * ny * nz * dtype.itemsize
    if size is not None and size < HEADER_BYTES + nsymbt + nbytes:
        raise FormatError(
            f"{path}: data block truncated: header fields nx, ny, nz, mode, nsymbt = {nx}, {ny}, {nz}, "
            f"{mode}, {nsymbt} need {HEADER_BYTES + nsymbt + nbytes} bytes, the file has {size}"
        )
    mapcrs = tuple(int(header[f]) for f in ("mapc", "mapr", "maps"))
    if sorted(mapcrs) != [1, 2, 3]:
        raise FormatError(
            f"{path}: header fields mapc, mapr, maps must be a permutation of 1, 2, 3, found {mapcrs}"
        )
    ispg = int(header["ispg"])
    name = Path(path.stem) if path.suffix.lower() in COMPRESSED_SUFFIXES else path
    stack = name.suffix.lower() in STACK_SUFFIXES or (ispg == IMAGE_STACK_ISPG and nz > 1)
    if ispg in VOLUME_STACK_ISPG and int(header["mz"]) not in (0, nz) and not stack:
        raise UnknownFormatError(
            f"{path}: header fields ispg = {ispg}, mz = {int(header['mz'])}, nz = {nz}: a stack of volumes, "
            "which cryoxr does not model (read it with mrcfile and split it into Tomograms)"
        )
    if stack and mapcrs != (1, 2, 3):
        raise FormatError(
            f"{path}: header fields mapc, mapr, maps must be 1, 2, 3 for an image stack, found {mapcrs}"
        )
    spatial_ndim = 2 if (stack or nz == 1) else 3
    return _Layout((nz, ny, nx), dtype, nsymbt, mapcrs, spatial_ndim, stack)  # type: ignore[arg-type]


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
