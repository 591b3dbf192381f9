"""Projection of particles into every tilt image, as chunked dask work.

For each chunk of particles, one dense matrix product maps the ``(n, 3)`` positions
(``position + shift``) through the per-tilt projection matrices of their experiment,
stacked as a ``(3, 2 * n_tilts)`` matrix plus a bias: ``(n, 3) @ (3, 2T) -> (n, T, 2)``.
The matrices are computed once, enter the graph once (one key, shared by every task)
and are shipped once per worker on ``dask.distributed``. No Python loop runs over
tilts or particles; a chunk holding several experiments does one product per experiment.

The field-of-view tests (:mod:`cryoxr.field_of_view`) and the patch extraction
(:mod:`cryoxr.extraction`) build on the operators, kernels and chunking defined here.

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
import functools
from typing import Any, Literal, overload

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cryoxr._shared_output import SharedOutput, share_output
from cryoxr._shared_output import scheduler_ships_tasks as _scheduler_ships_tasks
from cryoxr.errors import InvalidValueError
from cryoxr.geometry import PerExperiment, projection_operators
from cryoxr.image import ArraySource
from cryoxr.poseset import DEFAULT_PARTICLE_CHUNK, validate_poseset

__all__ = [
    "PerExperiment",
    "project",
    "project_into",
    "projection_operators",
]


def _checked_operators(
    poses: xr.Dataset,
    projection_model: pd.DataFrame,
    tomogram_dimensions: PerExperiment | None,
    tilt_image_center: PerExperiment | None,
    specimen_center: PerExperiment | None,
    *,
    depth: bool = False,
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Check the poses' structure and build their operators, as every projection kernel needs.

    Returns ``experiments, weights, bias, pixel_spacing`` of :func:`projection_operators`.
    """
    validate_poseset(poses, check_values=False)
    experiments, weights, bias, _, spacing = projection_operators(
        poses,
        projection_model,
        tomogram_dimensions=tomogram_dimensions,
        tilt_image_center=tilt_image_center,
        specimen_center=specimen_center,
        depth=depth,
    )
    return experiments, weights, bias, spacing


