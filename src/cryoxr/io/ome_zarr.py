"""OME-Zarr (OME-NGFF 0.4 on zarr v2, 0.5 on zarr v3): lazy reading, streaming pyramids.

Reading accepts what the CryoET Data Portal and ome-zarr-py write (0.4, zarr v2) and
OME-NGFF 0.5 (zarr v3, metadata under ``attributes["ome"]``). The pixel spacing is the
spatial ``scale`` of the chosen level (dataset transforms, then the multiscale's own),
converted to Å with :data:`UNIT_TO_ANGSTROM`; a ``translation`` is kept in
``attrs["ome_translation"]`` (Å, one value per dim) and image coords stay
``index * pixel_spacing`` (DESIGN). Leading time / channel axes of length 1 are dropped.

Writing builds the pyramid level by level: level ``l + 1`` is the 2x mean of level ``l``
(trailing odd pixels dropped), computed as dask from level ``l`` *as stored*, so each
level streams with a few chunks in memory, never the volume. Metadata follow CONVENTIONS
section 2 (pixel centres: ``scale_l = 2**l * s0``, ``translation_l = t0 + s0 * (2**l - 1) / 2``),
axes ``z, y, x`` of type ``space`` and unit ``angstrom`` (a stack's ``image`` axis has no
type), no ``omero``. Every attr of the image (``experiment_id``, ``mrc_*`` header fields,
...) is kept under the group attribute ``cryoxr``, so MRC -> OME-Zarr -> MRC loses nothing.

Chunking: 128-cubes by default (8 MiB of float32): a z-slice for viewing decompresses
``(ny / 128) * (nx / 128)`` chunks, a 64-cube box at most 8, and conversion holds a few
chunks per thread. 256-cubes (the portal's choice) compress slightly better and make
fewer files, but a slice reads twice the bytes; see ``benchmarks/README.md``.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> from cryoxr import Tomogram
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> tomo = Tomogram.from_array(np.ones((8, 8, 8), np.float32), pixel_spacing=10.0,
...                            experiment_id="TS_01")
>>> path = write_ome_zarr(tomo, folder / "TS_01.ome.zarr", levels=3, chunks=(4, 4, 4))
>>> [level.shape for level in open_ome_zarr_pyramid(path)]
[(8, 8, 8), (4, 4, 4), (2, 2, 2)]
>>> level1 = read_ome_zarr(path, level=1)
>>> level1.pixel_spacing, level1.data.attrs["ome_translation"]
(20.0, [5.0, 5.0, 5.0])
"""

from __future__ import annotations

import itertools
import json
import math
import os
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numcodecs
import numpy as np
import xarray as xr
import zarr
import zarr.codecs
import zarr.errors
from dask.base import tokenize
from xarray.backends import BackendArray
from xarray.core import indexing

from cryoxr.errors import CryoxrFileNotFoundError, FormatError, InvalidValueError, UnknownFormatError
from cryoxr.image import (
    IMAGE_DIMS,
    SPATIAL_DIMS,
    Chunks,
    Image,
    Micrograph,
    Tomogram,
    image_coords,
    validate_image,
)
from cryoxr.io._atomic import atomic_path
from cryoxr.io.mrc import rechunk_from_file, store_guarded

__all__ = [
    "COMPRESSORS",
    "OME_ZARR_SUFFIXES",
    "UNIT_TO_ANGSTROM",
    "open_ome_zarr_pyramid",
    "read_ome_zarr",
    "write_ome_zarr",
]

#: Suffixes that :func:`cryoxr.io.images.open_image` reads as OME-Zarr.
OME_ZARR_SUFFIXES: tuple[str, ...] = (".ome.zarr", ".zarr")

#: OME-NGFF version -> zarr format
OME_VERSIONS: dict[str, int] = {"0.4": 2, "0.5": 3}
#: longest axis read (2**24 pixels: its coordinates alone take 128 MiB); longer is a broken header
MAX_AXIS_LENGTH = 2**24

