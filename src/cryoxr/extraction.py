"""Subtilt extraction: square patches cut around projected particles in every tilt image.

:func:`extract_subtilts` cuts, lazily, one ``box_size`` patch per particle and tilt
around the positions of :func:`cryoxr.project`, one task per tilt and block of
particles; the sub-pixel residuals ride along as coordinates for Fourier-space
shifting.

Examples
--------
>>> import numpy as np, xarray as xr
>>> import cryoxr
>>> ts = cryoxr.Image.from_array(np.ones((1, 8, 8)), pixel_spacing=2.0, experiment_id="t", stack=True)
>>> xy = xr.DataArray([[[3.0, 4.0]]], dims=("particle", "image", "axis"))
>>> cryoxr.extract_subtilts(ts, xy, box_size=4).sizes["x"]
4
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from cryoxr.errors import InvalidValueError
from cryoxr.image import Image, validate_image
from cryoxr.projection import _check_projected

__all__ = ["extract_subtilts"]


def _extract_block(xy: np.ndarray, image: np.ndarray, box: int, fill: Any) -> np.ndarray:
    """Patches (n, 1, box, box) around nearest pixels of (n, 1, 2) points in one image."""
    points = xy[:, 0, :]
    ny, nx = int(image.shape[-2]), int(image.shape[-1])
    image = np.asarray(image).reshape(ny, nx)
    finite = np.isfinite(points).all(axis=1)
    nearest = np.where(finite[:, None], np.floor(np.where(finite[:, None], points, 0.0) + 0.5), 0).astype(
        np.int64
    )
    offsets = np.arange(box) - box // 2
    cols = nearest[:, 0, None] + offsets  # (n, box)
    rows = nearest[:, 1, None] + offsets
    col_ok = (cols >= 0) & (cols < nx)
    row_ok = (rows >= 0) & (rows < ny)
    patches = image[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
    patches = patches.astype(np.result_type(image.dtype, np.float32), copy=False)
    valid = row_ok[:, :, None] & col_ok[:, None, :] & finite[:, None, None]
    patches[~valid] = fill
    return patches[:, None, :, :]


def extract_subtilts(
    tilt_series: Image | xr.DataArray,
    projected: xr.DataArray,
    *,
    box_size: int,
    particles_per_task: int | None = None,
) -> xr.DataArray:
    """Cut a ``box_size`` square patch around every projected point in every tilt, lazily.

    Each patch is centred on the nearest pixel to the projected point (pixel
    ``floor(p + 0.5)`` sits at box index ``box_size // 2``); the sub-pixel residual
    ``p - floor(p + 0.5)`` is kept as coordinates ``residual_x`` and ``residual_y`` on
    (particle, image) for Fourier-space shifting. Pixels outside the image (and whole
    patches of tilts an experiment lacks) are NaN.

    One task cuts the patches of one tilt for a block of particles, reading only that
    tilt image, so reductions such as the mean patch per tilt stream with a few chunks
    in memory whatever the number of particles.

    Parameters
    ----------
    tilt_series
        A stack Image (dims ``("image", "y", "x")``) with at least as many images as
        ``projected`` has tilts.
    projected
        Output of :func:`project`.
    box_size
        Patch size in pixels (>= 1).
    particles_per_task
        Particles per output chunk; default keeps each chunk near 32 MiB.

    Returns
    -------
    xarray.DataArray
        Lazy, dims ``("particle", "image", "y", "x")``, float32 for float32/integer
        images up to 16 bits, float64 otherwise; ``y``/``x`` coords are the box offsets
        in Å.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import cryoxr
    >>> ts = cryoxr.Image.from_array(np.arange(25.0).reshape(1, 5, 5), pixel_spacing=1.0,
    ...                              experiment_id="t", stack=True)
    >>> xy = xr.DataArray([[[2.2, 1.6]]], dims=("particle", "image", "axis"))
    >>> p = extract_subtilts(ts, xy, box_size=3)
    >>> p.values[0, 0].tolist()
    [[6.0, 7.0, 8.0], [11.0, 12.0, 13.0], [16.0, 17.0, 18.0]]
    >>> [round(float(p.residual_x[0, 0]), 6), round(float(p.residual_y[0, 0]), 6)]
    [0.2, -0.4]
    """
    _check_projected(projected, "extract_subtilts")
    data = validate_image(tilt_series, stack=True)
    box = int(box_size)
    if box < 1 or box != box_size:
        raise InvalidValueError(f"extract_subtilts: box_size must be an int >= 1, found {box_size!r}")
    n_tilts = projected.sizes["image"]
    if data.sizes["image"] < n_tilts:
        raise InvalidValueError(
            f"extract_subtilts: the tilt series {data.attrs.get('experiment_id')!r} has "
            f"{data.sizes['image']} images, the projected positions {n_tilts} tilts"
        )
    images = data.data if isinstance(data.data, da.Array) else da.from_array(data.data, chunks=(1, -1, -1))
    images = images[:n_tilts].rechunk((1, -1, -1))
    out_dtype = np.result_type(images.dtype, np.float32)
    if particles_per_task is None:
        particles_per_task = max(1, (32 * 2**20) // (box * box * out_dtype.itemsize))
    xy = projected.data if isinstance(projected.data, da.Array) else da.from_array(np.asarray(projected.data))
    xy = xy.rechunk((int(particles_per_task), 1, 2))
    patches = da.blockwise(
        _extract_block,
        "ptyx",
        xy,
        "pta",
        images,
        "tYX",
        box,
        None,
        np.nan,
        None,
        concatenate=True,
        new_axes={"y": box, "x": box},
        dtype=out_dtype,
        meta=np.empty((0, 0, 0, 0), dtype=out_dtype),
    )
    nearest = np.floor(projected + 0.5)
    residual = projected - nearest
    spacing = float(data.attrs["pixel_spacing"])
    offsets = (np.arange(box) - box // 2) * spacing
    coords: dict[str, Any] = {
        "image": np.arange(n_tilts),
        "y": ("y", offsets, {"units": "angstrom"}),
        "x": ("x", offsets, {"units": "angstrom"}),
        "residual_x": residual.isel(axis=0).drop_vars("axis", errors="ignore").variable,
        "residual_y": residual.isel(axis=1).drop_vars("axis", errors="ignore").variable,
    }
    if "experiment_id" in projected.coords:
        coords["experiment_id"] = projected.coords["experiment_id"]
    attrs = {"pixel_spacing": spacing, "box_size": box, "experiment_id": data.attrs.get("experiment_id")}
    return xr.DataArray(
        patches, dims=("particle", "image", "y", "x"), coords=coords, attrs=attrs, name="subtilts"
    )
