"""Subtomograms: boxes cut from tomograms around particles, rotated into the reference frame.

:func:`extract_subtomograms` builds, lazily, one ``box_size`` cube per particle. The box
samples the tomogram at ``R @ u + p`` for reference coordinates ``u`` (pixels, box centre
at index ``box_size // 2``), where ``p = position + shift`` and ``R`` is the particle's
orientation (cryotypes: it turns the reference's basis into the tomogram frame), so a
particle planted as ``template(R.T @ (x - p))`` comes out as the template itself.

How the work is cut (the plan, made from the poses alone, before any voxel is read):

- every particle's sample points span an axis-aligned box in the tomogram, computed
  exactly from the eight corners of the rotated box; a box reaching outside the
  tomogram is flagged (``at_edge``) and its outside samples are filled;
- particles are sorted by tomogram cell (cubes of about 200 voxels for a 32-box) and, in a
  cell, along a Morton curve, then cut into tasks of at most ``particles_per_task``;
- each task reads only the region that bounds its own particles (a slice of the dask
  array: for MRC and OME-Zarr files dask turns it into a read of just that region), so
  memory per task is one region plus its boxes, whatever the number of particles.

Interpolation: ``order=1`` is trilinear, written out in numpy (the same numbers as
``scipy.ndimage.map_coordinates(order=1)`` to float32 rounding, about 3x faster);
``order=3`` is scipy's cubic B-spline, prefiltered once per region with ``mode="mirror"``
and a margin of :data:`SPLINE_MARGIN` voxels, so it matches a whole-volume
``map_coordinates(order=3, mode="mirror")`` to ~1e-7 of the signal.

Examples
--------
>>> import numpy as np
>>> import cryoxr
>>> tomo = cryoxr.Tomogram.from_array(np.arange(512.0).reshape(8, 8, 8), pixel_spacing=2.0,
...                                   experiment_id="t")
>>> poses = cryoxr.make_poseset([[4.0, 4.0, 4.0]], experiment_id="t", pixel_spacing=2.0)
>>> boxes = extract_subtomograms(tomo, poses, box_size=2)
>>> boxes.dims, boxes.values[0, 1, 1, 1] == tomo.data.values[4, 4, 4]
(('particle', 'z', 'y', 'x'), np.True_)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryoxr.errors import InvalidValueError, SchemaError
from cryoxr.image import Image, validate_image
from cryoxr.poseset import experiment_ids, validate_poseset

__all__ = ["ORDERS", "SPLINE_MARGIN", "Tomograms", "extract_subtomograms"]

#: a tomogram for a one-experiment set, or experiment_id -> tomogram, or a function opening one by id
Tomograms: TypeAlias = Image | xr.DataArray | Mapping[str, Image | xr.DataArray] | Callable[[str], Any]
#: interpolation orders: 1 (trilinear) and 3 (cubic B-spline)
ORDERS = (1, 3)
#: voxels read around each region for order 3: the spline prefilter's edge effect decays as
#: 0.268 ** distance, 2e-7 after 12 voxels
SPLINE_MARGIN = 12
#: a sample is inside the tomogram when 0 - TOLERANCE <= index <= n - 1 + TOLERANCE
TOLERANCE = 1e-6
#: largest region a task reads, in voxels (64 MiB of float32; a quarter for order 3): sets
#: the cell size
REGION_VOXELS = 2**24
#: output bytes per extraction task (its boxes)
TASK_BYTES = 32 * 2**20
#: samples per vectorised interpolation call (several small boxes go together)
SAMPLES_PER_CALL = 2**15


@dataclass
class Particles:
    """One experiment's particles, in memory, in the tomogram's index space."""

    index: np.ndarray  # (n,) position in the PoseSet
    position: np.ndarray  # (n, 3) xyz, tomogram voxel indices (centre of the first voxel = 0)
    matrix: np.ndarray  # (n, 3, 3) sampling matrices (orientation, or identity)
    lo: np.ndarray  # (n, 3) xyz lowest sample coordinate
    hi: np.ndarray  # (n, 3) xyz highest sample coordinate
    at_edge: np.ndarray  # (n,) some sample lies outside the tomogram
    columns: dict[str, np.ndarray]  # requested per-particle variables


@dataclass
class Task:
    """The particles one task samples and the region (z, y, x slices) it reads."""

    members: np.ndarray  # indices into Particles
    start: np.ndarray  # (3,) zyx first voxel of the region
    stop: np.ndarray  # (3,) zyx end (exclusive)


def check_box(box_size: Any, order: Any, where: str) -> tuple[int, int]:
    """Validated ``(box_size, order)``."""
    box = int(box_size) if isinstance(box_size, int | np.integer) else -1
    if box < 1:
        raise InvalidValueError(f"{where}: box_size must be an int >= 1, found {box_size!r}")
    if order not in ORDERS:
        raise InvalidValueError(f"{where}: order must be one of {ORDERS}, found {order!r}")
    return box, int(order)


def resolve_tomograms(tomograms: Tomograms, ids: list[str], where: str) -> dict[str, xr.DataArray]:
    """experiment_id -> validated 3D tomogram DataArray, for every id of the poses."""
    out: dict[str, xr.DataArray] = {}
    if isinstance(tomograms, Image | xr.DataArray):
        if len(ids) > 1:
            raise InvalidValueError(
                f"{where}: the poses span {len(ids)} experiments ({', '.join(ids[:5])}...), one "
                "tomogram was given; pass a mapping experiment_id -> tomogram or a function opening one"
            )
        data = validate_image(tomograms, ndim=3, stack=False)
        return {ids[0] if ids else str(data.attrs["experiment_id"]): data}
    for eid in ids:
        if isinstance(tomograms, Mapping):
            if eid not in tomograms:
                known = ", ".join(map(str, list(tomograms)[:10])) or "none"
                raise InvalidValueError(
                    f"{where}: no tomogram for experiment_id {eid!r}; the mapping has {known}"
                )
            found = tomograms[eid]
        elif callable(tomograms):
            found = tomograms(eid)
        else:
            raise InvalidValueError(
                f"{where}: tomograms must be an Image, a mapping experiment_id -> Image or a function "
                f"opening one by id, found {type(tomograms).__name__}"
            )
        if not isinstance(found, Image | xr.DataArray):
            raise SchemaError(f"{where}: the tomogram for {eid!r} is a {type(found).__name__}, not an Image")
        out[eid] = validate_image(found, ndim=3, stack=False)
    return out


def _offsets(box: int) -> tuple[float, float]:
    """Lowest and highest reference coordinate of a box axis (centre at ``box // 2``)."""
    return float(-(box // 2)), float(box - 1 - box // 2)


def pose_particles(
    poses: xr.Dataset,
    tomograms: dict[str, xr.DataArray],
    *,
    box: int,
    rotate: bool,
    columns: tuple[str, ...] = (),
) -> dict[str, Particles]:
    """Per experiment: particle positions (tomogram voxels), matrices, extents and edge flags.

    Positions go through Å: ``index = ((position + shift) * poses.pixel_spacing - coord[0])
    / tomogram.pixel_spacing`` per axis, so poses at another pixel spacing (bin-4 picks on a
    bin-2 tomogram) land where they belong, and so does a cropped or binned tomogram whose
    coords do not start at 0. A dask-backed PoseSet is computed here, once (position,
    shift, orientation and the requested columns: no voxels).
    """
    arrays = {name: poses[name].data for name in ("position", "shift", "orientation", *columns)}
    computed = dict(zip(arrays, dask.compute(*arrays.values()), strict=True))
    spacing = float(poses.attrs["pixel_spacing"])
    absolute = (np.asarray(computed["position"]) + np.asarray(computed["shift"])) * spacing
    quats = np.asarray(computed["orientation"], dtype=np.float64).reshape(-1, 4)
    n = absolute.shape[0]
    if "experiment_id" in poses.coords:
        labels = np.asarray(poses.coords["experiment_id"].values).astype(str)
    else:
        labels = np.full(n, str(poses.attrs["experiment_id"]))
    low, high = _offsets(box)
    out: dict[str, Particles] = {}
    for eid, tomo in tomograms.items():
        index = np.flatnonzero(labels == eid) if len(tomograms) > 1 else np.arange(n)
        t_spacing = float(tomo.attrs["pixel_spacing"])
        origin = np.array([float(tomo.coords[d].values[0]) for d in ("x", "y", "z")])
        position = (absolute[index] - origin) / t_spacing
        if not np.isfinite(position).all():
            raise InvalidValueError(f"PoseSet: position + shift must be finite, found NaN or inf for {eid!r}")
        if rotate:
            matrix = Rotation.from_quat(quats[index]).as_matrix().reshape(-1, 3, 3)
        else:
            matrix = np.broadcast_to(np.eye(3), (index.size, 3, 3)).copy()
        extent = (
            np.minimum(matrix * low, matrix * high).sum(axis=2),
            np.maximum(matrix * low, matrix * high).sum(axis=2),
        )
        lo, hi = position + extent[0], position + extent[1]
        limit = np.array([tomo.sizes[d] - 1 for d in ("x", "y", "z")], dtype=np.float64)
        at_edge = ((lo < -TOLERANCE) | (hi > limit + TOLERANCE)).any(axis=1)
        cols = {name: np.asarray(computed[name])[index] for name in columns}
        out[eid] = Particles(index, position, matrix, lo, hi, at_edge, cols)
    return out


def _morton(cells: np.ndarray) -> np.ndarray:
    """Z-order (Morton) codes of (n, 3) small non-negative ints (< 2**20 each)."""
    code = np.zeros(cells.shape[0], dtype=np.uint64)
    values = cells.astype(np.uint64)
    for bit in range(int(cells.max(initial=0)).bit_length()):
        for axis in range(3):
            code |= ((values[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + axis)
    return code


def plan_tasks(
    particles: Particles,
    members: np.ndarray,
    shape_zyx: tuple[int, ...],
    *,
    box: int,
    order: int,
    per_task: int,
) -> list[Task]:
    """Cut ``members`` (indices into ``particles``) into tasks of nearby particles.

    The cell size is chosen so that a cell plus the reach of its boxes stays near
    :data:`REGION_VOXELS`; particles are ordered by cell, then along a Morton curve of
    box-sized sub-cells, and each task's region is the union of its particles' sample
    extents (plus the interpolation's neighbours), clipped to the tomogram.
    """
    if members.size == 0:
        return []
    margin = 1 + (SPLINE_MARGIN if order == 3 else 0)
    reach = math.ceil(math.sqrt(3.0) * (box // 2 + 1)) + margin
    # order 3 holds the region prefiltered in float64 too: a quarter of the voxels
    budget = REGION_VOXELS // (4 if order == 3 else 1)
    cell = max(box, round(budget ** (1.0 / 3.0)) - 2 * reach)
    position = particles.position[members]
    sub = np.clip(np.floor(position / box), 0, None).astype(np.int64)
    cells = sub // max(1, cell // box)
    inner = sub - cells * max(1, cell // box)
    extent = cells.max(axis=0) + 1
    cell_id = (cells[:, 2] * extent[1] + cells[:, 1]) * extent[0] + cells[:, 0]
    order_idx = np.lexsort((_morton(np.clip(inner, 0, 2**20 - 1)), cell_id))
    sorted_cells = cell_id[order_idx]
    run_start = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
    run_of = np.repeat(np.arange(run_start.size), np.diff(np.r_[run_start, sorted_cells.size]))
    piece = (np.arange(sorted_cells.size) - run_start[run_of]) // per_task
    starts = np.flatnonzero(np.r_[True, (run_of[1:] != run_of[:-1]) | (piece[1:] != piece[:-1])])
    ordered = members[order_idx]
    lo = np.floor(particles.lo[ordered][:, ::-1] - TOLERANCE).astype(np.int64) - (margin - 1)
    hi = np.floor(particles.hi[ordered][:, ::-1] + TOLERANCE).astype(np.int64) + 1 + margin
    lo_task = np.minimum.reduceat(lo, starts, axis=0)
    hi_task = np.maximum.reduceat(hi, starts, axis=0)
    shape = np.asarray(shape_zyx, dtype=np.int64)
    lo_task = np.clip(lo_task, 0, shape - 1)
    hi_task = np.clip(hi_task, lo_task + 1, shape)
    return [
        Task(members=part, start=lo_task[i], stop=hi_task[i])
        for i, part in enumerate(np.split(ordered, starts[1:]))
    ]


def task_array(
    tomogram: xr.DataArray,
    tasks: list[Task],
    kernel: Callable[..., np.ndarray],
    arguments: list[tuple[Any, ...]],
    shapes: Sequence[tuple[int, ...]],
    dtype: Any,
) -> da.Array:
    """One lazy block per task, ``kernel(region, *arguments[i])`` of shape ``shapes[i]``, stacked on axis 0.

    Each task's region is a dask slice of the tomogram handed to one ``delayed`` call:
    dask then reads just that region from a file-backed chunk (MRC slabs, zarr chunks),
    in tasks that feed only that kernel, so the scheduler reads a region when its kernel
    is about to run and memory stays at a few regions. (Reading shared whole chunks once
    instead would save zarr's repeated decompression of chunks on region borders, but
    lets the threaded scheduler read chunks far ahead of the kernels: memory then grows
    with the tomogram.) Planning costs a few ms per task. Lazily indexed tomograms (not
    dask) are wrapped in one chunk first (xarray's ``chunk()``, nothing read).
    """
    volume = tomogram.data if tomogram.chunks is not None else tomogram.chunk().data
    meta = np.empty((0,) * len(shapes[0]), dtype=dtype)
    parts = []
    for task, args, shape in zip(tasks, arguments, shapes, strict=True):
        region = volume[tuple(slice(int(a), int(b)) for a, b in zip(task.start, task.stop, strict=True))]
        block = dask.delayed(kernel, pure=False)(region, *args)
        parts.append(da.from_delayed(block, shape=shape, dtype=dtype, meta=meta))
    stacked = da.concatenate(parts, axis=0)
    # one layer instead of one per task: optimising thousands of layers costs more than the tasks
    return da.Array(stacked.__dask_graph__().to_dict(), stacked.name, stacked.chunks, meta=meta)


def box_grid(box: int) -> np.ndarray:
    """(3, box**3) float64 xyz reference coordinates of the box voxels, in (z, y, x) C order."""
    zyx = np.indices((box, box, box), dtype=np.float64).reshape(3, -1) - float(box // 2)
    return np.ascontiguousarray(zyx[::-1])


def _trilinear(
    views: list[np.ndarray], strides: np.ndarray, top: np.ndarray | None, xyz: np.ndarray
) -> np.ndarray:
    """Trilinear samples of a (z, y, x) volume at (3, m) xyz index coordinates.

    ``views`` are the raveled volume starting at the eight corner offsets of a voxel
    (``0, 1, sy, sy + 1, sz, ...``): one ``take`` per corner, no index arithmetic.
    ``top`` is (3, 1) xyz ``shape - 2`` (the last voxel a lower corner may be), or None
    when every coordinate is known to lie inside.
    """
    floor = np.floor(xyz)
    if top is not None:
        np.minimum(floor, top, out=floor)
        np.maximum(floor, 0.0, out=floor)
    weight = np.empty(xyz.shape, dtype=views[0].dtype)
    np.subtract(xyz, floor, out=weight, casting="same_kind" if weight.dtype == np.float64 else "unsafe")
    base = (strides @ floor).astype(np.intp)
    v000, v001, v010, v011, v100, v101, v110, v111 = (view.take(base) for view in views)
    wx, wy, wz = weight
    for a, b in ((v000, v001), (v010, v011), (v100, v101), (v110, v111)):
        b -= a
        b *= wx
        a += b
    for a, b in ((v000, v010), (v100, v110)):
        b -= a
        b *= wy
        a += b
    v100 -= v000
    v100 *= wz
    v000 += v100
    return v000


class Sampler:
    """Interpolates boxes out of one region (a task's slice of the tomogram)."""

    def __init__(
        self, region: np.ndarray, start: np.ndarray, shape_zyx: np.ndarray, box: int, order: int
    ) -> None:
        dtype = np.float64 if region.dtype == np.float64 else np.float32
        region = np.asarray(region, dtype=dtype)
        # a region that stops short of the tomogram's faces holds the 8 corners of every
        # sample (plan_tasks adds the neighbours and a TOLERANCE of slack)
        start_zyx = np.asarray(start)
        inside = (start_zyx > 0) & (start_zyx + np.asarray(region.shape) < np.asarray(shape_zyx))
        self.needs_clip = not bool(inside.all())
        # the trilinear kernel needs two voxels along every axis
        pad = [(0, max(0, 2 - n)) for n in region.shape]
        if any(p[1] for p in pad):
            region = np.pad(region, pad, mode="edge")
        if order == 3:
            region = ndimage.spline_filter(region, order=3, mode="mirror", output=np.float64)
        self.region = np.ascontiguousarray(region)
        self.flat = self.region.ravel()
        self.origin = np.asarray(start, dtype=np.float64)[::-1].reshape(3, 1)  # xyz
        self.limit = (np.asarray(shape_zyx, dtype=np.float64)[::-1] - 1.0).reshape(3, 1)
        self.upper = np.array(self.region.shape[::-1], dtype=np.float64).reshape(3, 1) - 1.0
        self.top = self.upper - 1.0
        ny, nx = self.region.shape[1], self.region.shape[2]
        self.strides = np.array([1.0, nx, nx * ny])
        self.views = [
            self.flat[o:] for o in (0, 1, nx, nx + 1, nx * ny, nx * ny + 1, nx * ny + nx, nx * ny + nx + 1)
        ]
        self.order = order
        self.dtype = np.dtype(dtype)
        self.grid = box_grid(box)

    def sample(
        self, position: np.ndarray, matrix: np.ndarray, check_edge: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(k, box**3) samples of k particles and, when ``check_edge``, their (k, box**3) validity."""
        k, m = position.shape[0], self.grid.shape[1]
        if k == 1:
            xyz = matrix[0] @ self.grid
            xyz += position.reshape(3, 1) - self.origin
        else:
            xyz = matrix @ self.grid
            xyz += position.reshape(k, 3, 1) - self.origin.reshape(1, 3, 1)
            xyz = xyz.transpose(1, 0, 2).reshape(3, k * m)
        valid = None
        if check_edge:
            tomo = xyz + self.origin
            valid = ((tomo >= -TOLERANCE) & (tomo <= self.limit + TOLERANCE)).all(axis=0)
            np.clip(xyz, 0.0, self.upper, out=xyz)
        if self.order == 1:
            top = self.top if (self.needs_clip or check_edge) else None
            values = _trilinear(self.views, self.strides, top, xyz)
        else:
            values = ndimage.map_coordinates(
                self.region, xyz[::-1], order=3, mode="mirror", prefilter=False, output=np.float64
            ).astype(self.dtype, copy=False)
        return values.reshape(k, m), None if valid is None else valid.reshape(k, m)

    def batches(self, n: int) -> list[slice]:
        """Slices of at most :data:`SAMPLES_PER_CALL` samples' worth of particles."""
        step = max(1, SAMPLES_PER_CALL // self.grid.shape[1])
        return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def extract_block(
    region: np.ndarray,
    start: np.ndarray,
    shape_zyx: np.ndarray,
    position: np.ndarray,
    matrix: np.ndarray,
    at_edge: np.ndarray,
    box: int,
    order: int,
    fill: float,
) -> np.ndarray:
    """Boxes (n, box, box, box) of one task's particles, interpolated from its region."""
    sampler = Sampler(region, start, shape_zyx, box, order)
    out = np.empty((position.shape[0], box**3), dtype=sampler.dtype)
    for part in sampler.batches(position.shape[0]):
        values, valid = sampler.sample(position[part], matrix[part], bool(at_edge[part].any()))
        if valid is not None:
            values[~valid] = fill
        out[part] = values
    return out.reshape(-1, box, box, box)


def box_coords(box: int, spacing: float) -> dict[str, Any]:
    """Centred Å coords of a box: 0 Å is the particle (index ``box // 2``)."""
    offsets = (np.arange(box, dtype=np.float64) - box // 2) * spacing
    return {d: (d, offsets, {"units": "angstrom"}) for d in ("z", "y", "x")}


def common_spacing(tomos: dict[str, xr.DataArray], where: str) -> float:
    """The one pixel spacing every tomogram shares."""
    spacings = {eid: float(t.attrs["pixel_spacing"]) for eid, t in tomos.items()}
    values = sorted(set(spacings.values()))
    if len(values) > 1:
        raise InvalidValueError(
            f"{where}: tomograms must share one pixel spacing, found {spacings}; bin them to a common one"
        )
    return values[0]


def extract_subtomograms(
    tomogram: Tomograms,
    poses: xr.Dataset,
    *,
    box_size: int,
    rotate: bool = True,
    order: int = 1,
    fill: float = np.nan,
    particles_per_task: int | None = None,
) -> xr.DataArray:
    """Cut a ``box_size`` cube around every particle, rotated into the reference frame, lazily.

    Box voxel ``(z, y, x)`` holds the tomogram at ``R @ u + p`` (xyz, tomogram voxels) with
    ``u = (x, y, z) - box_size // 2``, ``p = position + shift`` and ``R`` the orientation
    (the identity when ``rotate`` is False: an unrotated box, still at the sub-pixel
    position). Samples outside the tomogram are ``fill`` and the particle is flagged in the
    ``at_edge`` coordinate. Only the regions around the particles are read (see the module
    docstring); building the array reads no voxels.

    Parameters
    ----------
    tomogram
        A :class:`~cryoxr.Tomogram` (or 3D image DataArray) for a one-experiment PoseSet;
        for poses from many tomograms a mapping ``experiment_id -> Tomogram`` or a function
        that opens one by id (called once per experiment, when the array is built).
    poses
        A PoseSet; positions may be at another pixel spacing than the tomogram (they
        are placed through Å). A dask-backed set's positions and orientations are
        computed once to plan the reads.
    box_size
        Edge of the cube in tomogram voxels.
    rotate
        Resample into the reference frame by the orientation.
    order
        1 (trilinear) or 3 (cubic B-spline, ``mode="mirror"``).
    fill
        Value of samples outside the tomogram.
    particles_per_task
        Particles per output chunk; default keeps a chunk near 32 MiB.

    Returns
    -------
    xarray.DataArray
        Lazy, dims ``("particle", "z", "y", "x")``, float32 (float64 for float64
        tomograms). Particles come **grouped by tomogram region** (the order they are
        read in); the ``particle`` coordinate is each box's index in ``poses``, so
        ``boxes.sortby("particle")`` restores the PoseSet's order and
        ``poses.isel(particle=boxes.particle.values)`` lines the poses up with the boxes.
        Other coords: ``at_edge`` and ``experiment_id`` per particle, centred ``z, y, x``
        in Å (0 is the particle). attrs ``pixel_spacing``, ``box_size``, ``order``,
        ``rotate``.

    Raises
    ------
    InvalidValueError
        Bad box size or order, tomograms missing for an experiment or at different
        pixel spacings.

    Examples
    --------
    >>> import numpy as np
    >>> import cryoxr
    >>> from scipy.spatial.transform import Rotation
    >>> vol = np.zeros((9, 9, 9), np.float32); vol[4, 6, 4] = 1.0   # a voxel 2 px along +y
    >>> tomo = cryoxr.Tomogram.from_array(vol, pixel_spacing=1.0, experiment_id="t")
    >>> quarter_turn = Rotation.from_euler("z", [90], degrees=True)   # reference x -> tomogram y
    >>> poses = cryoxr.make_poseset([[4.0, 4.0, 4.0]], orientation=quarter_turn,
    ...                             experiment_id="t", pixel_spacing=1.0)
    >>> box = extract_subtomograms(tomo, poses, box_size=5)
    >>> [int(i) for i in np.argwhere(box.values[0] == 1.0)[0]]  # (z, y, x): 2 px along reference +x
    [2, 2, 4]
    """
    where = "extract_subtomograms"
    box, order = check_box(box_size, order, where)
    validate_poseset(poses, check_values=False)
    ids = experiment_ids(poses)
    tomos = resolve_tomograms(tomogram, ids, where)
    spacing = common_spacing(tomos, where)
    per_task = particles_per_task or max(1, TASK_BYTES // (box**3 * 4))
    groups = pose_particles(poses, tomos, box=box, rotate=rotate)
    pieces: list[da.Array] = []
    index: list[np.ndarray] = []
    edge: list[np.ndarray] = []
    for eid, particles in groups.items():
        tomo = tomos[eid]
        out_dtype = np.float64 if tomo.dtype == np.float64 else np.float32
        shape = np.asarray(tomo.shape)
        everyone = np.arange(particles.index.size)
        tasks = plan_tasks(particles, everyone, tomo.shape, box=box, order=order, per_task=per_task)
        if not tasks:
            continue
        arguments = [
            (t.start, shape, particles.position[t.members], particles.matrix[t.members], particles.at_edge[t.members],
             box, order, fill)
            for t in tasks
        ]  # fmt: skip
        shapes = [(t.members.size, box, box, box) for t in tasks]
        pieces.append(task_array(tomo, tasks, extract_block, arguments, shapes, out_dtype))
        index.extend(particles.index[t.members] for t in tasks)
        edge.extend(particles.at_edge[t.members] for t in tasks)
    order_index = np.concatenate(index) if index else np.zeros(0, dtype=np.int64)
    dtype = np.result_type(np.float32, *(p.dtype for p in pieces))
    if pieces:
        data = da.concatenate([p.astype(dtype) for p in pieces], axis=0)
    else:
        data = da.zeros((0, box, box, box), dtype=dtype)
    coords: dict[str, Any] = {
        "particle": ("particle", order_index.astype(np.int64)),
        **box_coords(box, spacing),
    }
    coords["at_edge"] = ("particle", np.concatenate(edge) if edge else np.zeros(0, dtype=bool))
    if "experiment_id" in poses.coords:
        coords["experiment_id"] = ("particle", np.asarray(poses.coords["experiment_id"].values)[order_index])
    attrs: dict[str, Any] = {"pixel_spacing": spacing, "box_size": box, "order": order, "rotate": int(rotate)}
    if "experiment_id" in poses.attrs:
        attrs["experiment_id"] = str(poses.attrs["experiment_id"])
    return xr.DataArray(
        data, dims=("particle", "z", "y", "x"), coords=coords, attrs=attrs, name="subtomograms"
    )
