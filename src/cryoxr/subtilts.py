"""RELION 5's 2D subtilt stacks (``relion_tomo_subtomo --stack2d``), lazily: the kernel and the graph.

:func:`cryoxr.extract_subtilts` with ``mode="relion"`` lands here. For every particle and
tilt, RELION 5 (``SubtomoProgram::processTomograms`` in
``src/jaz/tomography/programs/subtomo.cpp`` and ``TomoExtraction::extractAt2D_Fourier`` in
``src/jaz/tomography/extraction.h``, commit 73f0a3c; restated, not copied):

1. cuts a square of ``s0 = int(bin * box + 0.5)`` tilt-image pixels whose corner is
   ``round(p) - s0 / 2`` (C ``round``: halves away from zero; ``p`` the projected point),
   pixels beyond the image edge repeating the edge (``extractSquares`` clamps);
2. Fourier transforms it with the box centre ``s0 / 2`` as origin (unitary FFT);
3. crops the transform to ``box`` (Fourier-crop binning) and divides by ``bin``;
4. shifts by ``(p - corner) / bin - box / 2`` binned pixels, so the projected point lands
   on pixel ``box / 2`` (a phase ramp: sub-pixel exact);
5. multiplies by the CTF of the particle's own defocus (depth offset included:
   :func:`cryoxr.particle_defocus`) at the binned pixel size, times the tilt's dose
   weight (:func:`cryoxr.ctf.dose_weights`) and ``-1`` to invert the contrast. Without CTF
   RELION applies neither CTF nor dose weights, only the sign; here each is a switch;
6. divides by ``bin`` again ("so that the greyscale does not depend on binning");
7. transforms back (unitary) and crops to a circle of radius ``box / 2 - (box - crop) / 2``
   with a 5-pixel raised-cosine edge, after subtracting the mean of the pixels outside
   that radius (``TomoExtraction::cropCircle``);
8. keeps the central ``crop`` pixels.

A tilt is *visible* (``rlnTomoVisibleFrames``) when the projected point lies more than
``bin * crop / 2`` tilt-image pixels inside every edge (``Tomogram::isVisible``, strict
inequalities), the tilt is not excluded and, with ``max_dose``, its pre-exposure is at most
``max_dose``. Invisible tilts are zeros here, as in RELION before it drops them from the
file. RELION's options left out: pre-crop (``--circle_precrop``), whitening, gridding
pre-correction, odd-order aberration correction, motion trajectories.

One task makes the patches of one block of particles in one tilt and reads that tilt
image of each experiment the block holds (for MRC files a memory map: only the pages the
boxes touch are read).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import scipy.fft
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from cryoxr.ctf import ctf_2d, dose_weights, tilt_ctf_parameters
from cryoxr.errors import InvalidValueError
from cryoxr.image import Image, validate_image
from cryoxr.projection_model import PMDL, PTC

__all__ = ["RelionSteps", "extract_relion", "relion_patches"]

#: raised-cosine width of RELION's circular crop, pixels (``EDGE_FALLOFF``)
CIRCLE_FALLOFF = 5.0


@dataclass(frozen=True)
class RelionSteps:
    """What to do to every patch (picklable; one per extraction)."""

    box: int  #: binned box (RELION ``--b``)
    bin: float  #: Fourier-crop factor (``--bin``)
    crop: int  #: output size (``--crop``)
    pixel_size: float  #: Å per tilt-image pixel
    ctf: bool = True
    dose_weight: bool = True
    invert_contrast: bool = True
    circle_crop: bool = True
    bfactor_per_dose: float = 0.0
    dtype: str = "float32"

    @property
    def box0(self) -> int:
        """Unbinned box cut from the tilt image: ``int(bin * box + 0.5)``."""
        return int(self.bin * self.box + 0.5)

    @property
    def radius(self) -> float:
        """Visibility margin in tilt-image pixels: ``bin * crop / 2``."""
        return self.bin * self.crop / 2.0

    @property
    def binned_pixel_size(self) -> float:
        return self.bin * self.pixel_size


def _c_round(x: np.ndarray) -> np.ndarray:
    """C's ``round``: halves away from zero (numpy rounds them to even)."""
    return np.where(x >= 0, np.floor(x + 0.5), np.ceil(x - 0.5)).astype(np.int64)


