"""Which projected particles lie inside their tilt images, and how many per tilt.

:func:`in_field_of_view` tests projected positions (the output of
:func:`cryoxr.project`) against the image bounds; :func:`count_in_field_of_view` fuses
projection, test and count into one kernel per chunk, so counting 10^7 particles x 61
tilts streams at GEMM speed without materialising the projected positions.
``in_field_of_view(project(...), ...).sum("particle")``, as users type it, runs one
fused task per chunk as well (project, test, count the chunk's mask).

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
        Lazy bool, dims ``("particle", "image")``. Of the very array :func:`project`
        returned, one fused kernel per particle chunk projects and tests (the positions
        are never held); a reduction such as ``.sum("particle")`` runs in the same task
        (dask fuses it), and the chunks' sum over particles adds bytes, not int64.

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
        inputs = recipe.kernel_inputs(recipe.bias - np.tile(centre, t_max)[None, :])
        mask = da.blockwise(
            _fov_mask_block, "pt", *inputs, half, None, recipe.dtype, None,
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


def _count_graph(inputs: list[Any], half: np.ndarray, dtype: Any, t_max: int) -> da.Array:
    """``(T,)`` int64 counts: the fused count kernel per particle chunk, summed."""
    per_chunk = da.blockwise(
        _count_block, "pt", *inputs, half, None, dtype, None,
        concatenate=True, new_axes={"t": t_max}, adjust_chunks={"p": 1},
        dtype=np.int64, meta=np.empty((0, 0), dtype=np.int64),
    )  # fmt: skip
    return per_chunk.sum(axis=0)


#: rows per step of the fused kernels: a (rows, 2T) float64 block stays in L2
_COUNT_ROWS = 1024

#: row blocks a uint8 counter adds before it is flushed into the int64 counts (255 at most)
_UINT8_BLOCKS = 255


def _fov_steps(
    position: np.ndarray,
    shift: np.ndarray,
    codes: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    half: np.ndarray,
    dtype: Any,
    out: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """Project a chunk ``_COUNT_ROWS`` particles at a time and test them against the image.

    ``bias`` is centred on the image. Yields, per step, a ``(m, T)`` bool block, True where
    both x and y lie inside; with ``out`` (``(n, T)`` bool) each block is also stored in its
    rows of ``out`` (written there directly when the chunk holds one experiment), else it
    is a view of a reused buffer. The projected block is tested while still in cache; no
    ``(n, 2T)`` temporary is ever allocated (the loop is over row blocks, never tilts or
    particles).

    Measured per 10^5 x 61 chunk (float64, one core): GEMM 3.5 ms, ``abs`` 1.8 ms, the
    comparison 2.4 ms against a full ``(rows, 2T)`` limit block (8.3 ms against a
    broadcast ``(2T,)`` row: numpy's broadcasting inner loop is not vectorised here),
    the pair test 0.3 ms.
    """
    points = _homogeneous(position, shift, dtype)
    width = weights.shape[2]
    step = max(1, min(points.shape[0], _COUNT_ROWS))
    limit = np.empty((step, width), dtype=dtype)
    limit[:] = np.tile(np.asarray(half, dtype=dtype), width // 2)
    xy = np.empty((step, width), dtype=dtype)
    inside = np.empty((step, width), dtype=bool)
    spare = np.empty((step, width // 2), dtype=bool)
    present = np.unique(codes) if weights.shape[0] > 1 else np.zeros(1, dtype=np.int64)
    for code in present:  # experiments in this chunk: usually one
        operator = _operator(weights, bias, code, dtype)
        rows: Any = slice(None) if len(present) == 1 else np.flatnonzero(codes == code)
        mine = points[rows]
        for start in range(0, mine.shape[0], step):
            m = min(step, mine.shape[0] - start)
            np.matmul(mine[start : start + m], operator, out=xy[:m])
            np.abs(xy[:m], out=xy[:m])
            np.less_equal(xy[:m], limit[:m], out=inside[:m])  # NaN (missing tilt) -> False
            direct = out is not None and isinstance(rows, slice)
            both = out[start : start + m] if direct else spare[:m]  # type: ignore[index]
            # inside in x and in y <=> both bytes of the (x, y) pair are 1
            np.equal(inside[:m].view(np.uint16), 0x0101, out=both)
            if out is not None and not direct:
                out[rows[start : start + m]] = both
            yield both


class _MaskChunk(np.ndarray):
    """A chunk of a fused field-of-view mask: its sum over particles counts without casting.

    ``np.sum`` of a bool ``(n, T)`` array over axis 0 casts every element to int64 on the
    way (12.5 ms per 10^5 x 61); here the bytes are added as uint8 (0.2 ms, see
    :func:`_column_sum`), so ``in_field_of_view(project(...)).sum("particle")`` -- dask calls
    ``np.sum`` on every chunk -- counts at the fused count's speed. Every other function
    and ufunc sees (and returns) plain :class:`numpy.ndarray`.

    Examples
    --------
    >>> m = np.array([[True, False], [True, True]]).view(_MaskChunk)
    >>> np.sum(m, axis=0).tolist(), np.sum(m, axis=(0,), keepdims=True).tolist(), int(np.sum(m))
    ([2, 1], [[2, 1]], 3)
    >>> type(np.concatenate([m, m])) is np.ndarray
    True
    """

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        if func is np.sum:
            fast = _column_sum(*args, **kwargs)
            if fast is not None:
                return fast
        return func(*_plain(args), **_plain(kwargs))

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        return getattr(ufunc, method)(*_plain(inputs), **_plain(kwargs))


def _plain(value: Any) -> Any:
    """``value`` with every :class:`_MaskChunk` in it (also in lists, tuples, dicts) as an ndarray."""
    if isinstance(value, _MaskChunk):
        return value.view(np.ndarray)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _column_sum(
    a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False, **rest: Any
) -> np.ndarray | None:
    """``np.sum(a, axis=0)`` of a 2-D bool array by halving in uint8; None for any other call.

    The bytes of the bottom half of the rows are added onto the top half (one vectorised
    add over whole rows), seven times, into one scratch array of half the size; then the
    at most ``n / 128`` remaining rows are summed as int64. 0.2 ms per 10^5 x 61, against
    12.5 ms for numpy's bool sum over axis 0 and 1.9 ms for uint8 sums over 255-row blocks.
    """
    axes = axis if isinstance(axis, tuple) else (axis,)
    if (
        out is not None
        or rest
        or not isinstance(a, np.ndarray)
        or a.dtype != bool
        or a.ndim != 2
        or axes not in ((0,), (-2,))
        or (dtype is not None and np.dtype(dtype).kind not in "iu")
    ):
        return None
    rows = a.view(np.ndarray).view(np.uint8)
    leftover = np.zeros(rows.shape[1], dtype=np.int64)
    for level in range(7):  # 7 halvings: a byte then holds at most 2**7 = 128
        n = rows.shape[0]
        if n < 64:
            break
        if n % 2:
            leftover += rows[n - 1]
            n -= 1
        half = rows[: n // 2] if level else np.empty((n // 2, rows.shape[1]), dtype=np.uint8)
        np.add(rows[: n // 2], rows[n // 2 : n], out=half)  # whole rows at once: SIMD over memory
        rows = half
    counts = rows.sum(axis=0, dtype=np.int64) + leftover
    counts = counts.astype(np.dtype(np.int64 if dtype is None else dtype), copy=False)
    return counts[None, :] if keepdims else counts


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
    for _ in _fov_steps(position, shift, codes, weights, bias, half, dtype, out=mask):
        pass
    return mask.view(_MaskChunk)


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
    (:func:`_fov_steps`), so no (n, 2T) temporary is ever allocated. Each step's bool
    block is added as bytes into a uint8 counter (0.2 ms per 10^5 x 61, against 8-10 ms
    for ``np.count_nonzero(..., axis=0)``), flushed into int64 every 255 steps.
    """
    t = weights.shape[2] // 2
    counts = np.zeros(t, dtype=np.int64)
    counter = np.zeros((max(1, min(position.shape[0], _COUNT_ROWS)), t), dtype=np.uint8)
    for k, inside in enumerate(_fov_steps(position, shift, codes, weights, bias, half, dtype), 1):
        m = inside.shape[0]
        np.add(counter[:m], inside.view(np.uint8), out=counter[:m])
        if k % _UINT8_BLOCKS == 0:
            counts += counter.sum(axis=0, dtype=np.int64)
            counter[:] = 0
    counts += counter.sum(axis=0, dtype=np.int64)
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
    counts = _count_graph(
        _kernel_inputs(poses, experiments, weights, centred_bias, dtype, pchunks), half, dtype, t_max
    )
    return xr.DataArray(
        counts,
        dims=("image",),
        coords={"image": np.arange(t_max)},
        name="n_in_field_of_view",
        attrs={"margin": float(margin)},
    )
