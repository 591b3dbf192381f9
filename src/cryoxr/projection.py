"""Projection of particles into every tilt image, as chunked dask work.

For each chunk of particles, one dense matrix product maps the ``(n, 3)`` positions
(``position + shift``) through the per-tilt projection matrices of their experiment,
stacked as a ``(3, 2 * n_tilts)`` matrix plus a bias: ``(n, 3) @ (3, 2T) -> (n, T, 2)``.
The matrices are computed once, enter the graph once (one key, shared by every task)
and are shipped once per worker on ``dask.distributed``. No Python loop runs over
tilts or particles; a chunk holding several experiments does one product per experiment.

Examples
--------
>>> import numpy as np
>>> import cryoxr
>>> poses = cryoxr.make_poseset([[50.0, 50.0, 10.0]], experiment_id="TS_01", pixel_spacing=1.0)
>>> model = cryoxr.make_projection_model(rotation_y=[0.0, 90.0], experiment_id="TS_01",
...                                      pixel_spacing=1.0)
>>> xy = cryoxr.project(poses, model, tomogram_dimensions=(100, 100, 20),
...                     tilt_image_center=(50, 50))
>>> xy.dims
('particle', 'image', 'axis')
>>> xy.values.round(6).tolist()
[[[50.0, 50.0], [50.0, 50.0]]]
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cryoxr.errors import InvalidValueError
from cryoxr.image import ArraySource, Image, validate_image
from cryoxr.poseset import DEFAULT_PARTICLE_CHUNK, experiment_ids, validate_poseset
from cryoxr.projection_model import PMDL, projection_model_to_projection_matrices, validate_projection_model

__all__ = [
    "count_in_field_of_view",
    "extract_subtilts",
    "in_field_of_view",
    "project",
    "project_into",
    "projection_operators",
]

Vector = Sequence[float] | np.ndarray
PerExperiment = Vector | Mapping[str, Vector]


def _for_experiment(value: PerExperiment | None, eid: str, name: str) -> Vector | None:
    if value is None or not isinstance(value, Mapping):
        return value
    if eid not in value:
        raise InvalidValueError(
            f"project: {name} is a mapping without an entry for experiment {eid!r} "
            f"(keys: {sorted(map(str, value))})"
        )
    return value[eid]


def projection_operators(
    poses: xr.Dataset,
    projection_model: pd.DataFrame,
    *,
    tomogram_dimensions: PerExperiment,
    tilt_image_center: PerExperiment,
    specimen_center: PerExperiment | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The per-experiment linear operators that :func:`project` applies.

    Positions (pixels of ``poses``) map to tilt-image pixels as
    ``xy[n, t, :] = (p[n] @ weights[e]).reshape(T, 2)[t] + bias[e].reshape(T, 2)[t]``,
    with the pixel-size ratio folded into ``weights``.

    Returns
    -------
    experiments : list of str
        Experiment ids, in the order of the operators.
    weights : numpy.ndarray
        (E, 3, 2 * T_max) float64; NaN where an experiment has fewer tilts.
    bias : numpy.ndarray
        (E, 2 * T_max) float64.
    n_tilts : numpy.ndarray
        (E,) tilts per experiment.
    pixel_spacing : numpy.ndarray
        (E,) Å per tilt-image pixel.
    """
    validate_projection_model(projection_model)
    wanted = experiment_ids(poses)
    model_ids = pd.unique(projection_model[PMDL.EXPERIMENT_ID].astype(str))
    missing = [e for e in wanted if e not in set(model_ids)]
    if missing:
        raise InvalidValueError(
            f"project: experiment(s) {missing} of the poses are absent from the projection "
            f"model, which holds {list(model_ids)}"
        )
    groups = {str(k): g for k, g in projection_model.groupby(PMDL.EXPERIMENT_ID, sort=False)}
    t_max = max(len(groups[e]) for e in wanted)
    ps_poses = float(poses.attrs["pixel_spacing"])
    weights = np.full((len(wanted), 3, 2 * t_max), np.nan)
    bias = np.full((len(wanted), 2 * t_max), np.nan)
    n_tilts = np.zeros(len(wanted), dtype=np.int64)
    spacing = np.zeros(len(wanted))
    for k, eid in enumerate(wanted):
        df = groups[eid]
        ps_model = float(df[PMDL.PIXEL_SPACING].iloc[0])
        ratio = ps_poses / ps_model
        dims = _for_experiment(tomogram_dimensions, eid, "tomogram_dimensions")
        centre_xy = _for_experiment(tilt_image_center, eid, "tilt_image_center")
        explicit = _for_experiment(specimen_center, eid, "specimen_center")
        if explicit is None:
            dims_arr = np.asarray(dims)
            if dims_arr.shape != (3,):
                raise InvalidValueError(f"project: tomogram_dimensions must be (x, y, z), found {dims!r}")
            centre = (dims_arr // 2).astype(np.float64)
        else:
            centre = np.asarray(explicit, dtype=np.float64)
        # everything on the tomogram side is in pixels of the poses: rescale to tilt pixels
        matrices = projection_model_to_projection_matrices(
            df, np.asarray(centre_xy, dtype=np.float64), (0, 0, 0), specimen_center=centre * ratio
        )
        t = len(df)
        # (T, 2, 4) -> weights (3, 2T) with column 2t + a, bias (2T,)
        rows = matrices[:, :2, :]
        weights[k, :, : 2 * t] = rows[:, :, :3].reshape(2 * t, 3).T * ratio
        bias[k, : 2 * t] = rows[:, :, 3].reshape(2 * t)
        n_tilts[k] = t
        spacing[k] = ps_model
    return list(wanted), weights, bias, n_tilts, spacing


def _homogeneous(position: np.ndarray, shift: np.ndarray, dtype: Any) -> np.ndarray:
    """(n, 4) ``[position + shift, 1]``: the bias rides in the GEMM as a fourth row."""
    points = np.empty((position.shape[0], 4), dtype=dtype)
    np.add(position, shift, out=points[:, :3])
    points[:, 3] = 1
    return points


def _operator(weights: np.ndarray, bias: np.ndarray, code: Any, dtype: Any) -> np.ndarray:
    """(4, 2T): an experiment's weights with its bias as the last row."""
    return np.concatenate([weights[code], bias[code][None, :]]).astype(dtype, copy=False)


def _project_block(
    position: np.ndarray,
    shift: np.ndarray,
    codes: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    dtype: Any,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One chunk: (n, 3) positions -> (n, T, 2) tilt-image xy, one GEMM per experiment.

    ``(n, 4) @ (4, 2T)`` writes the output once; adding the bias afterwards would read
    and write the whole (n, 2T) output a second time.
    """
    points = _homogeneous(position, shift, dtype)
    n = points.shape[0]
    width = weights.shape[2]
    if out is None:
        out = np.empty((n, width), dtype=dtype)
    present = np.unique(codes) if weights.shape[0] > 1 else np.zeros(1, dtype=np.int64)
    for code in present:  # experiments in this chunk: usually one
        operator = _operator(weights, bias, code, dtype)
        if len(present) == 1:
            np.matmul(points, operator, out=out)
        else:
            rows = codes == code
            out[rows] = points[rows] @ operator
    return out.reshape(n, width // 2, 2)


def _particle_codes(poses: xr.Dataset, experiments: list[str]) -> np.ndarray | None:
    if "experiment_id" not in poses.coords:
        return None
    values = np.asarray(poses.coords["experiment_id"].values)
    codes = pd.Categorical(values, categories=experiments).codes.astype(np.int64)
    return codes


def _codes(poses: xr.Dataset, experiments: list[str], chunks: tuple[int, ...]) -> da.Array:
    """Per-particle experiment codes; lazy zeros for a single-experiment set, so no (N,)
    array is embedded in the graph (80 MB at 10^7 particles, shipped on every compute
    by dask.distributed)."""
    codes = _particle_codes(poses, experiments)
    if codes is None:
        return da.zeros(poses.sizes["particle"], dtype=np.int64, chunks=(chunks,))
    return _chunked(codes, chunks)


def _kernel_inputs(
    poses: xr.Dataset,
    experiments: list[str],
    weights: np.ndarray,
    bias: np.ndarray,
    dtype: Any,
    pchunks: tuple[int, ...],
) -> list[Any]:
    """The (array, index) arguments every projection kernel takes, for ``da.blockwise``.

    Positions, shifts and experiment codes are chunked along ``p``; the operators enter the
    graph once each (one key shared by every task).
    """
    return [
        _chunked(poses["position"].data, pchunks), "pk",
        _chunked(poses["shift"].data, pchunks), "pk",
        _codes(poses, experiments, pchunks), "p",
        da.from_array(weights.astype(dtype), chunks=-1, name=False), "ekm",
        da.from_array(bias.astype(dtype), chunks=-1, name=False), "em",
    ]  # fmt: skip


def _chunked(arr: Any, chunks: tuple[int, ...]) -> da.Array:
    if isinstance(arr, da.Array):
        return arr.rechunk({0: chunks})
    arr = np.asarray(arr)
    all_chunks = (chunks, *tuple(-1 for _ in range(arr.ndim - 1)))
    # a random name: tokenizing would hash the whole array (~18 ms per 24 MB) on every call
    if _scheduler_ships_tasks():
        # each task carries its own slice: workers receive only the rows they project
        return da.from_array(arr, chunks=all_chunks, name=False)
    # in-process schedulers read the caller's array through views (dask copies a wrapped
    # ndarray: ~5 ms per 10^6 particles per call)
    return da.from_array(
        ArraySource(arr), chunks=all_chunks, name=False, asarray=False, lock=False,
        meta=np.empty((0,) * arr.ndim, dtype=arr.dtype),
    )  # fmt: skip


#: Particles per chunk for in-memory poses when tasks run in other processes
#: (dask.distributed, multiprocessing). Counting 10^7 x 61 on a 2-worker LocalCluster:
#: 1.2x the threaded time at 10^6-row chunks, 2.1x at 10^5 (benchmarks/README.md).
CLUSTER_PARTICLE_CHUNK = 1_000_000


def _particle_chunks(poses: xr.Dataset, chunks: int | None) -> tuple[int, ...]:
    n = poses.sizes["particle"]
    if chunks is not None:
        size = max(1, int(chunks))
    else:
        existing = poses["position"].chunksizes.get("particle") if poses["position"].chunks else None
        if existing:
            return tuple(existing)
        # a cluster pays per task (scheduler round trips, serialisation): fewer, bigger tasks
        size = CLUSTER_PARTICLE_CHUNK if _scheduler_ships_tasks() else DEFAULT_PARTICLE_CHUNK
    full, rest = divmod(n, size)
    return (size,) * full + ((rest,) if rest or n == 0 else ())


def project(
    poses: xr.Dataset,
    projection_model: pd.DataFrame,
    *,
    tomogram_dimensions: PerExperiment,
    tilt_image_center: PerExperiment,
    specimen_center: PerExperiment | None = None,
    chunks: int | None = None,
    dtype: Any = np.float64,
) -> xr.DataArray:
    """Project every particle into every tilt image of its experiment, lazily.

    Parameters
    ----------
    poses
        A PoseSet. The projected point is ``position + shift``.
    projection_model
        A ProjectionModel holding every experiment of ``poses``.
    tomogram_dimensions
        Tomogram size (x, y, z) in pixels **of the poses**; a mapping experiment_id ->
        size for multi-tomogram sets. The specimen centre is ``dims // 2`` (cryotypes).
    tilt_image_center
        Rotation centre in the tilt images (x, y), tilt-image pixels; or a mapping.
    specimen_center
        Explicit xyz centre in pixels of the poses (e.g. IMOD's ``(N - 1) / 2``); or a
        mapping. Overrides the ``dims // 2`` rule.
    chunks
        Particles per chunk. Default: the chunking of ``poses``, else 100,000 (1,000,000
        when a ``distributed.Client`` or the processes scheduler is active).
    dtype
        Output dtype, float64 (default) or float32.

    Returns
    -------
    xarray.DataArray
        Lazy, dims ``("particle", "image", "axis")``, axis coords ``["x", "y"]``,
        tilt-image pixels; ``image`` has the largest tilt count; tilts an experiment
        lacks are NaN. attrs ``pixel_spacing`` (Å per tilt-image pixel, when all
        experiments share one).

    Notes
    -----
    Units: when the poses' ``pixel_spacing`` differs from the model's (a binned
    tomogram, unbinned tilts), positions and the specimen centre are scaled by
    ``ratio = poses.pixel_spacing / model.pixel_spacing`` before projection. Worked
    example: a particle at (100, 100, 50) in a 4x binned tomogram (5.4 Å/px) of size
    (1024, 1024, 256) projects at a 0-degree tilt (1.35 Å/px, centre (2048, 2048)) to
    ``(100 - 512) * 4 + 2048 = 400`` in x and y.

    Examples
    --------
    >>> import numpy as np
    >>> import cryoxr
    >>> poses = cryoxr.make_poseset([[100.0, 100.0, 50.0]], experiment_id="t", pixel_spacing=5.4)
    >>> model = cryoxr.make_projection_model(experiment_id="t", pixel_spacing=1.35)
    >>> project(poses, model, tomogram_dimensions=(1024, 1024, 256),
    ...         tilt_image_center=(2048, 2048)).values.tolist()
    [[[400.0, 400.0]]]
    """
    validate_poseset(poses, check_values=False)
    experiments, weights, bias, _n_tilts, spacing = projection_operators(
        poses,
        projection_model,
        tomogram_dimensions=tomogram_dimensions,
        tilt_image_center=tilt_image_center,
        specimen_center=specimen_center,
    )
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise InvalidValueError(f"project: dtype must be float64 or float32, found {dtype}")
    pchunks = _particle_chunks(poses, chunks)
    t_max = weights.shape[2] // 2
    out = da.blockwise(
        _project_block,
        "pta",
        *_kernel_inputs(poses, experiments, weights, bias, dtype, pchunks),
        dtype,
        None,
        concatenate=True,
        new_axes={"t": t_max, "a": 2},
        meta=np.empty((0, 0, 0), dtype=dtype),
    )
    coords: dict[str, Any] = {"image": np.arange(t_max), "axis": ["x", "y"]}
    if "experiment_id" in poses.coords:
        coords["experiment_id"] = ("particle", np.asarray(poses.coords["experiment_id"].values))
    attrs: dict[str, Any] = {"units": "pixel", "experiment_ids": experiments}
    if len(set(spacing.tolist())) == 1:
        attrs["pixel_spacing"] = float(spacing[0])
    return xr.DataArray(out, dims=("particle", "image", "axis"), coords=coords, attrs=attrs, name="projected")


class _Target:
    """A write target that enters the graph by reference, tokenised by identity (never hashed)."""

    def __init__(self, array: Any) -> None:
        self.array = array

    def __dask_tokenize__(self) -> tuple[str, int]:
        return ("cryoxr-target", id(self.array))


def _project_into_block(
    position: np.ndarray,
    shift: np.ndarray,
    codes: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    starts: np.ndarray,
    dtype: Any,
    target: _Target,
) -> np.ndarray:
    """Project one chunk straight into its rows of the target; returns the row count."""
    n = position.shape[0]
    start = int(starts[0])
    array = target.array
    if isinstance(array, np.ndarray) and array.flags.c_contiguous and array.dtype == dtype:
        # the GEMM writes into the target's own memory: no chunk-sized temporary, no copy
        _project_block(
            position, shift, codes, weights, bias, dtype, out=array[start : start + n].reshape(n, -1)
        )
    else:
        array[start : start + n] = _project_block(position, shift, codes, weights, bias, dtype)
    return np.array([n], dtype=np.int64)


def _scheduler_ships_tasks() -> bool:
    """Whether the active dask scheduler runs tasks in other processes (copies of the target)."""
    import dask.base
    import dask.multiprocessing

    get = dask.base.get_scheduler()
    owner = getattr(get, "__self__", None)
    return get is dask.multiprocessing.get or type(owner).__name__ == "Client"


def _local_threads() -> int:
    """Worker threads of dask's local threaded scheduler."""
    import dask
    import dask.system

    return max(1, int(dask.config.get("num_workers", None) or dask.system.CPU_COUNT))


def _one_blas_thread_per_task() -> contextlib.AbstractContextManager[Any]:
    """Limit BLAS to one thread while the local threaded scheduler runs GEMM tasks.

    Each task's ``(n, 4) @ (4, 2T)`` is bound by memory writes; with dask running one task
    per core, BLAS's own threads only oversubscribe the cores (measured at 10^6 x 61:
    430 -> 538 M particle-tilts/s on 2 cores). The limit is process-wide while it lasts.
    """
    import dask.base
    import dask.threaded

    if dask.base.get_scheduler() not in (None, dask.threaded.get):  # None: arrays' default, threads
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def project_into(
    out: Any,
    poses: xr.Dataset,
    projection_model: pd.DataFrame,
    *,
    tomogram_dimensions: PerExperiment,
    tilt_image_center: PerExperiment,
    specimen_center: PerExperiment | None = None,
    chunks: int | None = None,
    compute: bool = True,
) -> Any:
    """Project into a preallocated ``(N, T, 2)`` array (numpy, memmap or zarr), chunk by chunk.

    The values are those of :func:`project`, but each task writes its rows straight into
    ``out`` -- for a C-contiguous numpy array of the same dtype the GEMM's output *is*
    the target -- so no chunk-sized temporary is allocated and nothing is copied twice.
    Use it when the result must be materialised (numpy) or persisted (zarr); reductions
    are better served by :func:`project` or :func:`count_in_field_of_view`.

    Numpy and memmap targets need a threaded (or synchronous) scheduler; on
    dask.distributed use a zarr array (each task writes its own rows; align zarr chunks
    with ``chunks`` along the first axis so no two tasks share a zarr chunk).

    Parameters
    ----------
    out
        Target of shape ``(n_particles, n_tilts, 2)`` and dtype float64 or float32.
    poses, projection_model, tomogram_dimensions, tilt_image_center, specimen_center
        As for :func:`project`.
    chunks
        Particles per task. Default: the chunking of ``poses``; for in-memory poses and a
        numpy target, two tasks per dask worker thread (at least 100,000 particles: the
        GEMM writes into the target, so a task holds only its (n, 4) input; fewer tasks
        cost less scheduling, 1.08x against 1.25x (c)'s time at 10^6 x 61 on 2 cores),
        else as for :func:`project`.
    compute
        Run now (default) and return ``out``; else return the lazy dask array of rows
        written per chunk (compute it to fill ``out``).

    Examples
    --------
    >>> import numpy as np
    >>> import cryoxr
    >>> poses = cryoxr.make_poseset(np.ones((5, 3)), experiment_id="t", pixel_spacing=1.0)
    >>> model = cryoxr.make_projection_model(rotation_y=[0.0, 45.0], experiment_id="t", pixel_spacing=1.0)
    >>> out = np.empty((5, 2, 2))
    >>> _ = project_into(out, poses, model, tomogram_dimensions=(4, 4, 4), tilt_image_center=(2, 2), chunks=2)
    >>> bool(np.allclose(out, project(poses, model, tomogram_dimensions=(4, 4, 4),
    ...                               tilt_image_center=(2, 2)).values))
    True
    """
    validate_poseset(poses, check_values=False)
    experiments, weights, bias, _, _ = projection_operators(
        poses,
        projection_model,
        tomogram_dimensions=tomogram_dimensions,
        tilt_image_center=tilt_image_center,
        specimen_center=specimen_center,
    )
    n, t_max = poses.sizes["particle"], weights.shape[2] // 2
    shape = tuple(getattr(out, "shape", ()))
    dtype = np.dtype(getattr(out, "dtype", None))
    if shape != (n, t_max, 2):
        raise InvalidValueError(f"project_into: out must have shape {(n, t_max, 2)}, found {shape}")
    if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise InvalidValueError(f"project_into: out must be float64 or float32, found {dtype}")
    if isinstance(out, np.ndarray) and _scheduler_ships_tasks():
        raise InvalidValueError(
            "project_into: a numpy or memmap target is written only in this process; the active dask "
            "scheduler runs tasks elsewhere (processes or dask.distributed): pass a zarr array instead"
        )
    if chunks is None and isinstance(out, np.ndarray) and poses["position"].chunks is None:
        chunks = max(DEFAULT_PARTICLE_CHUNK, -(-n // (2 * _local_threads())))
    pchunks = _particle_chunks(poses, chunks)
    starts = np.cumsum((0, *pchunks[:-1])).astype(np.int64)
    written = da.blockwise(
        _project_into_block,
        "p",
        *_kernel_inputs(poses, experiments, weights, bias, dtype, pchunks),
        da.from_array(starts, chunks=1),
        "p",
        dtype,
        None,
        _Target(out),
        None,
        concatenate=True,
        align_arrays=False,
        adjust_chunks={"p": 1},
        dtype=np.int64,
        meta=np.empty((0,), dtype=np.int64),
    )
    if not compute:
        return written
    with _one_blas_thread_per_task():
        total = int(written.sum().compute())
    if total != n:  # every row written exactly once
        raise InvalidValueError(f"project_into: wrote {total} rows, expected {n}")
    return out


def _check_projected(projected: xr.DataArray, where: str) -> None:
    if not isinstance(projected, xr.DataArray) or projected.dims != ("particle", "image", "axis"):
        dims = getattr(projected, "dims", None)
        raise InvalidValueError(
            f"{where}: projected positions must be a DataArray with dims "
            f"('particle', 'image', 'axis'), found {dims}"
        )


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
    if isinstance(data, da.Array):
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

    Works through the chunk ``_COUNT_ROWS`` particles at a time in two reused buffers,
    so the projected block is tested while still in cache and no (n, 2T) temporary is
    ever allocated (the loop is over row blocks, never over tilts or particles).
    """
    points = _homogeneous(position, shift, dtype)  # bias is centred
    width = weights.shape[2]
    limit = np.tile(np.asarray(half, dtype=dtype), width // 2)
    counts = np.zeros(width // 2, dtype=np.int64)
    step = max(1, min(points.shape[0], _COUNT_ROWS))
    xy = np.empty((step, width), dtype=dtype)
    inside = np.empty((step, width), dtype=bool)
    present = np.unique(codes) if weights.shape[0] > 1 else np.zeros(1, dtype=np.int64)
    for code in present:  # experiments in this chunk: usually one
        operator = _operator(weights, bias, code, dtype)
        mine = points if len(present) == 1 else points[codes == code]
        for start in range(0, mine.shape[0], step):
            m = min(step, mine.shape[0] - start)
            np.matmul(mine[start : start + m], operator, out=xy[:m])
            np.abs(xy[:m], out=xy[:m])
            np.less_equal(xy[:m], limit, out=inside[:m])  # NaN (missing tilt) -> False
            # inside in x and in y <=> both bytes of the (x, y) pair are 1
            counts += np.count_nonzero(inside[:m].view(np.uint16) == 0x0101, axis=0)
    return counts[None, :]


def count_in_field_of_view(
    poses: xr.Dataset,
    projection_model: pd.DataFrame,
    *,
    tomogram_dimensions: PerExperiment,
    tilt_image_center: PerExperiment,
    image_shape: Sequence[int],
    margin: float = 0.0,
    specimen_center: PerExperiment | None = None,
    chunks: int | None = None,
    dtype: Any = np.float64,
) -> xr.DataArray:
    """Count, per tilt, the particles that project inside the tilt image, streaming.

    Equal to ``in_field_of_view(project(...), ...).sum("particle")`` but fused into one
    kernel per chunk (project, test, count), so 10^7 particles x 61 tilts run at GEMM
    speed with memory bounded by one chunk per worker. Arguments as :func:`project`
    and :func:`in_field_of_view`.

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
    validate_poseset(poses, check_values=False)
    experiments, weights, bias, _, _ = projection_operators(
        poses,
        projection_model,
        tomogram_dimensions=tomogram_dimensions,
        tilt_image_center=tilt_image_center,
        specimen_center=specimen_center,
    )
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
