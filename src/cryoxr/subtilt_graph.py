"""The lazy graph of RELION 5's 2D subtilt stacks: the kernel of :mod:`cryoxr.subtilts` over
blocks of particles and tilts.

:func:`cryoxr.extract_subtilts` with ``mode="relion"`` lands in :func:`extract_relion`. Its
array has one task per block of particles and tilt; each task reads that tilt image of each
experiment the block holds (for MRC files a memory map: only the pages the boxes touch are
read).

When the positions come straight from :func:`cryoxr.project` and the defocus from
:func:`cryoxr.particle_defocus` (the very arrays they returned), every task projects its own
block of poses into its tilt (a ``(n, 4) @ (4, 2)`` product per tilt): no positions or
defocus of any particle exist outside a running task, so what the scheduler holds does not
grow with the particles (positions and defocus computed ahead of the tasks would: 1.3 KB per
particle at 41 tilts). Other positions (any array) are cut into the tasks' blocks.

:func:`subtilt_blocks` rebuilds the same stacks with one task per block of particles over
*all* tilts, for consumers that want a particle's whole stack at once (the RELION writer
writes each particle's file in one go; the back-projection inserts a particle's tilts
together).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from cryoxr.ctf import tilt_ctf_parameters
from cryoxr.defocus import defocus_of
from cryoxr.errors import InvalidValueError
from cryoxr.geometry import model_groups
from cryoxr.image import Image, validate_image
from cryoxr.projection import _kernel_inputs, _project_block, _Projection, projection_of
from cryoxr.projection_model import PTC
from cryoxr.subtilts import BATCH, RelionSteps, relion_patches

__all__ = ["extract_relion", "subtilt_blocks"]

#: bytes of patches per task by default (input boxes and output)
TASK_BYTES = 32 * 2**20


@dataclass(frozen=True)
class _Experiment:
    """One experiment's per-tilt tables (numpy), for the tasks."""

    width: int
    height: int
    usable: np.ndarray  #: (T,) bool: present, not excluded, within max_dose
    pre_exposure: np.ndarray  #: (T,) e/Å², NaN when unknown
    optics: dict[str, np.ndarray]  #: ctf_2d keywords other than defocus, (T,) each


def _visible(points: np.ndarray, width: int, height: int, radius: float) -> np.ndarray:
    x, y = points[..., 0], points[..., 1]
    with np.errstate(invalid="ignore"):
        return (x > radius) & (x < width - radius) & (y > radius) & (y < height - radius)


def _per_tilt(a: Any, b: Any, c: Any, op: Any, local: int) -> np.ndarray | None:
    """(n, 2) values of one tilt: projected from poses (``op`` = (weights, bias, dtype) of
    that tilt), or column ``local`` of a given (n, k, 2) block."""
    if a is None:
        return None
    if op is None:
        return np.asarray(a)[:, local, :]
    return _project_block(a, b, c, op[0], op[1], op[2])[:, 0, :]


def _patch_task(
    xa: Any,
    xb: Any,
    xc: Any,
    fa: Any,
    fb: Any,
    fc: Any,
    codes: np.ndarray,
    steps: RelionSteps,
    tilts: tuple[Any, ...],
    *images: np.ndarray,
) -> np.ndarray:
    """Patches (n, k, crop, crop) of a block of particles in k tilts (zeros where invisible).

    ``xa, xb, xc``: positions, shifts and experiment codes of the poses (projected here) or
    the (n, k, 2) projected block; ``fa, fb, fc`` the same for the defocus (all None without
    CTF). ``tilts`` holds per tilt ``(local, xy_op, defocus_op, experiments)`` and per
    experiment of the block that uses the tilt ``(code, width, height, pre_exposure, optics,
    image)``, ``image`` indexing ``images``.
    """
    out = np.zeros((len(codes), len(tilts), steps.crop, steps.crop), dtype=steps.dtype)
    for j, (local, xy_op, df_op, experiments) in enumerate(tilts):
        if not experiments:
            continue
        xy = _per_tilt(xa, xb, xc, xy_op, local)
        defocus = _per_tilt(fa, fb, fc, df_op, local)
        assert xy is not None
        for code, width, height, pre_exposure, optics, index in experiments:
            mine = np.nonzero(codes == code)[0]
            keep = mine[_visible(xy[mine], width, height, steps.radius)]
            plane = images[index].reshape(images[index].shape[-2:])
            for start in range(0, keep.size, BATCH):  # bounded temporaries, warm caches
                part = keep[start : start + BATCH]
                out[part, j] = relion_patches(
                    plane,
                    xy[part],
                    steps,
                    defocus=None if defocus is None else defocus[part],
                    optics=optics,
                    pre_exposure=pre_exposure,
                )
    return out


