"""Reading OME-Zarr images lazily: one level (:func:`read_ome_zarr`) or the pyramid.

Accepts what the CryoET Data Portal and ome-zarr-py write (0.4, zarr v2) and OME-NGFF
0.5 (zarr v3); the metadata are read and checked by :mod:`cryoxr.io.ome_zarr.metadata`.
A level's ``translation`` is kept in ``attrs["ome_translation"]`` (Å, one value per dim)
and image coords stay ``index * pixel_spacing`` (DESIGN). Leading time / channel axes of
length 1 are dropped. Chunk bytes the codecs cannot decode are reported as
:class:`~cryoxr.errors.FormatError` when the chunk is read. A store given as a local path
is read through :class:`~cryoxr.io.ome_zarr._store.GuardedStore`: no link out of the store
is followed (unless ``allow_links_outside=True``), no pipe or device is opened, and no
metadata or chunk file larger than it can be is read.

A URL (``https://``, ``http://``, ``s3://``, any fsspec protocol; the optional extra
``pip install 'cryoxr[remote]'``) is read through fsspec (:func:`cryoxr.io._fs.zarr_store`),
chunk by chunk: opening reads only the metadata documents (``zarr.json``, or ``.zgroup`` /
``.zattrs`` / ``.zarray``), a selection reads only the chunks it touches. A URL with nothing
behind it (a 404, no zarr metadata) or a host that cannot be reached is a
:class:`~cryoxr.errors.CryoxrFileNotFoundError` naming the URL, also when a chunk is read.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
import zarr.errors
from dask.base import tokenize
from xarray.backends import BackendArray
from xarray.core import indexing

from cryoxr.errors import CryoxrError, CryoxrFileNotFoundError, FormatError, InvalidValueError
from cryoxr.image import IMAGE_DIMS, SPATIAL_DIMS, Chunks, Image, image_coords
from cryoxr.io._fs import client_errors, is_url, remote_errors, remote_filesystem, zarr_store
from cryoxr.io._image_read import IMAGE_CLASS
from cryoxr.io.mrc.array import NanCheckedArray
from cryoxr.io.ome_zarr._store import GuardedStore
from cryoxr.io.ome_zarr.metadata import UNIT_TO_ANGSTROM, _axes, _level_geometry, _multiscale, _spacing

__all__ = [
    "CHUNK_DECODE_ERRORS",
    "MAX_AXIS_LENGTH",
    "METADATA_ERRORS",
    "OME_ZARR_SUFFIXES",
    "open_ome_zarr_pyramid",
    "read_ome_zarr",
]

#: Suffixes that :func:`cryoxr.io.images.open_image` reads as OME-Zarr.
OME_ZARR_SUFFIXES: tuple[str, ...] = (".ome.zarr", ".zarr")
#: longest axis read (2**24 pixels: its coordinates alone take 128 MiB); longer is a broken header
MAX_AXIS_LENGTH = 2**24
#: what zarr and numcodecs raise on chunk bytes their codecs cannot decode (zstd / blosc:
#: RuntimeError; a chunk of the wrong size or a bad bytes codec: ValueError; gzip: zlib.error)
CHUNK_DECODE_ERRORS: tuple[type[Exception], ...] = (RuntimeError, ValueError, TypeError, zlib.error)
#: what zarr raises on metadata documents (zarr.json, .zarray, .zgroup, .zattrs) it cannot
#: parse: broken JSON or non-UTF-8 bytes (ValueError), wrong types or missing keys
METADATA_ERRORS: tuple[type[Exception], ...] = (
    zarr.errors.BaseZarrError, ValueError, TypeError, KeyError, FileNotFoundError, RuntimeWarning,
)  # fmt: skip


class _ZarrChunks:
    """A zarr array whose chunk-decoding failures are :class:`FormatError` naming store and array.

    Picklable (it holds the zarr array and two strings); dask and xarray index it as they
    would the zarr array. Corrupt chunk bytes can only show when a chunk is read, so this
    is where they are reported.
    """

    __slots__ = ("array", "dtype", "ndim", "path", "remote", "shape", "where")

    def __init__(self, array: Any, where: str, path: str, remote: bool = False) -> None:
        self.array, self.where, self.path, self.remote = array, where, path, remote
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            # NaN-skipping reductions (xarray's default) try the plain one first
            return np.asarray(self.array[key]).view(NanCheckedArray)
        except CryoxrError:
            raise  # the store refused a member (a link leaving the store, a pipe, a size)
        except CHUNK_DECODE_ERRORS as err:
            raise FormatError(
                f"{self.where}: array {self.path!r}, chunks under selection {key}: expected chunk data "
                f"that the array's codecs decode, found {type(err).__name__}: {err}"
            ) from err
        except Exception as err:
            if not (self.remote and isinstance(err, client_errors())):
                raise
            raise CryoxrFileNotFoundError(
                f"{self.where}: array {self.path!r}, chunks under selection {key}: could not be read: "
                f"{type(err).__name__}: {err}"
            ) from None


class _LazyZarrArray(BackendArray):
    """xarray's lazy-indexing door to a zarr array (``chunks=None``: no dask)."""

    __slots__ = ("array", "dtype", "shape")

    def __init__(self, array: _ZarrChunks) -> None:
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> Any:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._get)

    def _get(self, key: tuple[Any, ...]) -> np.ndarray:
        return self.array[key]