def _check_float(dtype: np.dtype, what: str) -> None:
    """Projections are written as float64 or float32 only."""
    if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise InvalidValueError(f"{what} must be float64 or float32, found {dtype}")


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
    k: int = 2,
) -> np.ndarray:
    """One chunk: (n, 3) positions -> (n, T, k) outputs per tilt, one GEMM per experiment.

    ``(n, 4) @ (4, kT)`` writes the output once; adding the bias afterwards would read
    and write the whole (n, kT) output a second time. ``k`` is 2 (tilt-image x, y) or 3
    (and the depth).
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
    return out.reshape(n, width // k, k)


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
        return _zero_codes(poses.sizes["particle"], chunks)
    return _chunked(codes, chunks)


@functools.lru_cache(maxsize=16)
def _zero_codes(n: int, chunks: tuple[int, ...]) -> da.Array:
    """Lazy int64 zeros, built once per shape: ``da.zeros`` tokenizes its arguments (~7 ms a call)."""
    return da.zeros(n, dtype=np.int64, chunks=(chunks,))


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


class _Projection:
    """How :func:`project` built a dask array: kernels downstream fuse the projection into theirs.

    Held by the dask array :func:`project` returns (attribute ``_cryoxr_projection``);
    any operation on that array makes a new dask array without it, so only the very
    array :func:`project` returned (same dask name) is recognised by :func:`projection_of`.
    """

    __slots__ = ("bias", "dtype", "experiments", "inputs", "name", "pchunks", "poses", "weights")

    def __init__(
        self,
        name: str,
        poses: xr.Dataset,
        experiments: list[str],
        inputs: list[Any],
        weights: np.ndarray,
        bias: np.ndarray,
        dtype: np.dtype,
        pchunks: tuple[int, ...],
    ) -> None:
        # poses and experiments let a kernel re-chunk the inputs its own way (subtilt blocks)
        self.name, self.poses, self.experiments, self.inputs = name, poses, experiments, inputs
        self.weights, self.bias, self.dtype, self.pchunks = weights, bias, dtype, pchunks

    def kernel_inputs(self, bias: np.ndarray | None = None) -> list[Any]:
        """The :func:`_kernel_inputs` :func:`project` used (the same dask arrays), with another bias
        (a centred one, say)."""
        if bias is None:
            return list(self.inputs)
        return [*self.inputs[:-2], da.from_array(bias.astype(self.dtype), chunks=-1, name=False), "em"]


def projection_of(data: Any) -> _Projection | None:
    """How :func:`project` made ``data``, when ``data`` is exactly the dask array it returned."""
    recipe = getattr(data, "_cryoxr_projection", None)
    if isinstance(recipe, _Projection) and isinstance(data, da.Array) and data.name == recipe.name:
        return recipe
    return None


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


@overload
def project(
    poses: xr.Dataset,
    projection_model: pd.DataFrame,
    *,
    tomogram_dimensions: PerExperiment | None = ...,
    tilt_image_center: PerExperiment | None = ...,
    specimen_center: PerExperiment | None = ...,
    chunks: int | None = ...,
    dtype: Any = ...,
    return_depth: Literal[False] = ...,
) -> xr.DataArray: ...


@overload
def project(
    poses: xr.Dataset,
    projection_model: pd.DataFrame,
    *,
    tomogram_dimensions: PerExperiment | None = ...,
    tilt_image_center: PerExperiment | None = ...,
    specimen_center: PerExperiment | None = ...,
    chunks: int | None = ...,
    dtype: Any = ...,
    return_depth: Literal[True],
) -> xr.Dataset: ...


def project(
    poses: xr.Dataset,
    projection_model: pd.DataFrame,
    *,
    tomogram_dimensions: PerExperiment | None = None,
    tilt_image_center: PerExperiment | None = None,
    specimen_center: PerExperiment | None = None,
    chunks: int | None = None,
    dtype: Any = np.float64,
    return_depth: bool = False,
) -> xr.DataArray | xr.Dataset:
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
        Default: the model's ``tomogram_size_x/_y/_z`` columns (pixels of the model).
    tilt_image_center
        Rotation centre in the tilt images (x, y), tilt-image pixels; or a mapping.
        Default: the model's ``tilt_image_center_x/_y`` columns.
    specimen_center
        Explicit xyz centre in pixels of the poses (e.g. IMOD's ``(N - 1) / 2``); or a
        mapping. Overrides the ``dims // 2`` rule.
    chunks
        Particles per chunk. Default: the chunking of ``poses``, else 100,000 (1,000,000
        when a ``distributed.Client`` or the processes scheduler is active).
    dtype
        Output dtype, float64 (default) or float32.
    return_depth
        Also return the depth of each particle along the beam in every tilt: the third
        row of the projection, ``(R (p - specimen_center))_z`` in pixels of the model
        (positive towards the viewer, +z of the rotated specimen); computed in the same
        GEMM as x and y.

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        Lazy, dims ``("particle", "image", "axis")``, axis coords ``["x", "y"]``,
        tilt-image pixels; ``image`` has the largest tilt count; tilts an experiment
        lacks are NaN. attrs ``pixel_spacing`` (Å per tilt-image pixel, when all
        experiments share one). With ``return_depth``: a Dataset of that array
        (``projected``) and ``depth`` (dims ``("particle", "image")``, model pixels).
        Computed by itself on an in-process scheduler (``.compute()``, ``.values``), the
        array's tasks write their rows straight into one result, so the peak is the
        result plus one chunk's inputs per thread (dask would hold every chunk and their
        concatenation: twice the result); everything built on it streams chunk by chunk,
        and ``in_field_of_view`` of it fuses projection and test into one kernel.

    Raises
    ------
    InvalidValueError
        An experiment without tomogram size or tilt-image centre (neither argument nor
        column: the message names both), or absent from the model.

    Notes
    -----
    Units: when the poses' ``pixel_spacing`` differs from the model's (a binned
    tomogram, unbinned tilts), positions and the specimen centre are scaled by
    ``ratio = poses.pixel_spacing / model.pixel_spacing`` before projection. Worked
    example: a particle at (100, 100, 50) in a 4x binned tomogram (5.4 Å/px) of size
    (1024, 1024, 256) projects at a 0-degree tilt (1.35 Å/px, centre (2048, 2048)) to
    ``(100 - 512) * 4 + 2048 = 400`` in x and y. :mod:`cryoxr.geometry` gives the rules.

    Examples
    --------
    >>> import numpy as np
    >>> import cryoxr
    >>> poses = cryoxr.make_poseset([[100.0, 100.0, 50.0]], experiment_id="t", pixel_spacing=5.4)
    >>> model = cryoxr.make_projection_model(experiment_id="t", pixel_spacing=1.35)
    >>> project(poses, model, tomogram_dimensions=(1024, 1024, 256),
    ...         tilt_image_center=(2048, 2048)).values.tolist()
    [[[400.0, 400.0]]]

    The same geometry from the model's columns, with the depth (bin-1 pixels):

    >>> model = model.assign(tomogram_size_x=4096, tomogram_size_y=4096, tomogram_size_z=1024,
    ...                      tilt_image_center_x=2048.0, tilt_image_center_y=2048.0)
    >>> out = project(poses, model, return_depth=True)
    >>> out.projected.values.tolist(), out.depth.values.tolist()
    ([[[400.0, 400.0]]], [[-312.0]])
    """
    experiments, weights, bias, spacing = _checked_operators(
        poses, projection_model, tomogram_dimensions, tilt_image_center, specimen_center, depth=return_depth
    )
    dtype = np.dtype(dtype)
    _check_float(dtype, "project: dtype")
    pchunks = _particle_chunks(poses, chunks)
    k = 3 if return_depth else 2
    t_max = weights.shape[2] // k
    inputs = _kernel_inputs(poses, experiments, weights, bias, dtype, pchunks)
    out = da.blockwise(
        _project_block, "pta", *inputs, dtype, None, None, None, k, None,
        concatenate=True, new_axes={"t": t_max, "a": k}, meta=np.empty((0, 0, 0), dtype=dtype),
    )  # fmt: skip
    coords: dict[str, Any] = {"image": np.arange(t_max), "axis": ["x", "y"]}
    if "experiment_id" in poses.coords:
        coords["experiment_id"] = ("particle", np.asarray(poses.coords["experiment_id"].values))
    attrs: dict[str, Any] = {"units": "pixel", "experiment_ids": experiments}
    if len(set(spacing.tolist())) == 1:
        attrs["pixel_spacing"] = float(spacing[0])
    dims = ("particle", "image", "axis")
    if not return_depth:
        # computed alone, the chunks are written into one output (no concatenation)
        shared: Any = share_output(out, functools.partial(_rows_written, out.name, inputs, pchunks, dtype))
        out = shared
        # what a fused kernel (the field-of-view test) needs to redo this projection itself
        out._cryoxr_projection = _Projection(
            out.name, poses, experiments, inputs, weights, bias, dtype, pchunks
        )
        return xr.DataArray(out, dims=dims, coords=coords, attrs=attrs, name="projected")
    projected = xr.DataArray(out[:, :, :2], dims=dims, coords=coords, attrs=attrs, name="projected")
    depth_coords = {k: v for k, v in coords.items() if k != "axis"}
    depth_attrs = {"units": "pixel", "experiment_ids": experiments, "long_name": "depth along the beam"}
    depth = xr.DataArray(out[:, :, 2], dims=dims[:2], coords=depth_coords, attrs=depth_attrs, name="depth")
    return xr.Dataset({"projected": projected, "depth": depth})