def _visible_block(
    xa: np.ndarray,
    xb: Any,
    xc: Any,
    weights: Any,
    bias: Any,
    dtype: Any,
    codes: np.ndarray,
    widths: np.ndarray,
    heights: np.ndarray,
    usable: np.ndarray,
    radius: float,
) -> np.ndarray:
    """(n, T) visibility of a block of particles (projected here when ``weights`` are given)."""
    xy = xa if weights is None else _project_block(xa, xb, xc, weights, bias, dtype)
    c = codes.reshape(-1)
    t = xy.shape[1]
    x, y = xy[..., 0], xy[..., 1]
    w, h = widths[c][:, None], heights[c][:, None]
    with np.errstate(invalid="ignore"):
        inside = (x > radius) & (x < w - radius) & (y > radius) & (y < h - radius)
    return inside & usable[c][:, :t]


def _experiment_tables(
    eid: str,
    rows: pd.DataFrame,
    data: xr.DataArray,
    steps: RelionSteps,
    max_dose: float | None,
) -> _Experiment:
    where = f"extract_subtilts: experiment {eid!r}"
    n = len(rows)
    if data.sizes["image"] < n:
        raise InvalidValueError(
            f"{where}: the tilt series has {data.sizes['image']} images, the projection model {n} tilts"
        )
    excluded = np.zeros(n, dtype=bool)
    if PTC.EXCLUDED in rows.columns:
        excluded = rows[PTC.EXCLUDED].fillna(False).to_numpy(dtype=bool)
    dose = np.full(n, np.nan)
    if PTC.PRE_EXPOSURE in rows.columns:
        dose = pd.to_numeric(rows[PTC.PRE_EXPOSURE], errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
    if (steps.dose_weight or max_dose is not None) and not np.isfinite(dose[~excluded]).all():
        raise InvalidValueError(
            f"{where}: dose weighting (and max_dose) need column {PTC.PRE_EXPOSURE!r} (e/Å², RELION: "
            "rlnMicrographPreExposure) on every tilt; pass dose_weight=False to go without"
        )
    usable = ~excluded
    if max_dose is not None:
        usable &= np.nan_to_num(dose, nan=np.inf) <= max_dose
    optics: dict[str, np.ndarray] = {}
    if steps.ctf:
        params = tilt_ctf_parameters(rows.loc[~excluded] if excluded.any() else rows, where=where)
        for key, values in params.items():
            if key in ("defocus_u", "defocus_v"):
                continue
            full = np.zeros(n)
            full[~excluded] = values
            optics[key] = full
    return _Experiment(int(data.sizes["x"]), int(data.sizes["y"]), usable, dose, optics)


def _blocks(n: int, size: int) -> tuple[int, ...]:
    return tuple(min(size, n - s) for s in range(0, n, size)) or (0,)


@dataclass(frozen=True)
class _Source:
    """Where the tasks get one per-tilt quantity (positions or defocus) of a block."""

    recipe: _Projection | None  #: fused: the poses and operators of project / particle_defocus
    array: da.Array | None  #: else the (particle, image, 2) values

    def inputs(self, pchunks: tuple[int, ...], tchunks: Any = -1) -> list[da.Array]:
        """Dask arrays the tasks take (chunked along particles as ``pchunks``)."""
        if self.recipe is not None:
            r = self.recipe
            # the very pose chunks project / particle_defocus made, when the blocks agree
            inputs = (
                r.kernel_inputs()
                if tuple(pchunks) == tuple(r.pchunks)
                else _kernel_inputs(r.poses, r.experiments, r.weights, r.bias, r.dtype, pchunks)
            )
            position, _, shift, _, codes = inputs[:5]
            return [position, shift, codes]
        assert self.array is not None
        return [self.array.rechunk((pchunks, tchunks, 2))]

    def keys(self, arrays: list[da.Array], b: int, group: int) -> list[Any]:
        if self.recipe is not None:
            return [(arrays[0].name, b, 0), (arrays[1].name, b, 0), (arrays[2].name, b)]
        return [(arrays[0].name, b, group, 0), None, None]

    def operator(self, t: int) -> Any:
        """Tilt ``t``'s (weights, bias, dtype) when fused, else None."""
        if self.recipe is None:
            return None
        r = self.recipe
        return (r.weights[:, :, 2 * t : 2 * t + 2], r.bias[:, 2 * t : 2 * t + 2], r.dtype)


@dataclass(frozen=True)
class _Plan:
    """Everything :func:`extract_relion` decided, to build the graph for any blocks."""

    steps: RelionSteps
    experiments: tuple[_Experiment, ...]
    codes: np.ndarray  #: (N,) experiment of each particle (index into experiments)
    images: tuple[da.Array, ...]  #: per experiment, chunked one tilt per chunk
    xy: _Source
    defocus: _Source | None
    n_tilts: int
    max_dose: float | None

    def build(self, pchunks: tuple[int, ...], tilts_per_task: int) -> da.Array:
        steps, n_tilts = self.steps, self.n_tilts
        groups = [range(s, min(s + tilts_per_task, n_tilts)) for s in range(0, n_tilts, tilts_per_task)]
        tchunks = tuple(len(g) for g in groups) or (0,)
        xy_in = self.xy.inputs(pchunks, tchunks)
        df_in: list[da.Array] = []
        if self.defocus is not None:
            x, f = self.xy.recipe, self.defocus.recipe
            same_poses = (
                x is not None and f is not None and f.poses is x.poses and f.experiments == x.experiments
            )
            # one copy of the poses' chunks when positions and defocus come from the same poses
            df_in = xy_in if same_poses and f.dtype == x.dtype else self.defocus.inputs(pchunks, tchunks)  # type: ignore[union-attr]
        name = "relion-subtilts-" + tokenize(
            [a.name for a in xy_in], [a.name for a in df_in], self.codes, steps,
            [a.name for a in self.images], self.max_dose, pchunks, tchunks,
        )  # fmt: skip
        graph: dict[Any, Any] = {}
        starts = np.cumsum((0, *pchunks))
        # one spec object per tilt group and set of experiments, shared by every block's task
        # (in memory and in a pickled graph: a task carries references, not copies)
        specs: dict[tuple[int, tuple[int, ...]], tuple[tuple[Any, ...], list[Any]]] = {}
        for b in range(len(pchunks)):
            block_codes = self.codes[starts[b] : starts[b + 1]]
            present = tuple(int(c) for c in np.unique(block_codes))
            xy_keys = self.xy.keys(xy_in, b, 0)
            df_none: list[Any] = [None, None, None]
            for g, tilts in enumerate(groups):
                if self.xy.recipe is None:
                    xy_keys = self.xy.keys(xy_in, b, g)
                df_keys = df_none if self.defocus is None else self.defocus.keys(df_in, b, g)
                if (g, present) not in specs:
                    specs[g, present] = self._spec(tilts, present)
                spec, image_keys = specs[g, present]
                graph[(name, b, g, 0, 0)] = (
                    _patch_task, *xy_keys, *df_keys, block_codes, steps, spec, *image_keys
                )  # fmt: skip
        deps: list[Any] = [*xy_in, *df_in, *self.images]
        return da.Array(
            HighLevelGraph.from_collections(name, graph, dependencies=deps),
            name,
            chunks=(pchunks, tchunks, (steps.crop,), (steps.crop,)),
            dtype=np.dtype(steps.dtype),
        )

    def _spec(self, tilts: range, present: tuple[int, ...]) -> tuple[tuple[Any, ...], list[Any]]:
        """The ``tilts`` argument of :func:`_patch_task` and its image keys."""
        spec: list[Any] = []
        image_keys: list[Any] = []
        for local, t in enumerate(tilts):
            inside = []
            for c in present:
                e = self.experiments[c]
                if t < len(e.usable) and e.usable[t]:
                    optics = {k: float(v[t]) for k, v in e.optics.items()}
                    inside.append((c, e.width, e.height, float(e.pre_exposure[t]), optics, len(image_keys)))
                    image_keys.append((self.images[c].name, t, 0, 0))
            df_op = None if self.defocus is None else self.defocus.operator(t)
            spec.append((local, self.xy.operator(t), df_op, tuple(inside)))
        return tuple(spec), image_keys

    def visible(self, pchunks: tuple[int, ...]) -> da.Array:
        """(particle, image) visibility, lazily, projected in its tasks when fused."""
        e = self.experiments
        widths = np.array([x.width for x in e], dtype=np.float64)
        heights = np.array([x.height for x in e], dtype=np.float64)
        usable = np.zeros((len(e), self.n_tilts), dtype=bool)
        for i, x in enumerate(e):
            usable[i, : min(self.n_tilts, len(x.usable))] = x.usable[: self.n_tilts]
        codes_d = da.from_array(self.codes, chunks=(pchunks,))
        inputs = self.xy.inputs(pchunks)
        if self.xy.recipe is not None:
            r = self.xy.recipe
            args: list[Any] = [
                inputs[0],
                "pk",
                inputs[1],
                "pk",
                inputs[2],
                "p",
                r.weights,
                None,
                r.bias,
                None,
            ]
            args += [r.dtype, None]
        else:
            args = [inputs[0], "pta", *([None, None] * 5)]
        return da.blockwise(
            _visible_block, "pt", *args, codes_d, "p",
            widths, None, heights, None, usable, None, self.steps.radius, None,
            concatenate=True, new_axes={"t": self.n_tilts} if self.xy.recipe is not None else None,
            dtype=bool, meta=np.empty((0, 0), dtype=bool),
        )  # fmt: skip


class _Recipe:
    """Held by the array :func:`extract_relion` returns (``_cryoxr_subtilts``), for
    :func:`subtilt_blocks`."""

    __slots__ = ("name", "plan")

    def __init__(self, name: str, plan: _Plan) -> None:
        self.name, self.plan = name, plan


def subtilt_blocks(data: Any, particles_per_task: int | tuple[int, ...] | None = None) -> da.Array | None:
    """The stacks ``data`` (exactly the dask array of :func:`cryoxr.extract_subtilts` with
    ``mode="relion"``), rebuilt with one task per block of particles over all tilts; None
    for any other array.

    ``particles_per_task``: particles per block, or the blocks' sizes; default ~32 MiB of
    boxes and patches per task.

    Examples
    --------
    >>> import numpy as np, xarray as xr, cryoxr
    >>> model = cryoxr.make_projection_model(experiment_id="t", pixel_spacing=1.0)
    >>> ts = cryoxr.Image.from_array(np.ones((1, 64, 64), np.float32), pixel_spacing=1.0,
    ...                              experiment_id="t", stack=True)
    >>> xy = xr.DataArray([[[30.0, 31.0]]] * 3, dims=("particle", "image", "axis"))
    >>> s = cryoxr.extract_subtilts(ts, xy, box_size=16, mode="relion", projection_model=model,
    ...                             ctf=False, dose_weight=False)
    >>> blocks = subtilt_blocks(s.data, 2)
    >>> blocks.chunks[:2], np.allclose(blocks.compute(), s.values, rtol=0, atol=1e-6)
    (((2, 1), (1,)), True)
    >>> subtilt_blocks(s.data + 1) is None
    True
    """
    recipe = getattr(data, "_cryoxr_subtilts", None)
    if not (isinstance(recipe, _Recipe) and isinstance(data, da.Array) and data.name == recipe.name):
        return None
    plan = recipe.plan
    n = len(plan.codes)
    if isinstance(particles_per_task, tuple):
        if sum(particles_per_task) != n:
            raise InvalidValueError(
                f"subtilt_blocks: blocks {particles_per_task[:5]}... do not sum to {n} particles"
            )
        pchunks = particles_per_task
    else:
        size = particles_per_task or _task_particles(plan.steps, max(plan.n_tilts, 1))
        pchunks = _blocks(n, max(1, int(size)))
    return plan.build(pchunks, max(plan.n_tilts, 1))


def _task_particles(steps: RelionSteps, tilts: int) -> int:
    """Particles per task: ~32 MiB of input boxes and output patches for ``tilts`` tilts."""
    per = steps.box0**2 * 4 + steps.crop**2 * np.dtype(steps.dtype).itemsize
    return max(1, TASK_BYTES // (per * tilts))


def _source(values: Any, recipe: _Projection | None, shape: tuple[int, int], what: str) -> _Source:
    if recipe is not None:
        return _Source(recipe, None)
    if tuple(values.shape[:2]) != shape:
        raise InvalidValueError(
            f"extract_subtilts: {what} has shape {tuple(values.shape[:2])}, the projected positions {shape}"
        )
    return _Source(
        None, values if isinstance(values, da.Array) else da.from_array(np.asarray(values), chunks=-1)
    )


def extract_relion(
    tilt_series: Mapping[str, Image | xr.DataArray],
    projected: xr.DataArray,
    projection_model: pd.DataFrame,
    steps: RelionSteps,
    *,
    defocus: xr.Dataset | None,
    max_dose: float | None,
    particles_per_task: int | None,
) -> xr.DataArray:
    """The lazy RELION-path stack (see :func:`cryoxr.extract_subtilts`)."""
    if "experiment_id" in projected.coords:
        codes, uniques = pd.factorize(np.asarray(projected.coords["experiment_id"].values).astype(str))
        names = np.asarray(uniques, dtype=str)
    else:
        only = projected.attrs.get("experiment_ids") or list(tilt_series)
        if len(only) != 1:
            raise InvalidValueError(
                "extract_subtilts: the projected positions have no experiment_id coordinate; give one tilt series"
            )
        names, codes = np.asarray([str(only[0])]), np.zeros(projected.sizes["particle"], dtype=np.int64)
    missing = [str(n) for n in names if str(n) not in tilt_series]
    if missing:
        raise InvalidValueError(
            f"extract_subtilts: no tilt series for experiment(s) {missing[:5]}; given {sorted(tilt_series)[:10]}"
        )
    groups = model_groups(projection_model, [str(n) for n in names], where="extract_subtilts")
    datas = [validate_image(tilt_series[str(n)], stack=True) for n in names]
    spacings = {float(d.attrs["pixel_spacing"]) for d in datas}
    if len(spacings) != 1 or abs(spacings.pop() - steps.pixel_size) > 1e-6 * steps.pixel_size:
        raise InvalidValueError(
            f"extract_subtilts: all tilt series must have pixel spacing {steps.pixel_size} Å, found "
            f"{sorted({float(d.attrs['pixel_spacing']) for d in datas})}"
        )
    experiments = tuple(
        _experiment_tables(str(n), groups[str(n)], d, steps, max_dose)
        for n, d in zip(names, datas, strict=True)
    )
    n_particles, n_tilts = projected.sizes["particle"], projected.sizes["image"]
    shape = (n_particles, n_tilts)
    xy = _source(projected.data, projection_of(projected.data), shape, "projected")
    dfc = None
    if steps.ctf:
        if defocus is None:
            raise InvalidValueError(
                "extract_subtilts: ctf=True needs defocus= (cryoxr.particle_defocus(poses, model)); pass ctf=False "
                "to go without"
            )
        recipe = defocus_of(defocus)
        stacked = None
        if recipe is None:
            stacked = xr.concat([defocus[PTC.DEFOCUS_U], defocus[PTC.DEFOCUS_V]], dim="uv").transpose(
                "particle", "image", "uv"
            )
        elif tuple(defocus[PTC.DEFOCUS_U].shape) != shape:
            raise InvalidValueError(
                f"extract_subtilts: defocus has shape {tuple(defocus[PTC.DEFOCUS_U].shape)}, the projected "
                f"positions {shape}"
            )
        dfc = _source(None if stacked is None else stacked.data, recipe, shape, "defocus")
    images = []
    for d in datas:
        arr = d.data if isinstance(d.data, da.Array) else da.from_array(d.data, chunks=(1, -1, -1))
        images.append(arr.rechunk((1, -1, -1)))
    plan = _Plan(steps, experiments, np.asarray(codes), tuple(images), xy, dfc, n_tilts, max_dose)
    if particles_per_task is not None:
        pchunks = _blocks(n_particles, max(1, int(particles_per_task)))
    else:
        # the positions' own blocks when they are small enough (project's policy: the poses'
        # chunks), else ~32 MiB of patches per task
        size = _task_particles(steps, 1)
        existing = xy.recipe.pchunks if xy.recipe is not None else xy_chunks(projected.data)
        pchunks = tuple(existing) if existing and max(existing) <= size else _blocks(n_particles, size)
    out = plan.build(pchunks, 1)
    out._cryoxr_subtilts = _Recipe(out.name, plan)  # type: ignore[attr-defined]
    binned = steps.binned_pixel_size
    offsets = (np.arange(steps.crop) - steps.crop // 2) * binned
    coords: dict[str, Any] = {
        "image": np.arange(n_tilts),
        "y": ("y", offsets, {"units": "angstrom"}),
        "x": ("x", offsets, {"units": "angstrom"}),
        "visible": (("particle", "image"), plan.visible(pchunks)),
    }
    if "experiment_id" in projected.coords:
        coords["experiment_id"] = projected.coords["experiment_id"]
    attrs = {
        "pixel_spacing": binned,
        "tilt_series_pixel_spacing": steps.pixel_size,
        "box_size": steps.box,
        "crop_size": steps.crop,
        "bin": steps.bin,
        "ctf_premultiplied": int(steps.ctf),
        "dose_weighted": int(steps.dose_weight),
        "contrast_inverted": int(steps.invert_contrast),
        "circle_cropped": int(steps.circle_crop),
        "experiment_ids": [str(n) for n in names],
        "mode": "relion",
    }
    if len(names) == 1:
        attrs["experiment_id"] = str(names[0])
    return xr.DataArray(
        out, dims=("particle", "image", "y", "x"), coords=coords, attrs=attrs, name="subtilts"
    )


def xy_chunks(data: Any) -> tuple[int, ...]:
    """The particle chunks of a dask array (empty for numpy)."""
    return tuple(data.chunks[0]) if isinstance(data, da.Array) else ()
