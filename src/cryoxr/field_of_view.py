"""Which projected particles lie inside their tilt images, and how many per tilt.

:func:`in_field_of_view` tests projected positions (the output of
:func:`cryoxr.project`) against the image bounds; :func:`count_in_field_of_view` fuses
projection, test and count into one kernel per chunk, so counting 10^7 particles x 61
tilts streams at GEMM speed without materialising the projected positions.

Examples
--------
>>> import numpy as np, xarray as xr
>>> import cryoxr
>>> xy = xr.DataArray(np.array([[[4.5, 4.5], [12.0, 4.5]]]), dims=("particle", "image", "axis"))
>>> cryoxr.in_field_of_view(xy, image_shape=(10, 10)).values.tolist()
[[True, False]]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cryoxr.errors import InvalidValueError
from cryoxr.projection import (
    PerExperiment,
    _check_projected,
    _checked_operators,
    _homogeneous,
    _kernel_inputs,
    _operator,
    _particle_chunks,
    projection_of,
)
from cryoxr.projection_model import PMDL, PTC

__all__ = ["count_in_field_of_view", "in_field_of_view"]


def _image_half_extent(
    image_shape: Sequence[int], margin: float, where: str
) -> tuple[np.ndarray, np.ndarray]:
    shape = np.asarray(image_shape, dtype=np.float64).reshape(-1)
    if shape.shape != (2,) or not (shape > 0).all():
        raise InvalidValueError(f"{where}: image_shape must be (ny, nx) > 0, found {image_shape!r}")
    if not np.isfinite(margin):
        raise InvalidValueError(f"{where}: margin must be finite, found {margin!r}")
    ny, nx = shape
    # pixel centres at integers: the image spans [0, n - 1]; test |p - c| <= half
    centre = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
    half = centre - float(margin)
    return centre, half


def _model_image_shape(model: pd.DataFrame, experiments: list[str], where: str) -> tuple[int, int]:
    """``(ny, nx)`` from the model's ``image_size_y/_x`` columns: one size for all ``experiments``."""
    columns = [PTC.IMAGE_SIZE_Y, PTC.IMAGE_SIZE_X]
    rows = model[model[PMDL.EXPERIMENT_ID].astype(str).isin(experiments)]
    if all(c in rows.columns for c in columns):
        sizes = rows[columns].to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isfinite(sizes).all() and (sizes == sizes[0]).all():
            return int(sizes[0, 0]), int(sizes[0, 1])
        if np.isfinite(sizes).all():
            raise InvalidValueError(
                f"{where}: the tilt images of experiments {experiments} differ in size "
                f"({np.unique(sizes, axis=0).astype(int).tolist()} as (ny, nx)): count one size at a time, "
                "or pass image_shape=(ny, nx)"
            )
    raise InvalidValueError(
        f"{where}: the projection model lacks column(s) {columns} (or holds NaN there); "
        "pass image_shape=(ny, nx)"
    )


def _fov_block(xy: np.ndarray, centre: np.ndarray, half: np.ndarray) -> np.ndarray:
    inside = np.abs(xy - centre) <= half
    return inside[..., 0] & inside[..., 1]


