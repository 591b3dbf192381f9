"""Subtomogram averaging: the mean of the rotated boxes as a tree reduction, out of core.

:func:`average_subtomograms` samples the same boxes as
:func:`~cryoxr.subtomograms.extract_subtomograms` (same plan: one task per group of nearby
particles, each reading only its region), but each task returns a partial *sum* instead
of its boxes, and the partial sums are added in a tree (``split_every`` at a time). Memory
is a few regions and partial sums, never the particles: it does not grow with their
number.

Optional missing-wedge weighting (:func:`missing_wedge_mask`) and half maps (from
``rlnRandomSubset`` or even/odd) come out of the same single pass.

Examples
--------
>>> import numpy as np
>>> import cryoxr
>>> tomo = cryoxr.Tomogram.from_array(np.ones((16, 16, 16), np.float32), pixel_spacing=4.0,
...                                   experiment_id="t")
>>> poses = cryoxr.make_poseset([[5.0, 6.0, 7.0], [9.5, 8.0, 7.0]], experiment_id="t", pixel_spacing=4.0)
>>> avg = average_subtomograms(tomo, poses, box_size=4)
>>> avg.shape, float(avg.data.mean()), avg.data.attrs["n_particles"]
((4, 4, 4), 1.0, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, overload

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from scipy import fft

from cryoxr.errors import InvalidValueError
from cryoxr.image import Tomogram
from cryoxr.poseset import experiment_ids, validate_poseset
from cryoxr.projection_model import (
    PTC,
    ProjectionModelDataLabels,
    rotation_matrices,
    validate_projection_model,
)
from cryoxr.subtomograms import (
    Sampler,
    Tomograms,
    box_coords,
    check_box,
    common_spacing,
    plan_tasks,
    pose_particles,
    resolve_tomograms,
    task_array,
)

__all__ = ["HALF_COLUMN", "HalfMaps", "average_subtomograms", "missing_wedge_mask"]

#: the PoseSet variable that assigns particles to half sets (RELION: 1 or 2)
HALF_COLUMN = "rlnRandomSubset"
#: particles per averaging task (its output is one partial sum, whatever the count)
PARTICLES_PER_TASK = 1024

Wedge = tuple[float, float, float]  # x_tilt, lowest tilt, highest tilt (degrees)


class HalfMaps(NamedTuple):
    """The average and the two half-set averages (one reduction computes all three)."""

    average: Tomogram
    half1: Tomogram
    half2: Tomogram


def _frequencies(box: int) -> np.ndarray:
    """(3, box * box * (box // 2 + 1)) xyz frequencies (cycles per pixel) of an rfftn grid."""
    qz, qy, qx = np.meshgrid(fft.fftfreq(box), fft.fftfreq(box), fft.rfftfreq(box), indexing="ij")
    return np.stack([qx.ravel(), qy.ravel(), qz.ravel()])


def _covered(k: np.ndarray, low: float, high: float) -> np.ndarray:
    """Which (3, m) tilt-frame frequencies a single-axis tilt from ``low`` to ``high`` measured."""
    if high - low >= 180.0:
        return np.ones(k.shape[1], dtype=bool)
    a, c = k[0], k[2]
    phi = np.degrees(np.arctan2(c, a))
    hit = np.zeros(k.shape[1], dtype=bool)
    for turn in (-180.0, 0.0, 180.0):  # phi and the same plane half a turn away
        hit |= (phi + turn >= low - 1e-9) & (phi + turn <= high + 1e-9)
    return hit | (a * a + c * c <= 1e-24)  # the tilt axis (and 0) lies in every plane


def missing_wedge_mask(
    box_size: int,
    tilt_range: tuple[float, float],
    *,
    orientation: np.ndarray | None = None,
    x_tilt: float = 0.0,
) -> np.ndarray:
    """Which Fourier coefficients of a box a single-axis tilt series measured.

    A tilt image at ``rotation_y = t`` (the cryotypes projection ``Ry(t) . Rx(x_tilt)``,
    then along z) measures the central plane of the tomogram's transform perpendicular to
    ``d(t) = Rx(x_tilt).T @ Ry(t).T @ (0, 0, 1)``. Sweeping ``t`` over ``tilt_range``, a
    tomogram frequency ``k`` is measured when ``k . d(t) = 0`` for some ``t``: with
    ``k' = Rx(x_tilt) @ k``, when ``atan(k'_z / k'_x)`` lies in the range (frequencies
    along the tilt axis always are). A box sampled at ``R @ u + p`` sees tomogram
    frequency ``R @ q`` at its frequency ``q``, so its mask is the test of ``R @ q``.

    Parameters
    ----------
    box_size
        Edge of the box.
    tilt_range
        Lowest and highest tilt angle (``rotation_y``), degrees.
    orientation
        (3, 3) matrix ``R`` of the box (reference -> tomogram); identity when None.
    x_tilt
        The tilt axis's ``rotation_x``, degrees.

    Returns
    -------
    numpy.ndarray
        bool, shape ``(box, box, box // 2 + 1)``: the ``scipy.fft.rfftn`` layout of a
        ``(z, y, x)`` box.

    Examples
    --------
    >>> m = missing_wedge_mask(8, (-60.0, 60.0))
    >>> bool(m[0, 0, 2]), bool(m[0, 2, 0]), bool(m[2, 0, 0])   # along x, y: measured; along z: not
    (True, True, False)
    >>> bool(m[1, 0, 2]), bool(m[2, 0, 1])    # 27 deg from x is inside +-60 deg, 63 deg is not
    (True, False)
    """
    box = int(box_size)
    low, high = (float(v) for v in tilt_range)
    matrix = np.eye(3) if orientation is None else np.asarray(orientation, dtype=np.float64).reshape(3, 3)
    tilt_frame = rotation_matrices("x", np.array([float(x_tilt)]))[0] @ matrix
    return _covered(tilt_frame @ _frequencies(box), low, high).reshape(box, box, box // 2 + 1)


def _wedges(missing_wedge: Any, ids: list[str], where: str) -> dict[str, Wedge] | None:
    """experiment_id -> (x_tilt, low, high) from a ProjectionModel or a (low, high) pair."""
    if missing_wedge is None:
        return None
    if not isinstance(missing_wedge, pd.DataFrame):
        try:
            low, high = (float(v) for v in missing_wedge)
        except (TypeError, ValueError):
            raise InvalidValueError(
                f"{where}: missing_wedge must be a ProjectionModel or (lowest, highest) tilt in degrees, "
                f"found {missing_wedge!r}"
            ) from None
        if not (np.isfinite([low, high]).all() and low <= high):
            raise InvalidValueError(
                f"{where}: missing_wedge tilt range must be finite with low <= high, found {missing_wedge!r}"
            )
        return dict.fromkeys(ids, (0.0, low, high))
    model = validate_projection_model(missing_wedge)
    labels = ProjectionModelDataLabels
    if PTC.EXCLUDED in model.columns:
        model = model[~model[PTC.EXCLUDED].astype(bool)]
    by_id = {str(k): g for k, g in model.groupby(labels.EXPERIMENT_ID, sort=False)}
    if len(by_id) == 1 and len(ids) == 1:
        by_id = {ids[0]: next(iter(by_id.values()))}
    out: dict[str, Wedge] = {}
    for eid in ids:
        if eid not in by_id:
            raise InvalidValueError(
                f"{where}: the missing_wedge model has no tilts for experiment_id {eid!r} "
                f"(it has {', '.join(list(by_id)[:10]) or 'none'})"
            )
        rows = by_id[eid]
        tilts = rows[labels.ROTATION_Y].to_numpy(dtype=np.float64)
        out[eid] = (float(rows[labels.ROTATION_X].mean()), float(tilts.min()), float(tilts.max()))
    return out


def _halves(values: np.ndarray | None, index: np.ndarray, where: str) -> np.ndarray:
    """0 / 1 per particle: ``rlnRandomSubset - 1`` when given, else even / odd PoseSet index."""
    if values is None:
        return (index % 2).astype(np.int64)
    numbers = np.asarray(values, dtype=np.float64)
    bad = ~np.isin(numbers, (1.0, 2.0))
    if bad.any():
        first = int(np.argmax(bad))
        raise InvalidValueError(
            f"{where}: PoseSet variable {HALF_COLUMN} must hold 1 or 2, found {numbers[first]:g} "
            f"at particle {int(index[first])}"
        )
    return numbers.astype(np.int64) - 1


def average_block(
    region: np.ndarray,
    start: np.ndarray,
    shape_zyx: np.ndarray,
    position: np.ndarray,
    matrix: np.ndarray,
    at_edge: np.ndarray,
    half: np.ndarray,
    box: int,
    order: int,
    n_halves: int,
    count_voxels: bool,
    wedge: Wedge | None,
) -> np.ndarray:
    """One task's partial sums, shape (1, halves, planes, ...), float64.

    Real space: planes ``[sum]`` or ``[sum, number of inside samples]`` of (box, box, box).
    Wedge-weighted: planes ``[real, imaginary, weight]`` of the rfftn grid.
    """
    sampler = Sampler(region, start, shape_zyx, box, order)
    grid = (box, box, box) if wedge is None else (box, box, box // 2 + 1)
    planes = 3 if wedge is not None else 2 if count_voxels else 1
    out = np.zeros((1, n_halves, planes, int(np.prod(grid))), dtype=np.float64)
    if wedge is not None:
        frequencies = _frequencies(box)
        tilt_axis = rotation_matrices("x", np.array([wedge[0]]))[0]
    for part in sampler.batches(position.shape[0]):
        values, valid = sampler.sample(position[part], matrix[part], bool(at_edge[part].any()))
        if valid is not None:
            values[~valid] = 0.0
        for k, h in enumerate(half[part]):
            if wedge is None:
                out[0, h, 0] += values[k]
                if count_voxels:
                    out[0, h, 1] += 1.0 if valid is None else valid[k]
                continue
            transform = fft.rfftn(values[k].reshape(box, box, box)).ravel()
            mask = _covered(tilt_axis @ matrix[part][k] @ frequencies, wedge[1], wedge[2])
            out[0, h, 0, mask] += transform.real[mask]
            out[0, h, 1, mask] += transform.imag[mask]
            out[0, h, 2] += mask
    return out.reshape(1, n_halves, planes, *grid)


def finish_block(
    total: np.ndarray, which: int | None, counts: Sequence[int], box: int, wedge: bool
) -> np.ndarray:
    """The map from the summed planes: a half (``which``) or both halves together (None)."""
    chosen = total if which is None else total[which : which + 1]
    summed = chosen.sum(axis=0)
    if wedge:
        weight = np.maximum(summed[2], 1.0)
        return fft.irfftn((summed[0] + 1j * summed[1]) / weight, s=(box, box, box)).astype(np.float32)
    if summed.shape[0] == 2:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(summed[1] > 0, summed[0] / summed[1], np.nan)
        return mean.astype(np.float32)
    n = sum(counts) if which is None else counts[which]
    if n == 0:  # an empty half
        return np.full(summed.shape[1:], np.nan, dtype=np.float32)
    return (summed[0] / n).astype(np.float32)


def _image(data: da.Array, spacing: float, name: str, attrs: dict[str, Any]) -> Tomogram:
    box = data.shape[0]
    array = xr.DataArray(
        data,
        dims=("z", "y", "x"),
        coords=box_coords(box, spacing),
        attrs={"experiment_id": name, "pixel_spacing": spacing, "source": "", **attrs},
        name=name,
    )
    return Tomogram(array)


@overload
def average_subtomograms(
    tomogram: Tomograms,
    poses: xr.Dataset,
    *,
    box_size: int,
    rotate: bool = ...,
    order: int = ...,
    missing_wedge: pd.DataFrame | tuple[float, float] | None = ...,
    half_maps: Literal[False] = ...,
    edge: Literal["exclude", "include"] = ...,
    particles_per_task: int | None = ...,
    split_every: int = ...,
) -> Tomogram: ...
@overload
def average_subtomograms(
    tomogram: Tomograms,
    poses: xr.Dataset,
    *,
    box_size: int,
    rotate: bool = ...,
    order: int = ...,
    missing_wedge: pd.DataFrame | tuple[float, float] | None = ...,
    half_maps: Literal[True],
    edge: Literal["exclude", "include"] = ...,
    particles_per_task: int | None = ...,
    split_every: int = ...,
) -> HalfMaps: ...
def average_subtomograms(
    tomogram: Tomograms,
    poses: xr.Dataset,
    *,
    box_size: int,
    rotate: bool = True,
    order: int = 1,
    missing_wedge: pd.DataFrame | tuple[float, float] | None = None,
    half_maps: bool = False,
    edge: Literal["exclude", "include"] = "exclude",
    particles_per_task: int | None = None,
    split_every: int = 8,
) -> Tomogram | HalfMaps:
    """The average of the particles' boxes in the reference frame, as a lazy Tomogram.

    The boxes are those of :func:`~cryoxr.subtomograms.extract_subtomograms` (same
    arguments, same sampling); each task adds its particles' boxes into a partial sum
    and the partial sums are added in a tree of ``split_every``, so memory stays at a few
    regions and partial sums, however many particles. Building the graph reads no voxels.

    Weighting, precisely:

    - **none** (default): ``mean = sum_i b_i / n`` voxel by voxel (``b_i`` the box of
      particle ``i``, ``n`` the particles averaged). With ``edge="include"`` each voxel
      is divided by the number of particles whose sample there lies inside the tomogram
      (NaN where none does).
    - **missing wedge** (``missing_wedge=`` a ProjectionModel or a ``(low, high)`` tilt
      range in degrees): with ``B_i = rfftn(b_i)`` and ``W_i`` the 0/1 mask of the
      coefficients particle ``i``'s tilt series measured (:func:`missing_wedge_mask`
      for its orientation, its experiment's tilt range ``min..max rotation_y`` over
      tilts not ``excluded`` and its mean ``rotation_x``),
      ``average = irfftn(sum_i W_i B_i / max(sum_i W_i, 1))``: each coefficient is the
      mean over the particles that measured it, 0 where none did. Outside samples of
      included edge boxes count as 0.

    Half maps: particles with ``rlnRandomSubset`` (a PoseSet variable) 1 or 2 go to that
    half; without it, even PoseSet indices go to half 1 and odd ones to half 2.

    Parameters
    ----------
    tomogram, poses, box_size, rotate, order, particles_per_task
        As for :func:`~cryoxr.subtomograms.extract_subtomograms` (default 1024 particles
        per task).
    missing_wedge
        Weight by the measured Fourier coefficients (see above); None for a plain mean.
    half_maps
        Also return the two half-set averages (from the same single pass).
    edge
        ``"exclude"`` leaves out particles whose box crosses the tomogram's edge (known
        from the poses, so their regions are not read); ``"include"`` averages what lies
        inside.
    split_every
        Partial sums added per node of the reduction tree.

    Returns
    -------
    Tomogram or HalfMaps
        Lazy, float32, ``box_size`` cubed, coords centred in Å (0 is the particle
        centre), ``experiment_id`` ``"average"`` (``"half1"``, ``"half2"``). attrs:
        ``n_particles`` (averaged), ``n_at_edge``, ``box_size``, ``order``, ``rotate``,
        ``missing_wedge`` and ``edge``. With ``half_maps`` a :class:`HalfMaps`; compute
        its maps together (``dask.compute(*(m.data for m in maps))``) to run the
        reduction once.

    Raises
    ------
    InvalidValueError
        No particle to average, a bad ``edge`` / ``missing_wedge`` / ``rlnRandomSubset``,
        or the extraction's errors.

    Examples
    --------
    >>> import dask, numpy as np
    >>> import cryoxr
    >>> rng = np.random.default_rng(0)
    >>> tomo = cryoxr.Tomogram.from_array(rng.normal(size=(20, 20, 20)).astype(np.float32),
    ...                                   pixel_spacing=1.0, experiment_id="t")
    >>> poses = cryoxr.make_poseset(rng.uniform(6, 14, size=(10, 3)), experiment_id="t", pixel_spacing=1.0)
    >>> maps = average_subtomograms(tomo, poses, box_size=6, half_maps=True)
    >>> full, one, two = dask.compute(*(m.data for m in maps))
    >>> bool(np.allclose(full, (one + two) / 2, atol=1e-6)), maps.half1.data.attrs["n_particles"]
    (True, 5)
    """
    where = "average_subtomograms"
    box, order = check_box(box_size, order, where)
    if edge not in ("exclude", "include"):
        raise InvalidValueError(f"{where}: edge must be 'exclude' or 'include', found {edge!r}")
    if int(split_every) < 2:
        raise InvalidValueError(f"{where}: split_every must be >= 2, found {split_every!r}")
    validate_poseset(poses, check_values=False)
    ids = experiment_ids(poses)
    tomos = resolve_tomograms(tomogram, ids, where)
    spacing = common_spacing(tomos, where)
    wedges = _wedges(missing_wedge, ids, where)
    columns = (HALF_COLUMN,) if half_maps and HALF_COLUMN in poses.data_vars else ()
    groups = pose_particles(poses, tomos, box=box, rotate=rotate, columns=columns)
    n_halves = 2 if half_maps else 1
    count_voxels = edge == "include" and wedges is None
    per_task = particles_per_task or PARTICLES_PER_TASK
    partials: list[da.Array] = []
    counts = [0] * n_halves
    n_at_edge = 0
    for eid, particles in groups.items():
        n_at_edge += int(particles.at_edge.sum())
        keep = np.arange(particles.index.size)
        if edge == "exclude":
            keep = keep[~particles.at_edge]
        half = (
            _halves(particles.columns.get(HALF_COLUMN), particles.index, where)
            if half_maps
            else np.zeros(particles.index.size, dtype=np.int64)
        )
        for h in range(n_halves):
            counts[h] += int((half[keep] == h).sum())
        shape = np.asarray(tomos[eid].shape)
        wedge = None if wedges is None else wedges[eid]
        tasks = plan_tasks(particles, keep, tomos[eid].shape, box=box, order=order, per_task=per_task)
        if not tasks:
            continue
        arguments = [
            (t.start, shape, particles.position[t.members], particles.matrix[t.members],
             particles.at_edge[t.members], half[t.members], box, order, n_halves, count_voxels, wedge)
            for t in tasks
        ]  # fmt: skip
        planes = 3 if wedge is not None else 2 if count_voxels else 1
        grid = (box, box, box) if wedge is None else (box, box, box // 2 + 1)
        block = (1, n_halves, planes, *grid)
        partials.append(
            task_array(tomos[eid], tasks, average_block, arguments, [block] * len(tasks), np.float64)
        )
    n_total = sum(counts)
    if n_total == 0:
        if poses.sizes["particle"] == 0:
            raise InvalidValueError(f"{where}: no particle to average: the PoseSet is empty")
        raise InvalidValueError(
            f"{where}: no particle to average: all {poses.sizes['particle']} boxes cross the tomogram "
            "edge (edge='exclude'); pass edge='include' or a smaller box_size"
        )
    total = da.concatenate(partials, axis=0).sum(axis=0, split_every=int(split_every))
    attrs: dict[str, Any] = {
        "n_at_edge": n_at_edge,
        "box_size": box,
        "order": order,
        "rotate": int(rotate),
        "missing_wedge": "none" if wedges is None else str(sorted(set(wedges.values()))),
        "edge": edge,
    }

    def one(which: int | None, name: str, n: int) -> Tomogram:
        data = total.map_blocks(
            finish_block, which, counts, box, wedges is not None,
            drop_axis=(0, 1), chunks=((box,), (box,), (box,)), dtype=np.float32,
            meta=np.empty((0, 0, 0), np.float32),
        )  # fmt: skip
        return _image(data, spacing, name, {**attrs, "n_particles": n})

    average = one(None, "average", n_total)
    if not half_maps:
        return average
    return HalfMaps(average, one(0, "half1", counts[0]), one(1, "half2", counts[1]))