def _project_rows_block(
    position: np.ndarray,
    shift: np.ndarray,
    codes: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    starts: np.ndarray,
    dtype: Any,
    target: SharedOutput,
) -> np.ndarray:
    """Project one chunk into its rows of a shared output; returns those rows (a view)."""
    n = position.shape[0]
    rows = target.rows(int(starts[0]), n)
    _project_block(position, shift, codes, weights, bias, dtype, out=rows.reshape(n, -1))
    return rows


def _rows_written(
    name: str, inputs: list[Any], pchunks: tuple[int, ...], dtype: np.dtype, target: SharedOutput
) -> da.Array:
    """The graph of :func:`project`'s array ``name`` whose tasks write into ``target``."""
    starts = np.cumsum((0, *pchunks[:-1])).astype(np.int64)
    return da.blockwise(
        _project_rows_block, "pta", *inputs, da.from_array(starts, chunks=1), "p", dtype, None,
        target, None, name=name, concatenate=True, align_arrays=False,
        new_axes={"t": target.shape[1], "a": 2}, meta=np.empty((0, 0, 0), dtype=dtype),
    )  # fmt: skip


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
    tomogram_dimensions: PerExperiment | None = None,
    tilt_image_center: PerExperiment | None = None,
    specimen_center: PerExperiment | None = None,
    chunks: int | None = None,
    compute: bool = True,
) -> Any:
    """Project into a preallocated ``(N, T, 2)`` array (numpy, memmap or zarr), chunk by chunk.

    The values are those of :func:`project`, but each task writes its rows straight into
    ``out`` -- for a C-contiguous numpy array of the same dtype the GEMM's output *is*
    the target -- so no chunk-sized temporary is allocated and nothing is copied twice.
    Use it to fill an array you own (numpy, memmap) or to persist (zarr); into memory,
    ``project(...).compute()`` also writes each chunk once, into a fresh result; reductions
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
    experiments, weights, bias, _ = _checked_operators(
        poses, projection_model, tomogram_dimensions, tilt_image_center, specimen_center
    )
    n, t_max = poses.sizes["particle"], weights.shape[2] // 2
    shape = tuple(getattr(out, "shape", ()))
    dtype = np.dtype(getattr(out, "dtype", None))
    if shape != (n, t_max, 2):
        raise InvalidValueError(f"project_into: out must have shape {(n, t_max, 2)}, found {shape}")
    _check_float(dtype, "project_into: out")
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
    """Refuse anything but the ``("particle", "image", "axis")`` DataArray of :func:`project`."""
    if not isinstance(projected, xr.DataArray) or projected.dims != ("particle", "image", "axis"):
        dims = getattr(projected, "dims", None)
        raise InvalidValueError(
            f"{where}: projected positions must be a DataArray with dims "
            f"('particle', 'image', 'axis'), found {dims}"
        )