def _where(path_or_store: Any) -> str:
    return str(path_or_store)


def _open_group(path_or_store: Any, allow_links_outside: bool = False) -> zarr.Group:
    where = _where(path_or_store)
    store = path_or_store
    if is_url(path_or_store):
        return _open_remote_group(where)
    if isinstance(path_or_store, str | os.PathLike) and "://" not in str(path_or_store):
        if not Path(path_or_store).exists():
            raise CryoxrFileNotFoundError(f"{where}: no such OME-Zarr store")
        # every file of a local store is read through cryoxr.io._paths (links, pipes, sizes)
        store = GuardedStore(Path(path_or_store), allow_links_outside=allow_links_outside)
    try:
        return zarr.open_group(store, mode="r")
    except CryoxrError:
        raise
    except METADATA_ERRORS as err:
        raise FormatError(
            f"{where}: group metadata (zarr.json, or .zgroup / .zattrs): not a zarr group; "
            f"expected readable zarr metadata, found {type(err).__name__}: {err}"
        ) from err


def _open_remote_group(url: str) -> zarr.Group:
    """The zarr group at a URL; a 404 or an unreachable host is a CryoxrFileNotFoundError."""
    store = zarr_store(url)
    with remote_errors(url, "OME-Zarr store"):
        try:
            return zarr.open_group(store, mode="r")
        except CryoxrError:
            raise
        except METADATA_ERRORS as err:
            fs, path = remote_filesystem(url)
            names = ("zarr.json", ".zgroup", ".zattrs")
            if not any(fs.exists(f"{path.rstrip('/')}/{name}") for name in names):
                raise CryoxrFileNotFoundError(
                    f"{url}: no such OME-Zarr store (none of {', '.join(names)} was found there)"
                ) from None
            raise FormatError(
                f"{url}: group metadata (zarr.json, or .zgroup / .zattrs): not a zarr group; "
                f"expected readable zarr metadata, found {type(err).__name__}: {err}"
            ) from err


