"""The particle map from its subtilts: Fourier-space back-projection, as RELION 5 reconstructs.

:func:`reconstruct_particle` inserts the 2D Fourier transform of every subtilt (one
patch per particle and tilt, centred on the particle) as a central slice into a 3D
Fourier volume, at the orientation of that tilt (the ProjectionModel's rotation) times
the particle's orientation, accumulates the data and their weights per half set, and
divides. It follows ``relion_tomo_reconstruct_particle`` (RELION 5,
``src/jaz/tomography/programs/reconstruct_particle.cpp``) step by step:

1. **Insertion.** RELION multiplies each tilt's image by its CTF (times the dose
   weight, with the contrast flipped) and adds it into the volume; the weight volume
   receives CTF² (times the squared dose weight). Subtilts that are already
   CTF-premultiplied (``relion_tomo_subtomo`` writes them so) come with their CTF²
   weights (``ctf_weights``); without them every sample weighs 1, so the division below
   divides by the sampling density. The 3D position of a 2D frequency ``(kx, ky)`` of
   tilt ``t`` is ``Rᵀ (kx, ky, 0)`` with ``R = R_tilt · R_particle`` (particle frame ->
   tilt-image frame; RELION's ``projCut · particleToTomo``, of which only the rotation
   acts on a centred patch). cryoxr scatters each sample to its 8 neighbouring voxels
   with trilinear weights (``interpolation="trilinear"``) or to the nearest voxel
   (``"nearest"``); RELION gathers instead (each voxel within one voxel of the slice takes
   the bilinear interpolation of the slice, weighted ``1 - |distance|``). Both kernels are
   products of linear interpolators, so RELION's gridding correction below fits both;
   the maps agree to interpolation error, not voxel for voxel.
2. **Half sets.** Particle *i* goes to half ``rlnRandomSubset - 1`` when the PoseSet
   carries that column (RELION's ``getHalfSet``), else to half ``i % 2``. Sums of
   particle chunks are added into ``split_every`` running sums (:func:`fold_sum`, a
   reduction whose held partial sums do not grow with the number of particles, where a
   tree's levels do).
3. **Symmetry.** The summed data and weights of each half are averaged over the point
   group (:func:`cryoxr.symmetry.symmetry_matrices`), sampled trilinearly at ``g·k``, as
   RELION's ``Symmetry::symmetrise_FS_complex`` / ``_real`` do before the division.
4. **Gridding correction.** The data volume goes to real space (centred) and is divided
   by ``sinc²(r / box)`` (``r`` in voxels from the centre; ``sinc`` for nearest-neighbour
   insertion), with 0.01 as the floor where the sinc is smaller or ``r > box``:
   RELION's ``Reconstruction::griddingCorrect3D_sinc2``.
5. **Division.** Back in Fourier space each voxel is divided by its weight, floored at
   ``weight_fraction`` (0.001) of the radial average of the weights at its radius
   (linear in radius), and zeroed at and beyond Nyquist (``|k| >= box / 2``): RELION's
   ``ctfCorrect3D_heuristic``. With ``snr``, RELION's Wiener form ``w + 1 / snr`` instead.
6. **Mask.** RELION's ``Reconstruction::taper`` makes ``merged.mrc``: inside the sphere of
   radius ``box / 2`` about ``box / 2`` a raised-cosine edge ``taper`` voxels wide,
   the mean under that mask subtracted, zero outside.

The half maps use their own weights, the merged map the sum of both halves' data and
weights; each gets steps 4-6. The map's centre (the particle's position) is voxel
``box // 2``, as for the subtilts (``box / 2`` in RELION's even boxes).

Examples
--------
A point at the box centre, seen by two particles (one turned 90° about x) in 13 tilts
from -60° to 60°, comes back as a point at the map's centre voxel:

>>> import numpy as np, xarray as xr
>>> from scipy.spatial.transform import Rotation
>>> import cryoxr
>>> box, angles = 8, np.arange(-60.0, 61.0, 10.0)
>>> patches = np.zeros((2, len(angles), box, box), np.float32)
>>> patches[:, :, box // 2, box // 2] = 1.0
>>> sub = xr.DataArray(patches, dims=("particle", "image", "y", "x"), attrs={"pixel_spacing": 2.0})
>>> turns = Rotation.from_euler("x", [[0.0], [90.0]], degrees=True)
>>> poses = cryoxr.make_poseset(np.zeros((2, 3)), orientation=turns, experiment_id="t", pixel_spacing=2.0)
>>> model = cryoxr.make_projection_model(rotation_y=angles, experiment_id="t", pixel_spacing=2.0)
>>> maps = reconstruct_particle(sub, poses, model)
>>> sorted(maps.data_vars)
['half1', 'half2', 'merged']
>>> merged = maps.merged.values
>>> tuple(int(i) for i in np.unravel_index(merged.argmax(), merged.shape))
(4, 4, 4)
"""