def in_field_of_view(
    projected: xr.DataArray, *, image_shape: Sequence[int], margin: float = 0.0
) -> xr.DataArray:
    """Whether each projected point lies at least ``margin`` pixels inside the tilt image.

    Pixel centres sit at integer coordinates, the first at 0, so an image of ``nx``
    pixels spans ``[0, nx - 1]`` in x. NaN positions (tilts an experiment lacks) are
    outside.

    Parameters
    ----------
    projected
        Output of :func:`project`, dims ``("particle", "image", "axis")``.
    image_shape
        Tilt-image shape in array order ``(ny, nx)``.
    margin
        Pixels the point must stay away from the border (negative: allow outside).

    Returns
    -------
    xarray.DataArray
        Lazy bool, dims ``("particle", "image")``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> xy = xr.DataArray(np.array([[[0.0, 0.0], [8.0, 4.5], [9.5, 0.0]]]),
    ...                   dims=("particle", "image", "axis"))
    >>> in_field_of_view(xy, image_shape=(10, 10)).values.tolist()
    [[True, True, False]]
    >>> in_field_of_view(xy, image_shape=(10, 10), margin=1).values.tolist()
    [[False, True, False]]
    """
    _check_projected(projected, "in_field_of_view")
    centre, half = _image_half_extent(image_shape, margin, "in_field_of_view")
    data = projected.data
    recipe = projection_of(data)
    if recipe is not None:
        # straight from project(): one fused kernel per particle chunk projects and tests,
        # never holding the projected positions (a reduction downstream fuses into it too)
        t_max = recipe.weights.shape[2] // 2
        mask = da.blockwise(
            _fov_mask_block, "pt",
            *recipe.kernel_inputs(recipe.bias - np.tile(centre, t_max)[None, :]),
            half, None, recipe.dtype, None,
            concatenate=True, new_axes={"t": t_max}, dtype=bool, meta=np.empty((0, 0), bool),
        )  # fmt: skip
    elif isinstance(data, da.Array):
        data = data.rechunk({2: 2})
        mask = data.map_blocks(_fov_block, centre, half, drop_axis=2, dtype=bool, meta=np.empty((0, 0), bool))
    else:
        mask = _fov_block(np.asarray(data), centre, half)
    coords = {k: v for k, v in projected.coords.items() if "axis" not in v.dims}
    return xr.DataArray(
        mask,
        dims=("particle", "image"),
        coords=coords,
        name="in_field_of_view",
        attrs={"image_shape": [int(s) for s in image_shape], "margin": float(margin)},
    )


#: rows per step of the fused count: a (rows, 2T) float64 block stays in L2
_COUNT_ROWS = 1024