def _read_level(
    group: zarr.Group,
    ms: Mapping[str, Any],
    version: str,
    level: int,
    where: str,
    *,
    chunks: Chunks,
    experiment_id: str | None,
    pixel_spacing: float | None,
    allow_anisotropic: bool,
) -> Image:
    n_levels = len(ms["datasets"])
    if not isinstance(level, int) or not -n_levels <= level < n_levels:
        raise InvalidValueError(f"{where}: level must be an int in [0, {n_levels}), found {level!r}")
    level %= n_levels
    names, units = _axes(ms, where)
    if not {"y", "x"} <= set(names) or len(set(names)) != len(names):
        raise FormatError(f"{where}: multiscales[0].axes {names}: cryoxr reads z, y, x / y, x / image, y, x")
    scale, translation = _level_geometry(ms, level, where)
    spacing = _spacing(names, units, scale, where, allow_anisotropic=allow_anisotropic)
    if pixel_spacing is not None:
        # an override is for level 0: other levels keep their size relative to it
        base_scale, _ = _level_geometry(ms, 0, where)
        x = names.index("x") if "x" in names else -1
        with np.errstate(all="ignore"):
            ratio = np.float64(scale[x]) / np.float64(base_scale[x])
        if not (math.isfinite(ratio) and ratio > 0):
            raise FormatError(
                f"{where}: multiscales[0].datasets[{level}] and [0] coordinateTransformations, scale of "
                f"axis 'x': expected positive finite scales to derive level {level}'s pixel spacing from "
                f"pixel_spacing=, found {scale[x]!r} and {base_scale[x]!r}"
            )
        spacing = float(pixel_spacing) * float(ratio)
    if spacing is None:
        raise FormatError(f"{where}: the spatial axes have no unit; pass pixel_spacing= (Å) to read them")
    path = ms["datasets"][level].get("path")
    try:
        with warnings.catch_warnings():
            # zarr casts fill_value to the dtype with a RuntimeWarning on overflow (1e308 for
            # float16): a broken header, reported as such
            warnings.simplefilter("error", RuntimeWarning)
            array = group[str(path)]
    except CryoxrError:
        raise
    except (KeyError, zarr.errors.BaseZarrError) as err:
        raise FormatError(f"{where}: multiscales[0].datasets[{level}].path {path!r}: no such array") from err
    except METADATA_ERRORS as err:
        raise FormatError(
            f"{where}: multiscales[0].datasets[{level}].path {path!r}: array metadata (zarr.json, or "
            f".zarray): expected a zarr array, found {type(err).__name__}: {err}"
        ) from err
    if not isinstance(array, zarr.Array) or array.ndim != len(names):
        raise FormatError(f"{where}: dataset {path!r} must be an array with {len(names)} dims ({names})")
    if min(array.shape, default=1) < 1:
        raise FormatError(
            f"{where}: array {path!r} metadata field shape: expected at least one pixel along each axis, "
            f"found {list(array.shape)}"
        )
    if min(array.chunks, default=1) < 1:
        raise FormatError(
            f"{where}: array {path!r} metadata field chunk_shape (v2: chunks): expected sizes >= 1, "
            f"found {list(array.chunks)}"
        )
    if isinstance(group.store, GuardedStore):
        group.store.bound_array(array.path, array)  # chunk files larger than they can be: refused
    if max(array.shape) > MAX_AXIS_LENGTH:
        # missing chunks are legal (fill value), so a lying shape costs no disk: refuse it
        # before coordinates and dask's chunk tuples are allocated for it
        raise FormatError(
            f"{where}: array {path!r} metadata field shape: expected at most {MAX_AXIS_LENGTH} pixels "
            f"along each axis, found {list(array.shape)}"
        )
    # drop leading length-1 axes that are not spatial (time, channel), keep image/z/y/x
    lead = 0
    while lead < len(names) and names[lead] not in (*SPATIAL_DIMS, "image") and array.shape[lead] == 1:
        lead += 1
    dims = tuple(names[lead:])
    stack = dims[:1] == ("image",)
    if (len(dims), stack) not in IMAGE_DIMS or IMAGE_DIMS[(len(dims), stack)] != dims:
        raise FormatError(
            f"{where}: multiscales[0].axes {names}: cryoxr reads z, y, x / y, x / image, y, x "
            "(after leading length-1 time or channel axes)"
        )
    custom = group.attrs.get("cryoxr", {})
    attrs = dict(custom) if isinstance(custom, Mapping) else {}
    name = experiment_id or attrs.pop("experiment_id", None) or ms.get("name") or _stem(where)
    attrs.pop("experiment_id", None)
    experiment_id = str(name)
    attrs.pop("source", None)  # the data now come from this store
    source = where
    attrs["ome_translation"] = [
        t * UNIT_TO_ANGSTROM.get(str(u), 1.0) for t, u in zip(translation, units, strict=True)
    ][lead:]
    attrs["ome_version"] = version
    cls = IMAGE_CLASS[(len(dims) - int(stack), stack)]
    squeeze = (0,) * lead
    remote = is_url(where)
    if chunks is None:
        chunked = _ZarrChunks(array, where, str(path), remote)
        var = xr.Variable(names, indexing.LazilyIndexedArray(_LazyZarrArray(chunked)))[squeeze]
        # what xarray's ``open_dataarray(..., chunks=...)`` chunks along: the stored chunks
        var.encoding["preferred_chunks"] = dict(zip(dims, array.chunks[lead:], strict=True))
        data = xr.DataArray(var, coords=image_coords(var.shape, dims, spacing), name=experiment_id)
        data.attrs.update(attrs, experiment_id=experiment_id, pixel_spacing=spacing, source=str(source))
        return cls(data)
    token = tokenize(where, group.path, path, json.dumps(array.metadata.to_dict(), default=str))
    darr = da.from_array(
        _ZarrChunks(array, where, str(path), remote),
        chunks=array.chunks,
        asarray=False,
        lock=False,
        name=f"ome-zarr-{token}",
        meta=np.empty((0,) * array.ndim, array.dtype),
    )[squeeze]
    return cls.from_array(
        darr,
        pixel_spacing=spacing,
        experiment_id=str(experiment_id),
        source=str(source),
        stack=stack,
        chunks=chunks,
        attrs=attrs,
    )


def _stem(where: str) -> str:
    name = Path(where.rstrip("/")).name
    for suffix in OME_ZARR_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def _read_levels(
    path_or_store: Any,
    levels: Sequence[Any] | None,
    chunks: Chunks,
    experiment_id: str | None,
    pixel_spacing: float | None,
    allow_anisotropic: bool,
    allow_links_outside: bool = False,
) -> list[Image]:
    """The given levels of a store (None: every level, finest first); options of :func:`read_ome_zarr`."""
    where = _where(path_or_store)
    group = _open_group(path_or_store, allow_links_outside)
    ms, version = _multiscale(group, where)
    images: list[Image] = []
    for level in (
        range(len(ms["datasets"])) if levels is None else levels
    ):  # a loop, not a comprehension: one stack depth for warnings
        images.append(
            _read_level(
                group,
                ms,
                version,
                level,
                where,
                chunks=chunks,
                experiment_id=experiment_id,
                pixel_spacing=pixel_spacing,
                allow_anisotropic=allow_anisotropic,
            )
        )
    return images