#: UDUNITS-2 space units of OME-NGFF -> Å per unit
UNIT_TO_ANGSTROM: dict[str, float] = {
    "angstrom": 1.0,
    "picometer": 1e-2,
    "femtometer": 1e-5,
    "nanometer": 10.0,
    "micrometer": 1e4,
    "millimeter": 1e7,
    "centimeter": 1e8,
    "meter": 1e10,
}


def _zstd(zarr_format: int) -> Any:
    return numcodecs.Zstd(level=3) if zarr_format == 2 else zarr.codecs.ZstdCodec(level=3)


def _blosc_zstd(zarr_format: int) -> Any:
    if zarr_format == 2:
        return numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    return zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


def _blosc_lz4(zarr_format: int) -> Any:
    if zarr_format == 2:
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


#: compressor name -> codec factory (by zarr format). ``"blosc-lz4"`` is zarr-python 2's
#: default, which the CryoET Data Portal inherits; ``None`` stores raw chunks.
COMPRESSORS: dict[str | None, Callable[[int], Any] | None] = {
    "zstd": _zstd,
    "blosc-zstd": _blosc_zstd,
    "blosc-lz4": _blosc_lz4,
    None: None,
}

#: Image attrs that the OME metadata itself carries (not repeated under ``cryoxr``)
OME_ATTRS = ("pixel_spacing", "ome_translation", "ome_version")

#: the wrapper class for (spatial ndim, stack)
IMAGE_CLASS: dict[tuple[int, bool], type[Image]] = {
    (2, False): Micrograph,
    (3, False): Tomogram,
    (2, True): Image,
}


# ----------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------
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

    __slots__ = ("array", "dtype", "ndim", "path", "shape", "where")

    def __init__(self, array: Any, where: str, path: str) -> None:
        self.array, self.where, self.path = array, where, path
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.array[key])
        except CHUNK_DECODE_ERRORS as err:
            raise FormatError(
                f"{self.where}: array {self.path!r}, chunks under selection {key}: expected chunk data "
                f"that the array's codecs decode, found {type(err).__name__}: {err}"
            ) from err


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


def _open_group(path_or_store: Any) -> zarr.Group:
    where = _where(path_or_store)
    if isinstance(path_or_store, str | os.PathLike) and not Path(path_or_store).exists():
        raise CryoxrFileNotFoundError(f"{where}: no such OME-Zarr store")
    try:
        return zarr.open_group(path_or_store, mode="r")
    except METADATA_ERRORS as err:
        raise FormatError(
            f"{where}: group metadata (zarr.json, or .zgroup / .zattrs): not a zarr group; "
            f"expected readable zarr metadata, found {type(err).__name__}: {err}"
        ) from err


def _multiscale(group: zarr.Group, where: str) -> tuple[dict[str, Any], str]:
    """The first multiscale of a group and its NGFF version."""
    attrs = group.attrs.asdict()
    if "ome" in attrs:
        ome = attrs["ome"]
        version = str(ome.get("version", "")) if isinstance(ome, Mapping) else ""
        multiscales = ome.get("multiscales") if isinstance(ome, Mapping) else None
        field = "attributes.ome.multiscales"
    else:
        multiscales = attrs.get("multiscales")
        version = ""
        field = "attributes.multiscales"
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], Mapping):
        raise FormatError(
            f"{where}: {field} is missing or empty: not an OME-NGFF image "
            "(0.5 keeps it under attributes['ome'], 0.4 at the top of .zattrs)"
        )
    ms = dict(multiscales[0])
    version = version or str(ms.get("version", ""))
    if version not in OME_VERSIONS:
        raise UnknownFormatError(
            f"{where}: OME-NGFF version {version!r}; cryoxr reads {sorted(OME_VERSIONS)}"
        )
    for key in ("axes", "datasets"):
        if not isinstance(ms.get(key), list) or not ms[key]:
            raise FormatError(f"{where}: {field}[0].{key} is missing or empty")
    for i, dataset in enumerate(ms["datasets"]):
        if not isinstance(dataset, Mapping):
            raise FormatError(
                f"{where}: {field}[0].datasets[{i}]: expected an object with path and "
                f"coordinateTransformations, found {dataset!r:.80}"
            )
    return ms, version