def _fov_steps(
    position: np.ndarray,
    shift: np.ndarray,
    codes: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    half: np.ndarray,
    dtype: Any,
) -> Iterator[tuple[Any, np.ndarray]]:
    """Project a chunk ``_COUNT_ROWS`` particles at a time and test them against the image.

    ``bias`` is centred on the image. Yields ``(rows, inside)``: the chunk's row indices (or
    a slice) and, for those rows, a ``(m, T)`` bool view of a reused buffer, True where both
    x and y lie inside. The projected block is tested while still in cache; no ``(n, 2T)``
    temporary is ever allocated (the loop is over row blocks, never tilts or particles).
    """
    points = _homogeneous(position, shift, dtype)
    width = weights.shape[2]
    limit = np.tile(np.asarray(half, dtype=dtype), width // 2)
    step = max(1, min(points.shape[0], _COUNT_ROWS))
    xy = np.empty((step, width), dtype=dtype)
    inside = np.empty((step, width), dtype=bool)
    both = np.empty((step, width // 2), dtype=bool)
    present = np.unique(codes) if weights.shape[0] > 1 else np.zeros(1, dtype=np.int64)
    for code in present:  # experiments in this chunk: usually one
        operator = _operator(weights, bias, code, dtype)
        rows: Any = slice(None) if len(present) == 1 else np.flatnonzero(codes == code)
        mine = points[rows]
        for start in range(0, mine.shape[0], step):
            m = min(step, mine.shape[0] - start)
            np.matmul(mine[start : start + m], operator, out=xy[:m])
            np.abs(xy[:m], out=xy[:m])
            np.less_equal(xy[:m], limit, out=inside[:m])  # NaN (missing tilt) -> False
            # inside in x and in y <=> both bytes of the (x, y) pair are 1
            np.equal(inside[:m].view(np.uint16), 0x0101, out=both[:m])
            picked = slice(start, start + m) if isinstance(rows, slice) else rows[start : start + m]
            yield picked, both[:m]


def _fov_mask_block(
    position: np.ndarray,
    shift: np.ndarray,
    codes: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    half: np.ndarray,
    dtype: Any,
) -> np.ndarray:
    """Fused kernel: project a chunk and test it, ``(n, T)`` bool (see :func:`_fov_steps`)."""
    mask = np.empty((position.shape[0], weights.shape[2] // 2), dtype=bool)
    for rows, inside in _fov_steps(position, shift, codes, weights, bias, half, dtype):
        mask[rows] = inside
    return mask


def _count_block(
    position: np.ndarray,
    shift: np.ndarray,
    codes: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    half: np.ndarray,
    dtype: Any,
) -> np.ndarray:
    """Fused kernel: project a chunk and count points inside the image, per tilt.

    Works through the chunk ``_COUNT_ROWS`` particles at a time in reused buffers
    (:func:`_fov_steps`), so no (n, 2T) temporary is ever allocated.
    """
    counts = np.zeros(weights.shape[2] // 2, dtype=np.int64)
    for _, inside in _fov_steps(position, shift, codes, weights, bias, half, dtype):
        counts += np.count_nonzero(inside, axis=0)
    return counts[None, :]


def count_in_field_of_view(
    poses: xr.Dataset,
    projection_model: pd.DataFrame,
    *,
    tomogram_dimensions: PerExperiment | None = None,
    tilt_image_center: PerExperiment | None = None,
    image_shape: Sequence[int] | None = None,
    margin: float = 0.0,
    specimen_center: PerExperiment | None = None,
    chunks: int | None = None,
    dtype: Any = np.float64,
) -> xr.DataArray:
    """Count, per tilt, the particles that project inside the tilt image, streaming.

    Equal to ``in_field_of_view(project(...), ...).sum("particle")`` but fused into one
    kernel per chunk (project, test, count), so 10^7 particles x 61 tilts run at GEMM
    speed with memory bounded by one chunk per worker. Arguments as :func:`project`
    and :func:`in_field_of_view`; tomogram size and tilt-image centre default to the
    model's columns (:mod:`cryoxr.geometry`), ``image_shape`` to its ``image_size_y`` and
    ``image_size_x`` columns when they hold one size for every experiment counted.

    Returns
    -------
    xarray.DataArray
        Lazy int64, dims ``("image",)``.

    Examples
    --------
    >>> import cryoxr
    >>> poses = cryoxr.make_poseset([[10.0, 10, 5], [0.0, 0, 5]], experiment_id="t", pixel_spacing=1)
    >>> model = cryoxr.make_projection_model(rotation_y=[0, 60], experiment_id="t", pixel_spacing=1)
    >>> count_in_field_of_view(poses, model, tomogram_dimensions=(20, 20, 10),
    ...     tilt_image_center=(10, 10), image_shape=(20, 20), margin=1).values.tolist()
    [1, 1]
    """
    experiments, weights, bias, _ = _checked_operators(
        poses, projection_model, tomogram_dimensions, tilt_image_center, specimen_center
    )
    if image_shape is None:
        image_shape = _model_image_shape(projection_model, experiments, "count_in_field_of_view")
    centre, half = _image_half_extent(image_shape, margin, "count_in_field_of_view")
    dtype = np.dtype(dtype)
    t_max = weights.shape[2] // 2
    centred_bias = bias - np.tile(centre, t_max)[None, :]
    pchunks = _particle_chunks(poses, chunks)
    per_chunk = da.blockwise(
        _count_block,
        "pt",
        *_kernel_inputs(poses, experiments, weights, centred_bias, dtype, pchunks),
        half,
        None,
        dtype,
        None,
        concatenate=True,
        new_axes={"t": t_max},
        adjust_chunks={"p": 1},
        dtype=np.int64,
        meta=np.empty((0, 0), dtype=np.int64),
    )
    counts = per_chunk.sum(axis=0)
    return xr.DataArray(
        counts,
        dims=("image",),
        coords={"image": np.arange(t_max)},
        name="n_in_field_of_view",
        attrs={"margin": float(margin)},
    )