def read_ome_zarr(
    path_or_store: Any,
    *,
    level: int = 0,
    chunks: Chunks = "auto",
    experiment_id: str | None = None,
    pixel_spacing: float | None = None,
    allow_anisotropic: bool = False,
    allow_links_outside: bool = False,
) -> Image:
    """Open one level of an OME-Zarr image (NGFF 0.4 or 0.5) lazily.

    Parameters
    ----------
    path_or_store
        A path, a URL (``https://``, ``s3://``, any fsspec protocol: needs ``pip install
        'cryoxr[remote]'``; read chunk by chunk) or a zarr store.
    level
        Pyramid level (0 = full resolution; negative counts from the coarsest).
    chunks
        ``"auto"``: the stored chunks; any dask chunks; or None for a DataArray lazily
        indexed by xarray, without dask.
    experiment_id
        Default: the one cryoxr stored, else the multiscale ``name``, else the store name.
    pixel_spacing
        Å per pixel of level 0, for stores whose axes have no unit (other levels scale
        with it).
    allow_anisotropic
        Accept different spatial scales: keep the x spacing and warn.
    allow_links_outside
        Follow files and folders of a local store that are symlinks leading outside it
        (refused by default: :mod:`cryoxr.io.ome_zarr._store`).

    Returns
    -------
    Image
        :class:`~cryoxr.Tomogram`, :class:`~cryoxr.Micrograph` or stack
        :class:`~cryoxr.Image`; ``attrs["ome_translation"]`` holds the level's
        translation in Å, and any attrs cryoxr stored are restored.

    Raises
    ------
    CryoxrFileNotFoundError
        No such path; a URL with no zarr metadata behind it (a 404), or a host that cannot
        be reached (the message names the URL).
    MissingDependencyError
        A URL, and fsspec (or the protocol's package, such as s3fs) is not installed.
    FormatError
        Not a zarr group, no ``multiscales``, bad transforms or axes, unknown unit,
        anisotropic scale; the message names the store and the field. A member of a local
        store that is a link leaving it, a named pipe or device, metadata over 16 MiB or
        nested too deep, a chunk file larger than it can be (:mod:`~cryoxr.io.ome_zarr._store`).
    UnknownFormatError
        An NGFF version other than 0.4 and 0.5.

    Examples
    --------
    >>> import tempfile, pathlib, zarr
    >>> store = pathlib.Path(tempfile.mkdtemp()) / "portal.zarr"
    >>> root = zarr.open_group(store, mode="w", zarr_format=2)
    >>> _ = root.create_array("0", shape=(4, 6, 8), chunks=(4, 6, 8), dtype="f4")
    >>> root.attrs["multiscales"] = [{"version": "0.4", "name": "TS_01",
    ...     "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
    ...     "datasets": [{"path": "0", "coordinateTransformations": [
    ...         {"type": "scale", "scale": [1.348, 1.348, 1.348]}]}]}]
    >>> tomo = read_ome_zarr(store)
    >>> tomo.experiment_id, tomo.shape, tomo.pixel_spacing
    ('TS_01', (4, 6, 8), 13.48)
    """
    return _read_levels(
        path_or_store, [level], chunks, experiment_id, pixel_spacing, allow_anisotropic, allow_links_outside
    )[0]


def open_ome_zarr_pyramid(
    path_or_store: Any,
    *,
    chunks: Chunks = "auto",
    experiment_id: str | None = None,
    pixel_spacing: float | None = None,
    allow_anisotropic: bool = False,
    allow_links_outside: bool = False,
) -> list[Image]:
    """Open every level of an OME-Zarr pyramid lazily, finest first.

    Parameters are those of :func:`read_ome_zarr`, for every level.

    Returns
    -------
    list of Image
        One per level; each has its own pixel spacing and ``ome_translation``.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from cryoxr import Micrograph
    >>> from cryoxr.io.ome_zarr import write_ome_zarr
    >>> m = Micrograph.from_array(np.ones((8, 8), np.float32), pixel_spacing=1.0, experiment_id="m")
    >>> p = write_ome_zarr(m, pathlib.Path(tempfile.mkdtemp()) / "m.zarr", levels=2)
    >>> [(level.shape, level.pixel_spacing) for level in open_ome_zarr_pyramid(p)]
    [((8, 8), 1.0), ((4, 4), 2.0)]
    """
    return _read_levels(
        path_or_store, None, chunks, experiment_id, pixel_spacing, allow_anisotropic, allow_links_outside
    )