def _fourier_crop(f: np.ndarray, size: int) -> np.ndarray:
    """Keep the ``size`` lowest frequencies of rfft2 spectra (m, h0, h0 // 2 + 1)."""
    h0 = f.shape[-2]
    if size == h0:
        return f
    top = size // 2
    rows = np.r_[0:top, h0 - (size - top) : h0]
    return f[:, rows, : size // 2 + 1]


def _circle_crop(images: np.ndarray, boundary: float) -> np.ndarray:
    """RELION's ``cropCircle``: minus the mean outside the radius, raised-cosine edge."""
    n = images.shape[-1]
    centre = float(n // 2)
    radius = centre - boundary
    r = np.hypot(*np.meshgrid(np.arange(n) - centre, np.arange(n) - centre, indexing="ij"))
    outside = r > radius
    mean = images[:, outside].mean(axis=1) if outside.any() else np.zeros(len(images), images.dtype)
    inner = radius - CIRCLE_FALLOFF
    weight = np.where(
        r < inner, 1.0, np.where(r < radius, 0.5 - 0.5 * np.cos(np.pi * (radius - r) / CIRCLE_FALLOFF), 0.0)
    )
    return (images - mean[:, None, None]) * weight.astype(images.dtype)


def relion_patches(
    image: np.ndarray,
    points: np.ndarray,
    steps: RelionSteps,
    *,
    defocus: np.ndarray | None = None,
    optics: Mapping[str, float] | None = None,
    pre_exposure: float = 0.0,
) -> np.ndarray:
    """The processed ``(m, crop, crop)`` patches of ``m`` points in one tilt image.

    Steps 1-8 of the module docstring, vectorised over the points.

    Parameters
    ----------
    image
        The tilt image, ``(ny, nx)``.
    points
        ``(m, 2)`` projected ``(x, y)`` in tilt-image pixels (all finite).
    steps
        The extraction's settings.
    defocus
        ``(m, 2)`` defocus U, V (Å) of each particle in this tilt; needed with ``steps.ctf``.
    optics
        The other :func:`cryoxr.ctf.ctf_2d` keywords of this tilt (scalars).
    pre_exposure
        Cumulative exposure of this tilt, e/Å² (for ``steps.dose_weight``).

    Examples
    --------
    A point at (10.3, 12.0) of a single bright pixel there lands on the box centre:

    >>> import numpy as np
    >>> img = np.zeros((32, 32), np.float32); img[12, 10] = 1.0
    >>> s = RelionSteps(box=16, bin=1.0, crop=16, pixel_size=1.0, ctf=False, dose_weight=False,
    ...                 invert_contrast=False, circle_crop=False)
    >>> out = relion_patches(img, np.array([[10.0, 12.0]]), s)
    >>> np.unravel_index(out[0].argmax(), out[0].shape)
    (np.int64(8), np.int64(8))
    """
    s0, box = steps.box0, steps.box
    ny, nx = image.shape
    corner = _c_round(points) - s0 // 2  # (m, 2) x, y
    offsets = np.arange(s0)
    cols = np.clip(corner[:, 0, None] + offsets, 0, nx - 1)
    rows = np.clip(corner[:, 1, None] + offsets, 0, ny - 1)
    patches = np.asarray(image[rows[:, :, None], cols[:, None, :]], dtype=np.float32)
    centred = np.roll(patches, (-(s0 // 2), -(s0 // 2)), axis=(1, 2))
    spectra = scipy.fft.rfft2(centred, norm="ortho", workers=1)
    if steps.bin != 1.0:
        spectra = _fourier_crop(spectra, box) / np.float32(steps.bin)
    # phase ramp: the point moves to pixel box / 2 of the binned box
    t = (points - corner) / steps.bin - box // 2  # (m, 2)
    ky = np.fft.fftfreq(box) * box
    kx = np.arange(box // 2 + 1)
    phase = (
        2 * np.pi / box * (t[:, 0, None, None] * kx[None, None, :] + t[:, 1, None, None] * ky[None, :, None])
    )
    factor = np.exp(1j * phase)
    weight = np.float32(-1.0 if steps.invert_contrast else 1.0) / np.float32(steps.bin)
    if steps.ctf:
        if defocus is None or optics is None:
            raise InvalidValueError("relion_patches: ctf=True needs defocus and optics")
        factor = factor * ctf_2d(
            box,
            steps.binned_pixel_size,
            defocus[:, 0],
            defocus[:, 1],
            optics["defocus_angle"],
            optics["voltage"],
            optics["spherical_aberration"],
            optics["amplitude_contrast"],
            optics["phase_shift"],
            optics["bfactor"],
            optics["scale"],
        )
    if steps.dose_weight:
        factor = factor * dose_weights(
            box, steps.binned_pixel_size, pre_exposure, bfactor_per_dose=steps.bfactor_per_dose
        )
    spectra = spectra * (factor * weight).astype(np.complex64)
    out = scipy.fft.irfft2(spectra, s=(box, box), norm="ortho", workers=1)
    out = np.roll(out, (box // 2, box // 2), axis=(1, 2)).astype(np.float32, copy=False)
    boundary = (box - steps.crop) // 2
    if steps.circle_crop:
        out = _circle_crop(out, boundary)
    if boundary:
        out = out[:, boundary : boundary + steps.crop, boundary : boundary + steps.crop]
    return out


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


def _patch_task(
    xy: np.ndarray,
    defocus: np.ndarray | None,
    codes: np.ndarray,
    steps: RelionSteps,
    tilts: tuple[tuple[int, int, int, float, dict[str, float]], ...],
    *images: np.ndarray,
) -> np.ndarray:
    """Patches (n, 1, crop, crop) of a block of particles in one tilt (zeros where invisible).

    ``tilts`` holds, per experiment of the block that has this tilt and uses it,
    ``(code, width, height, pre_exposure, optics)``; ``images`` are its tilt images.
    """
    out = np.zeros((len(xy), 1, steps.crop, steps.crop), dtype=steps.dtype)
    for (code, width, height, pre_exposure, optics), image in zip(tilts, images, strict=True):
        mine = np.nonzero(codes == code)[0]
        keep = mine[_visible(xy[mine, 0, :], width, height, steps.radius)]
        if keep.size == 0:
            continue
        out[keep, 0] = relion_patches(
            image.reshape(image.shape[-2:]),
            xy[keep, 0, :],
            steps,
            defocus=None if defocus is None else defocus[keep, 0, :],
            optics=optics,
            pre_exposure=pre_exposure,
        )
    return out


def _visible_block(
    xy: np.ndarray,
    codes: np.ndarray,
    widths: np.ndarray,
    heights: np.ndarray,
    usable: np.ndarray,
    radius: float,
) -> np.ndarray:
    """(n, T) visibility of a block of particles."""
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


def _as_dask(values: Any, chunks: tuple[Any, ...]) -> da.Array:
    array = values if isinstance(values, da.Array) else da.from_array(np.asarray(values), chunks=-1)
    return array.rechunk(chunks)


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
    groups = {str(k): g for k, g in projection_model.groupby(PMDL.EXPERIMENT_ID, sort=False)}
    absent = [str(n) for n in names if str(n) not in groups]
    if absent:
        raise InvalidValueError(
            f"extract_subtilts: experiment(s) {absent[:5]} are absent from the projection model"
        )
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
    itemsize = np.dtype(steps.dtype).itemsize
    ppt = int(particles_per_task or max(1, (32 * 2**20) // (steps.box0**2 * 4 + steps.crop**2 * itemsize)))
    pchunks = tuple(min(ppt, n_particles - s) for s in range(0, n_particles, ppt)) or (0,)
    xy = _as_dask(projected.data, (pchunks, 1, 2))
    dfc = None
    if steps.ctf:
        if defocus is None:
            raise InvalidValueError(
                "extract_subtilts: ctf=True needs defocus= (cryoxr.particle_defocus(poses, model)); pass ctf=False "
                "to go without"
            )
        stacked = xr.concat([defocus[PTC.DEFOCUS_U], defocus[PTC.DEFOCUS_V]], dim="uv").transpose(
            "particle", "image", "uv"
        )
        if stacked.shape[:2] != (n_particles, n_tilts):
            raise InvalidValueError(
                f"extract_subtilts: defocus has shape {stacked.shape[:2]}, the projected positions {(n_particles, n_tilts)}"
            )
        dfc = _as_dask(stacked.data, (pchunks, 1, 2))
    images = []
    for d in datas:
        arr = d.data if isinstance(d.data, da.Array) else da.from_array(d.data, chunks=(1, -1, -1))
        images.append(arr.rechunk((1, -1, -1)))
    name = "relion-subtilts-" + tokenize(xy, dfc, codes, steps, [a.name for a in images], max_dose)
    graph: dict[Any, Any] = {}
    starts = np.cumsum((0, *pchunks))
    for b in range(len(pchunks)):
        block_codes = codes[starts[b] : starts[b + 1]]
        present = np.unique(block_codes)
        for t in range(n_tilts):
            inside = [int(c) for c in present if t < len(experiments[c].usable) and experiments[c].usable[t]]
            tilts = tuple(
                (
                    c,
                    experiments[c].width,
                    experiments[c].height,
                    float(experiments[c].pre_exposure[t]),
                    {k: float(v[t]) for k, v in experiments[c].optics.items()},
                )
                for c in inside
            )
            graph[(name, b, t, 0, 0)] = (
                _patch_task,
                (xy.name, b, t, 0),
                None if dfc is None else (dfc.name, b, t, 0),
                block_codes,
                steps,
                tilts,
                *[(images[c].name, t, 0, 0) for c in inside],
            )
    deps = [xy, *images] + ([dfc] if dfc is not None else [])
    out = da.Array(
        HighLevelGraph.from_collections(name, graph, dependencies=deps),
        name,
        chunks=(pchunks, (1,) * n_tilts, (steps.crop,), (steps.crop,)),
        dtype=np.dtype(steps.dtype),
    )
    widths = np.array([e.width for e in experiments], dtype=np.float64)
    heights = np.array([e.height for e in experiments], dtype=np.float64)
    usable = np.zeros((len(experiments), n_tilts), dtype=bool)
    for i, e in enumerate(experiments):
        usable[i, : min(n_tilts, len(e.usable))] = e.usable[:n_tilts]
    codes_d = da.from_array(codes, chunks=(pchunks,))
    visible = da.blockwise(
        _visible_block, "pt", xy.rechunk((pchunks, -1, 2)), "pta", codes_d, "p",
        widths, None, heights, None, usable, None, steps.radius, None,
        concatenate=True, dtype=bool, meta=np.empty((0, 0), dtype=bool),
    )  # fmt: skip
    binned = steps.binned_pixel_size
    offsets = (np.arange(steps.crop) - steps.crop // 2) * binned
    coords: dict[str, Any] = {
        "image": np.arange(n_tilts),
        "y": ("y", offsets, {"units": "angstrom"}),
        "x": ("x", offsets, {"units": "angstrom"}),
        "visible": (("particle", "image"), visible),
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