from __future__ import annotations

from typing import Any, Literal

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from cryoxr.backprojection import HALF_SET_VARIABLE, backproject_block, finalise
from cryoxr.ctf import ctf_2d, dose_weights, tilt_ctf_parameters
from cryoxr.defocus import particle_defocus
from cryoxr.errors import InvalidValueError, SchemaError
from cryoxr.geometry import model_groups
from cryoxr.image import image_coords
from cryoxr.poseset import experiment_ids, validate_poseset
from cryoxr.projection_model import PMDL, PTC, rotation_matrices, validate_projection_model
from cryoxr.subtilt_graph import subtilt_blocks
from cryoxr.symmetry import symmetry_matrices

__all__ = ["ctf_weights", "reconstruct_particle"]

#: RELION ignores frequencies whose dose weight is below this (``--cutoff_fract``)
DOSE_CUTOFF = 0.01

INTERPOLATIONS = ("trilinear", "nearest")
#: subtilt bytes one task reads: particles per task default to this much input
TASK_BYTES = 32 * 2**20


def _tilt_rotations(poses: xr.Dataset, model: pd.DataFrame, n_images: int) -> tuple[list[str], np.ndarray]:
    """(E, n_images, 3, 3) rotations ``Rz Ry Rx`` of each experiment's tilts, in model row
    order (the ``image`` index of :func:`cryoxr.project`); NaN past an experiment's tilts."""
    experiments = experiment_ids(poses)
    groups = model_groups(model, experiments, where="reconstruct_particle")
    out = np.full((len(experiments), n_images, 3, 3), np.nan)
    for e, eid in enumerate(experiments):
        rows = groups[eid]
        if len(rows) > n_images:
            raise InvalidValueError(
                f"reconstruct_particle: experiment {eid!r} has {len(rows)} tilts in the projection model, "
                f"the subtilts only {n_images} images"
            )
        out[e, : len(rows)] = (
            rotation_matrices("z", rows[PMDL.ROTATION_Z].to_numpy())
            @ rotation_matrices("y", rows[PMDL.ROTATION_Y].to_numpy())
            @ rotation_matrices("x", rows[PMDL.ROTATION_X].to_numpy())
        )
    return experiments, out


def _check_subtilts(subtilts: xr.DataArray) -> tuple[int, float]:
    if not isinstance(subtilts, xr.DataArray):
        raise SchemaError(
            f"reconstruct_particle: subtilts must be an xarray.DataArray, found {type(subtilts).__name__}"
        )
    dims = tuple(str(d) for d in subtilts.dims)
    if dims != ("particle", "image", "y", "x"):
        raise SchemaError(
            f"reconstruct_particle: subtilts must have dims ('particle', 'image', 'y', 'x'), found {dims}"
        )
    box = int(subtilts.sizes["x"])
    if subtilts.sizes["y"] != box or box < 2:
        raise InvalidValueError(
            f"reconstruct_particle: subtilts must be square boxes of >= 2 pixels, found y {subtilts.sizes['y']} x {box}"
        )
    try:
        spacing = float(subtilts.attrs["pixel_spacing"])
    except (KeyError, TypeError, ValueError):
        raise SchemaError(
            "reconstruct_particle: subtilts need attrs['pixel_spacing'] (Å per pixel of the patches), found "
            f"{subtilts.attrs.get('pixel_spacing')!r}"
        ) from None
    if not np.isfinite(spacing) or spacing <= 0:
        raise InvalidValueError(
            f"reconstruct_particle: subtilts pixel_spacing must be > 0 Å, found {spacing!r}"
        )
    return box, spacing


