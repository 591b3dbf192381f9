"""Subtilt extraction: square patches cut around projected particles in every tilt image.

:func:`extract_subtilts` cuts, lazily, one ``box_size`` patch per particle and tilt
around the positions of :func:`cryoxr.project`, one task per tilt and block of
particles, in one of two modes:

- ``"nearest"`` (default, for speed-only uses such as quick averages): the raw pixels
  around the nearest pixel; the sub-pixel residuals ride along as coordinates;
- ``"relion"``: RELION 5's 2D subtilt stacks (``relion_tomo_subtomo --stack2d``): sub-pixel
  centring in Fourier space, Fourier-crop binning, CTF premultiplication with each
  particle's defocus, dose weighting, contrast inversion and a soft circular crop, with
  RELION's per-tilt visibility (:mod:`cryoxr.subtilts` gives the steps).

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

from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cryoxr.errors import InvalidValueError
from cryoxr.image import Image, validate_image
from cryoxr.projection import _check_projected
from cryoxr.subtilt_graph import extract_relion
from cryoxr.subtilts import RelionSteps

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
    tilt_series: Image | xr.DataArray | Mapping[str, Image | xr.DataArray],
    projected: xr.DataArray,
    *,
    box_size: int,
    particles_per_task: int | None = None,
    mode: str = "nearest",
    projection_model: pd.DataFrame | None = None,
    defocus: xr.Dataset | None = None,
    bin: float = 1.0,
    crop_size: int | None = None,
    ctf: bool | None = None,
    dose_weight: bool | None = None,
    invert_contrast: bool | None = None,
    circle_crop: bool | None = None,
    max_dose: float | None = None,
    bfactor_per_dose: float = 0.0,
    dtype: Any = None,
) -> xr.DataArray:
    """Cut a ``box_size`` square patch around every projected point in every tilt, lazily.

    **mode="nearest"** (default): each patch is centred on the nearest pixel to the
    projected point (pixel ``floor(p + 0.5)`` sits at box index ``box_size // 2``); the
    sub-pixel residual ``p - floor(p + 0.5)`` is kept as coordinates ``residual_x`` and
    ``residual_y`` on (particle, image). Pixels outside the image (and whole patches of
    tilts an experiment lacks) are NaN.

    **mode="relion"**: RELION 5's 2D stacks (``relion_tomo_subtomo --stack2d``, the steps
    in :mod:`cryoxr.subtilts`): ``box_size`` is RELION's binned box ``--b``, a square of
    ``int(bin * box_size + 0.5)`` tilt-image pixels is cut, centred on the projected point
    to a fraction of a pixel, Fourier-cropped by ``bin``, multiplied by the CTF of the
    particle's own defocus and the tilt's dose weight, sign-inverted, soft-cropped to a
    circle and cut to ``crop_size``. The ``visible`` coordinate (particle, image) is
    RELION's ``rlnTomoVisibleFrames``; invisible tilts are zeros.

    One task makes the patches of one tilt for a block of particles, reading only that
    tilt image, so reductions such as the mean patch per tilt stream with a few chunks
    in memory whatever the number of particles. With ``"relion"``, positions straight from
    :func:`project` and defocus straight from :func:`particle_defocus` are computed inside
    those tasks from the poses (nothing per particle and tilt is held between tasks).

    Parameters
    ----------
    tilt_series
        A stack Image (dims ``("image", "y", "x")``) with at least as many images as
        ``projected`` has tilts; for ``mode="relion"`` also a mapping experiment id ->
        tilt series, for positions of several experiments.
    projected
        Output of :func:`project`, in pixels of the tilt images.
    box_size
        Patch size in pixels (>= 1); for ``"relion"`` the binned box, even.
    particles_per_task
        Particles per output chunk; default keeps each chunk near 32 MiB (``"relion"``:
        the chunks of the positions when no larger, as :func:`project` chunks them).
    mode
        ``"nearest"`` or ``"relion"``.
    projection_model
        (relion) The ProjectionModel of the positions: per-tilt optics (``voltage``,
        ``spherical_aberration``, ``amplitude_contrast``, ``defocus_angle``, optional
        ``phase_shift``, ``ctf_scale``, ``ctf_bfactor``), ``pre_exposure`` and ``excluded``.
    defocus
        (relion, with ``ctf``) :func:`particle_defocus` of the same poses and model.
    bin
        (relion) Fourier-crop factor, >= 1 (RELION ``--bin``).
    crop_size
        (relion) Output size, even, <= ``box_size`` (RELION ``--crop``); default ``box_size``.
    ctf, dose_weight, invert_contrast, circle_crop
        (relion) The steps, each on by default as in RELION. RELION's ``--no_ctf`` drops
        the dose weights too: pass ``ctf=False, dose_weight=False`` for its output.
    max_dose
        (relion) Tilts with a larger pre-exposure (e/Å²) are not visible (RELION ``--max_dose``).
    bfactor_per_dose
        (relion) RELION's ``rlnCtfBfactorPerElectronDose``; 0: Grant & Grigorieff's model.
    dtype
        (relion) ``float32`` (default) or ``float16``.

    Returns
    -------
    xarray.DataArray
        Lazy, dims ``("particle", "image", "y", "x")``; ``y``/``x`` coords are the box
        offsets in Å. ``"nearest"``: float32 for float32/integer images up to 16 bits,
        float64 otherwise. ``"relion"``: ``dtype``; attrs say which steps ran and the
        binned ``pixel_spacing``.

    Raises
    ------
    InvalidValueError
        Bad sizes or mode, options of the other mode, missing model columns or defocus.

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

    The RELION path on a model without optics, CTF and dose weighting off:

    >>> model = cryoxr.make_projection_model(experiment_id="t", pixel_spacing=1.0)
    >>> big = cryoxr.Image.from_array(np.ones((1, 64, 64), np.float32), pixel_spacing=1.0,
    ...                               experiment_id="t", stack=True)
    >>> xy = xr.DataArray([[[30.0, 31.0]]], dims=("particle", "image", "axis"))
    >>> s = extract_subtilts(big, xy, box_size=16, mode="relion", projection_model=model,
    ...                      ctf=False, dose_weight=False)
    >>> s.dtype.name, s.shape, bool(s.visible[0, 0])
    ('float32', (1, 1, 16, 16), True)
    """
    if mode == "relion":
        return _extract_relion_mode(
            tilt_series,
            projected,
            box_size=box_size,
            particles_per_task=particles_per_task,
            projection_model=projection_model,
            defocus=defocus,
            bin=bin,
            crop_size=crop_size,
            switches=(ctf, dose_weight, invert_contrast, circle_crop),
            max_dose=max_dose,
            bfactor_per_dose=bfactor_per_dose,
            dtype=dtype,
        )
    if mode != "nearest":
        raise InvalidValueError(f"extract_subtilts: mode must be 'nearest' or 'relion', found {mode!r}")
    relion_only = {
        "projection_model": projection_model,
        "defocus": defocus,
        "crop_size": crop_size,
        "ctf": ctf,
        "dose_weight": dose_weight,
        "invert_contrast": invert_contrast,
        "circle_crop": circle_crop,
        "max_dose": max_dose,
        "dtype": dtype,
    }
    given = [k for k, v in relion_only.items() if v is not None]
    given += ["bin"] * (bin != 1.0) + ["bfactor_per_dose"] * (bfactor_per_dose != 0.0)
    if given:
        raise InvalidValueError(f"extract_subtilts: {given} apply to mode='relion' only (mode is 'nearest')")
    if isinstance(tilt_series, Mapping):
        raise InvalidValueError("extract_subtilts: mode='nearest' takes one tilt series, found a mapping")
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


def _extract_relion_mode(
    tilt_series: Image | xr.DataArray | Mapping[str, Image | xr.DataArray],
    projected: xr.DataArray,
    *,
    box_size: int,
    particles_per_task: int | None,
    projection_model: pd.DataFrame | None,
    defocus: xr.Dataset | None,
    bin: float,
    crop_size: int | None,
    switches: tuple[bool | None, ...],
    max_dose: float | None,
    bfactor_per_dose: float,
    dtype: Any,
) -> xr.DataArray:
    """Check the RELION-path arguments and build :func:`cryoxr.subtilt_graph.extract_relion`'s graph."""
    where = "extract_subtilts(mode='relion')"
    _check_projected(projected, where)
    if projection_model is None:
        raise InvalidValueError(f"{where}: needs projection_model= (per-tilt optics, dose, exclusions)")
    box = int(box_size)
    if box != box_size or box < 2 or box % 2:
        raise InvalidValueError(f"{where}: box_size must be an even int >= 2, found {box_size!r}")
    crop = box if crop_size is None else int(crop_size)
    if crop_size is not None and (crop != crop_size or crop < 2 or crop % 2 or crop > box):
        raise InvalidValueError(
            f"{where}: crop_size must be an even int in [2, box_size={box}], found {crop_size!r}"
        )
    factor = float(bin)
    if not np.isfinite(factor) or factor < 1:
        raise InvalidValueError(f"{where}: bin must be a number >= 1, found {bin!r}")
    if int(int(factor * box + 0.5) / factor + 0.5) != box:
        raise InvalidValueError(
            f"{where}: bin {bin} does not map a box of {box} back onto itself; choose another"
        )
    out_dtype = np.dtype(np.float32 if dtype is None else dtype)
    if out_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise InvalidValueError(f"{where}: dtype must be float32 or float16, found {out_dtype}")
    if max_dose is not None and not (np.isfinite(max_dose) and max_dose > 0):
        raise InvalidValueError(f"{where}: max_dose must be a number > 0 (e/Å²), found {max_dose!r}")
    series = (
        tilt_series if isinstance(tilt_series, Mapping) else {_series_id(tilt_series, projected): tilt_series}
    )
    first = validate_image(next(iter(series.values())), stack=True)
    ctf, dose_weight, invert_contrast, circle_crop = (True if s is None else bool(s) for s in switches)
    steps = RelionSteps(
        box=box,
        bin=factor,
        crop=crop,
        pixel_size=float(first.attrs["pixel_spacing"]),
        ctf=ctf,
        dose_weight=dose_weight,
        invert_contrast=invert_contrast,
        circle_crop=circle_crop,
        bfactor_per_dose=float(bfactor_per_dose),
        dtype=out_dtype.name,
    )
    return extract_relion(
        series,
        projected,
        projection_model,
        steps,
        defocus=defocus if ctf else None,
        max_dose=max_dose,
        particles_per_task=particles_per_task,
    )


def _series_id(tilt_series: Image | xr.DataArray, projected: xr.DataArray) -> str:
    """The experiment of a single tilt series: the positions', else the image's."""
    ids = projected.attrs.get("experiment_ids")
    if ids and len(ids) == 1:
        return str(ids[0])
    data = validate_image(tilt_series, stack=True)
    return str(data.attrs.get("experiment_id"))