def _transform(transforms: Any, kind: str, ndim: int, where: str) -> list[float] | None:
    """The ``scale`` or ``translation`` vector of a coordinateTransformations list."""
    if transforms is not None and not isinstance(transforms, list):
        raise FormatError(f"{where}: expected a list of transformations, found {transforms!r:.80}")
    for t in transforms or []:
        if isinstance(t, Mapping) and t.get("type") == kind:
            values = t.get(kind)
            if not isinstance(values, list) or len(values) != ndim:
                raise FormatError(f"{where}: {kind} must list {ndim} numbers, found {values!r}")
            try:
                return [float(v) for v in values]
            except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit integer
                raise FormatError(f"{where}: {kind} must list {ndim} numbers, found {values!r}") from None
    return None


def _level_geometry(ms: Mapping[str, Any], level: int, where: str) -> tuple[list[float], list[float]]:
    """Scale and translation of one level, in axis units, with the multiscale's own applied."""
    ndim = len(ms["axes"])
    dataset = ms["datasets"][level]
    field = f"{where}: multiscales[0].datasets[{level}].coordinateTransformations"
    scale = _transform(dataset.get("coordinateTransformations"), "scale", ndim, field)
    if scale is None:
        raise FormatError(f"{field}: no scale transform")
    translation = _transform(dataset.get("coordinateTransformations"), "translation", ndim, field)
    translation = translation or [0.0] * ndim
    field = f"{where}: multiscales[0].coordinateTransformations"
    g_scale = _transform(ms.get("coordinateTransformations"), "scale", ndim, field) or [1.0] * ndim
    g_trans = _transform(ms.get("coordinateTransformations"), "translation", ndim, field) or [0.0] * ndim
    return (
        [s * g for s, g in zip(scale, g_scale, strict=True)],
        [t * g + gt for t, g, gt in zip(translation, g_scale, g_trans, strict=True)],
    )


def _axes(ms: Mapping[str, Any], where: str) -> tuple[list[str], list[str | None]]:
    names: list[str] = []
    units: list[str | None] = []
    for axis in ms["axes"]:
        if isinstance(axis, str):  # NGFF 0.3 style, tolerated
            names.append(axis)
            units.append(None)
        elif isinstance(axis, Mapping) and isinstance(axis.get("name"), str):
            unit = axis.get("unit")
            if unit is not None and not isinstance(unit, str):
                raise FormatError(
                    f"{where}: multiscales[0].axes, axis {axis['name']!r}: expected a unit name, found {unit!r:.80}"
                )
            names.append(axis["name"])
            units.append(unit)
        else:
            raise FormatError(f"{where}: multiscales[0].axes: expected objects with a name, found {axis!r}")
    return names, units