def task_particles(n_images: int, box: int) -> int:
    """Particles per task by default: ~32 MiB of float32 patches (48 at 41 tilts, box 64).

    Pass the same ``particles_per_task`` to :func:`cryoxr.extract_subtilts` so that the
    subtilts arrive in the blocks the back-projection takes (no rechunking).

    Examples
    --------
    >>> task_particles(41, 64)
    49
    """
    return max(1, TASK_BYTES // (int(n_images) * int(box) * int(box) * 4))


def _blocks(n: int, size: int) -> tuple[int, ...]:
    return (size,) * (n // size) + ((n % size,) if n % size else ())


def _along_particles(value: Any, chunks: tuple[int, ...]) -> da.Array:
    """``value`` as a dask array in ``chunks`` along particles. Other axes keep their
    chunks: the tasks concatenate them (a separate rechunk would hold every block's merged
    subtilts at once when the subtilts come one tilt per chunk, as from the extraction)."""
    data = value.data if isinstance(value, xr.DataArray | xr.Variable) else value
    if not isinstance(data, da.Array):
        return da.from_array(np.asarray(data), chunks=(chunks, *(-1,) * (np.ndim(data) - 1)), name=False)
    return data if data.chunks[0] == tuple(chunks) else data.rechunk({0: chunks})


def _ctf_weight_block(
    defocus: np.ndarray,
    codes: np.ndarray,
    optics: np.ndarray,
    exposure: np.ndarray,
    box: int,
    pixel_size: float,
    dose: bool,
    bfactor_per_dose: float,
    cutoff: float,
) -> np.ndarray:
    """(n, T, 2) defocus U/V -> (n, T, box, box // 2 + 1) float32 (CTF x dose)², 0 where
    the dose weight is below ``cutoff`` or the tilt has no defocus."""
    codes = np.asarray(codes, dtype=np.int64)
    table = optics[codes]  # (n, T, k): angle, voltage, Cs, Q0, phase shift, B-factor, scale
    ok = np.isfinite(defocus).all(axis=2) & np.isfinite(table).all(axis=2)
    du = np.where(ok, defocus[..., 0], 1e4)
    dv = np.where(ok, defocus[..., 1], 1e4)
    t = np.where(ok[..., None], table, np.array([0.0, 300.0, 2.7, 0.1, 0.0, 0.0, 1.0]))
    ctf = ctf_2d(box, pixel_size, du, dv, *(t[..., i] for i in range(7)), dtype=np.float32)
    if dose:
        pre = np.where(ok, exposure[codes], 0.0)
        weight = dose_weights(box, pixel_size, pre, bfactor_per_dose=bfactor_per_dose, dtype=np.float32)
        ctf = np.where(weight < cutoff, np.float32(0.0), ctf * weight)
    return np.where(ok[..., None, None], ctf * ctf, np.float32(0.0))


def ctf_weights(
    subtilts: xr.DataArray,
    poses: xr.Dataset,
    projection_model: pd.DataFrame,
    *,
    defocus: xr.Dataset | None = None,
    dose_weighted: bool | None = None,
    bfactor_per_dose: float = 0.0,
    dose_cutoff: float = DOSE_CUTOFF,
) -> xr.DataArray:
    """The Fourier weights of CTF-premultiplied subtilts, lazily: ``(CTF x dose weight)²``.

    What RELION 5's ``reconstruct_particle`` adds to its weight volume for every tilt
    of a particle (``ctf.draw`` times ``doseWeights``, squared), with the frequencies
    whose dose weight is below ``dose_cutoff`` (``--cutoff_fract``, 0.01) set to 0. The
    CTF is drawn on the subtilts' grid at their pixel size (:func:`cryoxr.ctf.ctf_2d`),
    with each particle's own defocus.

    Parameters
    ----------
    subtilts
        The patches (their size and ``attrs["pixel_spacing"]`` give the grid; with
        ``dose_weighted`` None, ``attrs["dose_weighted"]`` says whether to include the
        dose weights, default yes).
    poses, projection_model
        As for :func:`reconstruct_particle`; the model needs the per-tilt optics columns
        (``defocus_u``, ``defocus_v``, ``defocus_angle``, ``voltage``,
        ``spherical_aberration``, ``amplitude_contrast``; ``pre_exposure`` for dose
        weights) and the geometry :func:`cryoxr.particle_defocus` needs.
    defocus
        Per particle-tilt defocus (:func:`cryoxr.particle_defocus`), if computed already.
    dose_weighted
        Include the dose weights (default: ``subtilts.attrs["dose_weighted"]``, else True).
    bfactor_per_dose
        RELION's ``rlnCtfBfactorPerElectronDose`` (0: Grant-Grigorieff weights).
    dose_cutoff
        Dose weights below this count as 0.

    Returns
    -------
    xarray.DataArray
        Dims ``("particle", "image", "ky", "kx")``, float32, the ``numpy.fft.rfft2``
        layout of a patch; chunked as the subtilts along ``particle``.
    """
    box, spacing = _check_subtilts(subtilts)
    n_images = int(subtilts.sizes["image"])
    experiments, _ = _tilt_rotations(poses, projection_model, n_images)
    if dose_weighted is None:
        dose_weighted = bool(subtilts.attrs.get("dose_weighted", True))
    groups = model_groups(projection_model, experiments, where="reconstruct_particle")
    optics = np.full((len(experiments), n_images, 7), np.nan)
    exposure = np.full((len(experiments), n_images), np.nan)
    keys = (
        "defocus_angle",
        "voltage",
        "spherical_aberration",
        "amplitude_contrast",
        "phase_shift",
        "bfactor",
        "scale",
    )
    for e, eid in enumerate(experiments):
        rows = groups[eid]
        params = tilt_ctf_parameters(rows, where=f"ctf_weights, experiment {eid!r}")
        optics[e, : len(rows)] = np.stack([params[k] for k in keys], axis=1)
        if dose_weighted:
            if PTC.PRE_EXPOSURE not in rows.columns:
                raise InvalidValueError(
                    f"ctf_weights, experiment {eid!r}: dose weights need column {PTC.PRE_EXPOSURE!r} "
                    "(rlnMicrographPreExposure, e/Å²); pass dose_weighted=False to go without"
                )
            exposure[e, : len(rows)] = rows[PTC.PRE_EXPOSURE].to_numpy(dtype=np.float64)
    pchunks = (
        subtilts.data.chunks[0] if isinstance(subtilts.data, da.Array) else (int(subtilts.sizes["particle"]),)
    )
    if defocus is None:  # in the subtilts' blocks: one chunk for all would make dask cut every block first
        defocus = particle_defocus(poses, projection_model, chunks=max(max(pchunks), 1))
    stacked = xr.concat([defocus[PTC.DEFOCUS_U], defocus[PTC.DEFOCUS_V]], dim="uv").transpose(
        "particle", "image", "uv"
    )
    if stacked.shape[:2] != (subtilts.sizes["particle"], n_images):
        raise InvalidValueError(
            f"ctf_weights: defocus has shape {stacked.shape[:2]}, the subtilts (particle, image) "
            f"{(subtilts.sizes['particle'], n_images)}"
        )
    codes: Any = np.zeros(subtilts.sizes["particle"], dtype=np.int64)
    if "experiment_id" in poses.coords:
        codes = pd.Categorical(np.asarray(poses.coords["experiment_id"].values), categories=experiments).codes
    half = box // 2 + 1
    weights = da.blockwise(
        _ctf_weight_block, "ptkl",
        _along_particles(stacked.variable, pchunks), "ptu",
        _along_particles(np.asarray(codes, dtype=np.int64), pchunks), "p",
        da.from_array(optics, chunks=-1, name=False), "eto",
        da.from_array(exposure, chunks=-1, name=False), "et",
        box, None, spacing, None, bool(dose_weighted), None, float(bfactor_per_dose), None, float(dose_cutoff), None,
        concatenate=True, new_axes={"k": box, "l": half}, dtype=np.float32, meta=np.empty((0,) * 4, np.float32),
    )  # fmt: skip
    return xr.DataArray(weights, dims=("particle", "image", "ky", "kx"), name="ctf_weights")


def _premultiplied_weights(subtilts: xr.DataArray, poses: xr.Dataset, model: pd.DataFrame) -> xr.DataArray:
    return ctf_weights(subtilts, poses, model)  # reconstruct_particle's keyword shadows the name


def _first_block(block: np.ndarray) -> np.ndarray:
    return np.array(block[0])


def _add_block(total: np.ndarray, block: np.ndarray) -> np.ndarray:
    return total + block[0]


def _add_all(totals: list[np.ndarray]) -> np.ndarray:
    out = np.array(totals[0])
    for total in totals[1:]:
        out += total
    return out


def fold_sum(partial: da.Array, *, lanes: int) -> da.Array:
    """Sum a dask array over its first axis (one block per step) as ``lanes`` running sums.

    Block ``i`` is added to the running sum of lane ``i % lanes``, then the lanes are added:
    what is held is ``lanes`` sums plus the blocks in flight, whatever the number of
    blocks. A tree reduction holds up to ``split_every - 1`` partial sums per level, and
    its levels grow with the blocks (the partial Fourier sums of a particle map are 6.5 MB
    each at box 64). The order of additions is fixed, so every scheduler gives the same
    bytes.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.arange(40.0, chunks=1).reshape(10, 4).rechunk((1, 4))
    >>> fold_sum(x, lanes=3).compute().tolist()
    [180.0, 190.0, 200.0, 210.0]
    """
    n = partial.numblocks[0]
    if any(len(c) != 1 for c in partial.chunks[1:]) or n == 0:
        return partial.sum(axis=0)
    lanes = max(1, min(int(lanes), n))
    token = tokenize(partial.name, lanes)
    running, out = "fold-running-" + token, "fold-sum-" + token
    zeros = (0,) * (partial.ndim - 1)
    layer: dict[Any, Any] = {}
    ends = []
    for lane in range(lanes):
        previous = None
        for i in range(lane, n, lanes):
            block = (partial.name, i, *zeros)
            layer[(running, i)] = (_first_block, block) if previous is None else (_add_block, previous, block)
            previous = (running, i)
        ends.append(previous)
    layer[(out, *zeros)] = (_add_all, ends)
    graph = HighLevelGraph.from_collections(out, layer, dependencies=[partial])  # type: ignore[list-item]
    return da.Array(graph, out, chunks=tuple((size,) for size in partial.shape[1:]), dtype=partial.dtype)


def reconstruct_particle(
    subtilts: xr.DataArray,
    poses: xr.Dataset,
    projection_model: pd.DataFrame,
    *,
    ctf_weights: xr.DataArray | None = None,
    symmetry: str = "C1",
    half_sets: xr.DataArray | None = None,
    interpolation: Literal["trilinear", "nearest"] = "trilinear",
    recentre: bool = True,
    snr: float | None = None,
    weight_fraction: float = 0.001,
    taper: float | None = 10.0,
    particles_per_task: int | None = None,
    split_every: int = 8,
) -> xr.Dataset:
    """Reconstruct the particle's map from its subtilts, lazily (see the module docstring).

    Parameters
    ----------
    subtilts
        Dims ``("particle", "image", "y", "x")``, square boxes centred on the particle
        (:func:`cryoxr.extract_subtilts`); ``image`` indexes each experiment's tilts in the
        order of its rows in ``projection_model``. A tilt whose patch holds NaN (outside
        the image, a tilt the experiment lacks) is left out, as are tilts where a
        boolean coordinate ``visible`` (particle, image) is false (RELION's
        ``rlnTomoVisibleFrames``). ``attrs["pixel_spacing"]`` is the map's voxel size.
    poses
        The PoseSet the subtilts were cut for, particle for particle: its
        ``orientation`` turns the map's frame into the tomogram's.
    projection_model
        The tilts' rotations (``rotation_x/y/z``) per experiment.
    ctf_weights
        The weight of every Fourier sample, dims ``("particle", "image", "ky", "kx")``
        in the ``numpy.fft.rfft2`` layout of a patch (shape ``(box, box // 2 + 1)``).
        Default: for subtilts whose ``attrs["ctf_premultiplied"]`` is true (RELION's
        subtilts), :func:`ctf_weights` (CTF² times the squared dose weight, from the
        model's per-tilt optics columns and each particle's defocus); else 1.
    symmetry
        Point group (``C1``, ``C<n>``, ``D<n>``, ``T``, ``O``, ``I``...; see
        :func:`cryoxr.symmetry.symmetry_matrices`).
    half_sets
        1 or 2 per particle. Default: the PoseSet's ``rlnRandomSubset`` when present,
        else even particle index -> half 1, odd -> half 2.
    interpolation
        ``"trilinear"`` (gridding correction sinc²) or ``"nearest"`` (sinc; ~5x faster).
    recentre
        Move each patch's point by its sub-pixel residual (coordinates ``residual_x`` /
        ``residual_y`` of the nearest-pixel extraction) with a Fourier phase shift; a no-op
        for subtilts without these coordinates.
    snr
        Divide by ``weight + 1 / snr`` (RELION's ``--SNR``) instead of RELION's default
        heuristic (weights floored at ``weight_fraction`` of their radial average).
    weight_fraction
        The heuristic's floor (RELION: 0.001).
    taper
        Width in voxels of the soft spherical mask (RELION: 10); None for no mask and
        no mean subtraction.
    particles_per_task
        Particles per task (default: the subtilts' chunks when they hold at most
        :func:`task_particles`, else that many: ~32 MiB of patches per task).
    split_every
        Running sums of the per-task partial maps (:func:`fold_sum`: memory is this many
        partial maps, whatever the number of particles).

    Returns
    -------
    xarray.Dataset
        Lazy ``half1``, ``half2`` and ``merged`` maps, dims ``("z", "y", "x")``, float32,
        coords in Å, the particle at voxel ``box // 2``; each variable follows cryoxr's
        image model (``cryoxr.Tomogram(maps.merged)`` writes with ``.to_mrc``).

    Raises
    ------
    SchemaError, InvalidValueError
        Subtilts, poses or model that do not fit together (the message says how);
        ``rlnRandomSubset`` values other than 1 and 2 (when computed).
    """
    box, spacing = _check_subtilts(subtilts)
    validate_poseset(poses, check_values=False)
    validate_projection_model(projection_model)
    n = int(subtilts.sizes["particle"])
    if poses.sizes["particle"] != n:
        raise InvalidValueError(
            f"reconstruct_particle: the subtilts hold {n} particles, the poses {poses.sizes['particle']}"
        )
    if interpolation not in INTERPOLATIONS:
        raise InvalidValueError(
            f"reconstruct_particle: interpolation must be one of {INTERPOLATIONS}, found {interpolation!r}"
        )
    if snr is not None and not (np.isfinite(snr) and snr > 0):
        raise InvalidValueError(f"reconstruct_particle: snr must be a positive number, found {snr!r}")
    if not (np.isfinite(weight_fraction) and weight_fraction >= 0):
        raise InvalidValueError(
            f"reconstruct_particle: weight_fraction must be >= 0, found {weight_fraction!r}"
        )
    if taper is not None and not (np.isfinite(taper) and taper >= 0):
        raise InvalidValueError(f"reconstruct_particle: taper must be >= 0 voxels or None, found {taper!r}")
    if int(split_every) < 2:
        raise InvalidValueError(f"reconstruct_particle: split_every must be >= 2, found {split_every!r}")
    group = symmetry_matrices(symmetry)
    n_images = int(subtilts.sizes["image"])
    experiments, tilt_rotations = _tilt_rotations(poses, projection_model, n_images)
    if particles_per_task is not None:
        pchunks = _blocks(n, max(1, int(particles_per_task)))
    else:
        size = task_particles(n_images, box)
        existing = subtilts.data.chunks[0] if isinstance(subtilts.data, da.Array) else ()
        # the subtilts' own blocks when they are small enough (no rechunk), else ~32 MiB blocks
        pchunks = tuple(existing) if existing and max(existing) <= size else _blocks(n, size)
    pchunks = pchunks or (0,)
    codes: Any = np.zeros(n, dtype=np.int64)
    if "experiment_id" in poses.coords:
        codes = pd.Categorical(np.asarray(poses.coords["experiment_id"].values), categories=experiments).codes
    subsets: Any
    if half_sets is not None:
        subsets, from_subsets = half_sets, True
    elif HALF_SET_VARIABLE in poses.data_vars:
        subsets, from_subsets = poses[HALF_SET_VARIABLE], True
    else:
        subsets, from_subsets = np.zeros(n), False
    if np.ndim(subsets) != 1 or len(subsets) != n:
        raise InvalidValueError(
            f"reconstruct_particle: half sets must hold one value per particle ({n}), found shape {np.shape(subsets)}"
        )
    # subtilts straight from extract_subtilts: cut again one task per block over all tilts
    # (a particle's tilts arrive together; a 41st of the tasks)
    blocks = subtilt_blocks(subtilts.data, tuple(pchunks))
    args: list[Any] = [
        blocks if blocks is not None else _along_particles(subtilts, pchunks), "ptyx",
        _along_particles(poses["orientation"], pchunks), "pq",
        _along_particles(np.asarray(codes, dtype=np.int64), pchunks), "p",
        _along_particles(subsets, pchunks), "p",
        da.arange(n, chunks=(pchunks,)), "p",
        da.from_array(tilt_rotations, chunks=-1, name=False), "euij",
    ]  # fmt: skip
    if recentre and {"residual_x", "residual_y"} <= set(subtilts.coords):
        shifts = xr.concat([subtilts.coords["residual_x"], subtilts.coords["residual_y"]], dim="axis")
        args += [_along_particles(shifts.transpose("particle", "image", "axis").variable, pchunks), "pta"]
    else:
        args += [None, None]
    if ctf_weights is None and bool(subtilts.attrs.get("ctf_premultiplied", False)):
        ctf_weights = _premultiplied_weights(subtilts, poses, projection_model)
    if ctf_weights is not None:
        expected = (n, n_images, box, box // 2 + 1)
        if tuple(ctf_weights.shape) != expected:
            raise InvalidValueError(
                f"reconstruct_particle: ctf_weights must have shape (particle, image, ky, kx) = {expected}, "
                f"found {tuple(ctf_weights.shape)}"
            )
        args += [_along_particles(ctf_weights, pchunks), "ptkl"]
    else:
        args += [None, None]
    if "visible" in subtilts.coords:
        args += [_along_particles(subtilts.coords["visible"].variable, pchunks), "pt"]
    else:
        args += [None, None]
    n_voxels = box * box * (box // 2 + 1)
    trilinear = interpolation == "trilinear"
    partial = da.blockwise(
        backproject_block, "phvc", *args, from_subsets, None, trilinear, None,
        concatenate=True, new_axes={"h": 2, "v": n_voxels, "c": 3}, adjust_chunks={"p": 1},
        dtype=np.float64, meta=np.empty((0, 0, 0, 0)),
    )  # fmt: skip
    summed = fold_sum(partial, lanes=int(split_every))
    maps = da.blockwise(
        finalise, "mzyx", summed, "hvc", box, None, group, None, trilinear, None,
        float(weight_fraction), None, snr, None, taper, None,
        concatenate=True, new_axes={"m": 3, "z": box, "y": box, "x": box},
        dtype=np.float32, meta=np.empty((0, 0, 0, 0), np.float32),
    )  # fmt: skip
    coords = image_coords((box,) * 3, ("z", "y", "x"), spacing)
    out = {}
    for i, name in enumerate(("half1", "half2", "merged")):
        attrs = {
            "experiment_id": name,
            "pixel_spacing": spacing,
            "source": "cryoxr.reconstruct_particle",
            "symmetry": str(symmetry).strip().upper(),
            "box_size": box,
            "n_particles": n,
        }
        out[name] = xr.DataArray(maps[i], dims=("z", "y", "x"), coords=coords, attrs=attrs, name=name)
    return xr.Dataset(out, attrs={"pixel_spacing": spacing, "symmetry": str(symmetry).strip().upper()})
