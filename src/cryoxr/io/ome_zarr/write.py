"""Writing OME-Zarr pyramids, streaming: :func:`write_ome_zarr` and the 2x mean downsampling.

Level ``l + 1`` is the 2x mean of level ``l`` (trailing odd pixels dropped), computed as
dask from level ``l`` *as stored* (:func:`downsample_stored`), so each level streams with
a few chunks in memory, never the volume. The metadata follow
:mod:`cryoxr.io.ome_zarr.metadata`. Every attr of the image (``experiment_id``, ``mrc_*``
header fields, ...) is kept under the group attribute ``cryoxr``, so MRC -> OME-Zarr ->
MRC loses nothing.

Chunking: 128-cubes by default (8 MiB of float32): a z-slice for viewing decompresses
``(ny / 128) * (nx / 128)`` chunks, a 64-cube box at most 8, and conversion holds a few
chunks per thread. 256-cubes (the portal's choice) compress slightly better and make
fewer files, but a slice reads twice the bytes; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numcodecs
import numpy as np
import xarray as xr
import zarr
import zarr.codecs
from dask.base import tokenize

from cryoxr.errors import InvalidValueError
from cryoxr.image import SPATIAL_DIMS, Image, validate_image
from cryoxr.io._atomic import atomic_path
from cryoxr.io.mrc import rechunk_from_file, store_guarded
from cryoxr.io.ome_zarr.metadata import OME_VERSIONS, _level_transforms, _ome_attributes

__all__ = ["COMPRESSORS", "OME_ATTRS", "downsample_mean", "downsample_stored", "write_ome_zarr"]


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
            datasets.append(
                {
                    "path": str(level),
                    "coordinateTransformations": _level_transforms(dims, spacing, origin, level),
                }
            )
        name = str(data.attrs["experiment_id"])
        root.attrs.update({**_ome_attributes(version, name, dims, datasets), "cryoxr": custom})
    return Path(path)