def _spacing(
    names: Sequence[str],
    units: Sequence[str | None],
    scale: Sequence[float],
    where: str,
    *,
    allow_anisotropic: bool,
) -> float | None:
    """Isotropic spacing in Å of the spatial axes, or None when a unit is missing."""
    sizes: dict[str, float] = {}
    for name, unit, value in zip(names, units, scale, strict=True):
        if name not in SPATIAL_DIMS:
            continue
        if unit is None:
            return None
        if unit not in UNIT_TO_ANGSTROM:
            raise FormatError(
                f"{where}: axis {name!r} has unit {unit!r}; cryoxr converts {sorted(UNIT_TO_ANGSTROM)} to Å"
            )
        angstrom = value * UNIT_TO_ANGSTROM[unit]
        if not math.isfinite(angstrom) or angstrom <= 0:
            raise FormatError(
                f"{where}: scale of axis {name!r} must be a positive finite number, found {value!r}"
            )
        sizes[name] = angstrom
    first = sizes["x"]
    if not np.allclose(list(sizes.values()), first, rtol=1e-6, atol=0):
        text = ", ".join(f"{a}: {v:g}" for a, v in sizes.items())
        if not allow_anisotropic:
            raise FormatError(
                f"{where}: coordinateTransformations scale is anisotropic ({text} Å); cryoxr images are "
                "isotropic: pass allow_anisotropic=True to keep the x spacing"
            )
        warnings.warn(f"{where}: anisotropic scale ({text} Å); keeping x: {first:g} Å", stacklevel=4)
    return first


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
    if chunks is None:
        chunked = _ZarrChunks(array, where, str(path))
        var = xr.Variable(names, indexing.LazilyIndexedArray(_LazyZarrArray(chunked)))[squeeze]
        data = xr.DataArray(var, coords=image_coords(var.shape, dims, spacing), name=experiment_id)
        data.attrs.update(attrs, experiment_id=experiment_id, pixel_spacing=spacing, source=str(source))
        return cls(data)
    token = tokenize(where, group.path, path, json.dumps(array.metadata.to_dict(), default=str))
    darr = da.from_array(
        _ZarrChunks(array, where, str(path)),
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


def read_ome_zarr(
    path_or_store: Any,
    *,
    level: int = 0,
    chunks: Chunks = "auto",
    experiment_id: str | None = None,
    pixel_spacing: float | None = None,
    allow_anisotropic: bool = False,
) -> Image:
    """Open one level of an OME-Zarr image (NGFF 0.4 or 0.5) lazily.

    Parameters
    ----------
    path_or_store
        A path, URL or zarr store (anything :func:`zarr.open_group` accepts).
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

    Returns
    -------
    Image
        :class:`~cryoxr.Tomogram`, :class:`~cryoxr.Micrograph` or stack
        :class:`~cryoxr.Image`; ``attrs["ome_translation"]`` holds the level's
        translation in Å, and any attrs cryoxr stored are restored.

    Raises
    ------
    CryoxrFileNotFoundError
        No such path.
    FormatError
        Not a zarr group, no ``multiscales``, bad transforms or axes, unknown unit,
        anisotropic scale; the message names the store and the field.
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
    where = _where(path_or_store)
    group = _open_group(path_or_store)
    ms, version = _multiscale(group, where)
    return _read_level(
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


def open_ome_zarr_pyramid(
    path_or_store: Any,
    *,
    chunks: Chunks = "auto",
    experiment_id: str | None = None,
    pixel_spacing: float | None = None,
    allow_anisotropic: bool = False,
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
    >>> m = Micrograph.from_array(np.ones((8, 8), np.float32), pixel_spacing=1.0, experiment_id="m")
    >>> p = write_ome_zarr(m, pathlib.Path(tempfile.mkdtemp()) / "m.zarr", levels=2)
    >>> [(level.shape, level.pixel_spacing) for level in open_ome_zarr_pyramid(p)]
    [((8, 8), 1.0), ((4, 4), 2.0)]
    """
    where = _where(path_or_store)
    group = _open_group(path_or_store)
    ms, version = _multiscale(group, where)
    return [
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
        for level in range(len(ms["datasets"]))
    ]


# ----------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------
def _mean_to_dtype(block: np.ndarray, *, factors: tuple[int, ...], out_dtype: np.dtype[Any]) -> np.ndarray:
    """Mean of ``factors``-sized windows of a block, back in ``out_dtype`` (rounded for ints).

    Sums strided halves axis by axis (several times faster than a reshape and a mean over
    several axes); accumulates in at least float32.
    """
    acc = block
    acc_dtype = np.result_type(block.dtype, np.float32)
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        parts = [acc[(slice(None),) * axis + (slice(k, None, f),)] for k in range(f)]
        total = parts[0].astype(acc_dtype, copy=True)
        for part in parts[1:]:
            total += part
        acc = total
    if acc is block:
        return block.astype(out_dtype, copy=False)
    acc *= 1.0 / math.prod(factors)
    if out_dtype.kind in "iu":
        acc = np.rint(acc)
    return acc.astype(out_dtype, copy=False)


def downsample_mean(darr: da.Array, factors: tuple[int, ...]) -> da.Array:
    """Lazy mean over ``factors``-sized windows; trailing pixels that fill no window are dropped.

    Each output chunk comes from one input chunk (chunks are first made multiples of the
    factors), so memory stays at one input chunk per task; the dtype is kept (integers are
    rounded).

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.arange(10.0, chunks=5).reshape(2, 5)
    >>> downsample_mean(x, (1, 2)).compute().tolist()
    [[0.5, 2.5], [5.5, 7.5]]
    """
    trimmed = darr[tuple(slice(0, n - n % f) for n, f in zip(darr.shape, factors, strict=True))]
    aligned = trimmed.rechunk(
        tuple(max(f, c - c % f) for c, f in zip((cs[0] for cs in trimmed.chunks), factors, strict=True))
    )
    out_chunks = tuple(tuple(c // f for c in cs) for cs, f in zip(aligned.chunks, factors, strict=True))
    return aligned.map_blocks(
        _mean_to_dtype,
        factors=factors,
        out_dtype=darr.dtype,
        dtype=darr.dtype,
        chunks=out_chunks,
        meta=np.empty((0,) * darr.ndim, darr.dtype),
    )


def _json_attrs(attrs: Mapping[Any, Any], where: str) -> dict[str, Any]:
    """Image attrs as JSON for the ``cryoxr`` group attribute (numpy values converted)."""

    def convert(value: Any) -> Any:
        if isinstance(value, np.generic | np.ndarray):
            return value.tolist()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(type(value).__name__)

    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in OME_ATTRS:
            continue
        try:
            out[str(key)] = json.loads(json.dumps(value, default=convert))
        except (TypeError, ValueError):
            raise InvalidValueError(
                f"write_ome_zarr: {where}: attr {key!r} cannot be stored as JSON, found {type(value).__name__}"
            ) from None
    return out


def _level_chunks(dims: tuple[str, ...], chunks: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """Per-dim chunk of a level: the spatial entries of ``chunks``, one image for stacks."""
    spatial = list(chunks)[-sum(d in SPATIAL_DIMS for d in dims) :]
    per_dim = [1 if d == "image" else spatial.pop(0) for d in dims]
    return tuple(max(1, min(c, n)) for c, n in zip(per_dim, shape, strict=True))


def _level_shards(
    dims: tuple[str, ...], shards: Sequence[int], level_chunks: tuple[int, ...], shape: Sequence[int]
) -> tuple[int, ...]:
    """Per-dim shard of a level: clipped to the level, kept a multiple of its chunks."""
    per_dim = _level_chunks(dims, shards, [1 << 62] * len(dims))
    return tuple(min(s, math.ceil(n / c) * c) for s, c, n in zip(per_dim, level_chunks, shape, strict=True))


def _downsample_region(
    *, source: Any, factors: tuple[int, ...], out_dtype: np.dtype[Any], block_info: Any = None
) -> np.ndarray:
    """One output block of :func:`downsample_stored`: its input read chunk by chunk."""
    location = block_info[None]["array-location"]
    out = np.empty(tuple(stop - start for start, stop in location), out_dtype)
    # pieces along each axis: the stored chunks (doubled when a chunk does not hold whole windows)
    pieces: list[list[tuple[int, int]]] = []
    for (start, stop), f, c in zip(location, factors, source.chunks, strict=True):
        step = c if c % f == 0 else c * f
        lo, hi = start * f, stop * f
        edges = [lo, *range((lo // step + 1) * step, hi, step), hi]
        pieces.append(list(itertools.pairwise(edges)))
    for box in itertools.product(*pieces):
        block = np.asarray(source[tuple(slice(a, b) for a, b in box)])
        where = tuple(
            slice(a // f - start, b // f - start)
            for (a, b), f, (start, _) in zip(box, factors, location, strict=True)
        )
        out[where] = _mean_to_dtype(block, factors=factors, out_dtype=out_dtype)
    return out


def downsample_stored(source: Any, factors: tuple[int, ...], chunks: tuple[int, ...]) -> da.Array:
    """Lazy mean over ``factors``-sized windows of a stored (zarr) array, in ``chunks``.

    Each task reads the stored chunks under its output block one at a time and
    downsamples each at once, so a task holds one output block and one stored chunk,
    whatever the ratio between them. Trailing pixels that fill no window are dropped; the
    dtype is kept (integers are rounded).

    Examples
    --------
    >>> import zarr, numpy as np
    >>> z = zarr.create_array(store={}, shape=(4, 6), chunks=(2, 2), dtype="f4")
    >>> z[:] = np.arange(24).reshape(4, 6)
    >>> downsample_stored(z, (2, 2), (2, 3)).compute().tolist()
    [[3.5, 5.5, 7.5], [15.5, 17.5, 19.5]]
    """
    shape = tuple(n // f for n, f in zip(source.shape, factors, strict=True))
    dtype = np.dtype(source.dtype)
    return da.map_blocks(
        _downsample_region,
        source=source,
        factors=factors,
        out_dtype=dtype,
        chunks=da.core.normalize_chunks(chunks, shape),
        dtype=dtype,
        meta=np.empty((0,) * len(shape), dtype),
        name=f"downsample-{tokenize(str(getattr(source, 'store_path', id(source))), factors, chunks, shape)}",
    )


def write_ome_zarr(
    image: Image | xr.DataArray,
    path: str | os.PathLike[str],
    *,
    version: str = "0.5",
    chunks: Sequence[int] = (128, 128, 128),
    levels: int = 4,
    compressor: str | None = "zstd",
    shards: Sequence[int] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an image as an OME-Zarr multiscale pyramid, streaming.

    Level 0 is the image; level ``l + 1`` is the 2x mean of level ``l`` along every
    spatial dim (a stack's ``image`` dim is not downsampled), computed as dask from the
    level just written. Written to a temporary sibling folder and renamed when complete.

    Parameters
    ----------
    image
        An Image (or image DataArray), dask- or numpy-backed.
    path
        Destination folder (``.ome.zarr`` by convention).
    version
        ``"0.5"`` (zarr v3) or ``"0.4"`` (zarr v2, as the CryoET Data Portal).
    chunks
        Chunk shape of the spatial dims (z, y, x; the last two for 2D); stacks are
        chunked one image deep. Clipped to each level's shape.
    levels
        Number of levels, including level 0; fewer are written when a spatial dim would
        drop below 1 pixel.
    compressor
        A key of :data:`COMPRESSORS` (``"zstd"``, ``"blosc-zstd"``, ``"blosc-lz4"``, None).
    shards
        zarr v3 sharding (version 0.5 only): shard shape of the spatial dims, multiples
        of ``chunks``. Each dask task then writes one whole shard (memory: one shard).
    overwrite
        Replace an existing store.

    Returns
    -------
    pathlib.Path
        The store.

    Raises
    ------
    InvalidValueError
        Unknown version or compressor, bad chunks / shards / levels, attrs that are not
        JSON.
    FileExistsNoOverwriteError
        ``path`` exists and ``overwrite`` is False.

    Examples
    --------
    >>> import tempfile, pathlib, json, numpy as np
    >>> from cryoxr import Tomogram
    >>> t = Tomogram.from_array(np.zeros((4, 4, 4), np.float32), pixel_spacing=10.0, experiment_id="t")
    >>> p = write_ome_zarr(t, pathlib.Path(tempfile.mkdtemp()) / "t.ome.zarr", levels=2)
    >>> ome = json.loads((p / "zarr.json").read_text())["attributes"]["ome"]
    >>> ome["version"], [d["coordinateTransformations"] for d in ome["multiscales"][0]["datasets"]][1]
    ('0.5', [{'type': 'scale', 'scale': [20.0, 20.0, 20.0]}, {'type': 'translation', 'translation': [5.0, 5.0, 5.0]}])
    """
    data = validate_image(image)
    where = str(path)
    if version not in OME_VERSIONS:
        raise InvalidValueError(
            f"write_ome_zarr: {where}: version must be one of {sorted(OME_VERSIONS)}, found {version!r}"
        )
    if compressor not in COMPRESSORS:
        raise InvalidValueError(
            f"write_ome_zarr: {where}: compressor must be one of {list(COMPRESSORS)}, found {compressor!r}"
        )
    if not isinstance(levels, int) or levels < 1:
        raise InvalidValueError(f"write_ome_zarr: {where}: levels must be an int >= 1, found {levels!r}")
    dims = tuple(str(d) for d in data.dims)
    n_spatial = sum(d in SPATIAL_DIMS for d in dims)
    for name, value in (("chunks", chunks), ("shards", shards)):
        if value is not None and (
            len(value) < n_spatial or not all(isinstance(c, int | np.integer) and c > 0 for c in value)
        ):
            raise InvalidValueError(
                f"write_ome_zarr: {where}: {name} must give {n_spatial} positive ints (spatial dims), found {value!r}"
            )
    if shards is not None:
        if version != "0.5":
            raise InvalidValueError(
                f"write_ome_zarr: {where}: shards need version '0.5' (zarr v3), found {version!r}"
            )
        if any(s % c for s, c in zip(list(shards)[-n_spatial:], list(chunks)[-n_spatial:], strict=True)):
            raise InvalidValueError(
                f"write_ome_zarr: {where}: shards {shards} must be multiples of chunks {chunks}"
            )
    zarr_format = OME_VERSIONS[version]
    factory = COMPRESSORS[compressor]
    codecs = None if factory is None else factory(zarr_format)
    custom = _json_attrs(data.attrs, where)
    spacing = float(data.attrs["pixel_spacing"])
    offsets = list(data.attrs.get("ome_translation", [0.0] * data.ndim))
    if len(offsets) != data.ndim:
        offsets = [0.0] * data.ndim
    origin = [
        0.0 if d == "image" else float(offsets[i]) + float(data[d].values[0]) for i, d in enumerate(dims)
    ]  # the place of pixel 0, in Å
    factors = tuple(1 if d == "image" else 2 for d in dims)
    darr = (
        data.data if isinstance(data.data, da.Array) else da.from_array(np.asarray(data.data), chunks="auto")
    )
    datasets: list[dict[str, Any]] = []
    with atomic_path(path, overwrite=overwrite, directory=True) as tmp:
        root = zarr.open_group(tmp, mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
        source = darr
        for level in range(levels):
            if level:
                previous = root[str(level - 1)]
                assert isinstance(previous, zarr.Array)
                if any(n < 2 for n, f in zip(previous.shape, factors, strict=True) if f > 1):
                    break
                shape = tuple(n // f for n, f in zip(previous.shape, factors, strict=True))
                out_chunks = _level_chunks(dims, chunks, shape)
                if shards is not None:
                    out_chunks = _level_shards(dims, shards, out_chunks, shape)
                source = downsample_stored(previous, factors, out_chunks)
            level_chunks = _level_chunks(dims, chunks, source.shape)
            level_shards = None if shards is None else _level_shards(dims, shards, level_chunks, source.shape)
            array = root.create_array(
                str(level),
                shape=source.shape,
                dtype=source.dtype,
                chunks=level_chunks,
                shards=level_shards,
                compressors=codecs,
                fill_value=0,
                dimension_names=dims if zarr_format == 3 else None,
            )
            write_chunks = level_shards or level_chunks
            source = rechunk_from_file(source, write_chunks) if level == 0 else source.rechunk(write_chunks)
            store_guarded([source], [array])
            f = 2**level
            datasets.append(
                {
                    "path": str(level),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0 if d == "image" else spacing * f for d in dims]},
                        {
                            "type": "translation",
                            "translation": [
                                o if d == "image" else o + spacing * (f - 1) / 2
                                for d, o in zip(dims, origin, strict=True)
                            ],
                        },
                    ],
                }
            )
        axes = [
            {"name": d} if d == "image" else {"name": d, "type": "space", "unit": "angstrom"} for d in dims
        ]
        multiscale: dict[str, Any] = {
            "name": str(data.attrs["experiment_id"]),
            "axes": axes,
            "datasets": datasets,
            "type": "mean",
            "metadata": {"description": "2x mean per level, trailing odd pixels dropped", "method": "cryoxr"},
        }
        if zarr_format == 2:
            root.attrs.update({"multiscales": [{"version": version, **multiscale}], "cryoxr": custom})
        else:
            root.attrs.update({"ome": {"version": version, "multiscales": [multiscale]}, "cryoxr": custom})
    return Path(path)
