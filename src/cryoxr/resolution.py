"""Fourier shell (ring) correlation between two maps, and the resolution where it drops.

:func:`fsc` correlates two cubes (or squares: FRC) shell by shell of their Fourier
transforms, with the shell frequencies in 1/Å, and reads the resolution where the curve
first falls below 0.143 (the half-map criterion of Rosenthal & Henderson 2003).

Examples
--------
>>> import numpy as np
>>> import cryoxr
>>> vol = cryoxr.Tomogram.from_array(np.random.default_rng(0).normal(size=(16, 16, 16)),
...                                  pixel_spacing=2.0, experiment_id="a")
>>> curve = fsc(vol, vol)
>>> bool(np.allclose(curve.values, 1.0)), curve.attrs["resolution_0143"]   # Nyquist: 2 * 2 Å
(True, 4.0)
"""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import xarray as xr
from scipy import fft

from cryoxr.errors import InvalidValueError
from cryoxr.image import Image, validate_image

__all__ = ["FSC_THRESHOLD", "fsc"]

#: the half-map criterion
FSC_THRESHOLD = 0.143


def _shell_index(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Shell of every rfftn coefficient (rounded radius in 1/(N pixels)) and its weight.

    The weight counts each coefficient of the half space for itself and its conjugate
    twin (2), except the planes ``x = 0`` and ``x = N/2`` that hold both (1), so shell sums
    over the half space equal those over the whole transform.
    """
    n = shape[0]
    axes = [fft.fftfreq(n) * n for _ in shape[:-1]] + [fft.rfftfreq(n) * n]
    grids = np.meshgrid(*axes, indexing="ij")
    radius = np.sqrt(sum(g * g for g in grids))
    shell = np.rint(radius).astype(np.int64)
    last = np.abs(fft.rfftfreq(n) * n)
    weight_x = np.where((last == 0) | ((n % 2 == 0) & (last == n // 2)), 1.0, 2.0)
    weight = np.broadcast_to(weight_x, shell.shape)
    return shell.ravel(), np.ascontiguousarray(weight).ravel()


def _as_array(value: Any, shape: tuple[int, ...], where: str) -> Any:
    data = value.data if isinstance(value, Image | xr.DataArray) else value
    if tuple(np.shape(data)) != shape:
        raise InvalidValueError(
            f"{where}: mask must have the maps' shape {shape}, found {tuple(np.shape(data))}"
        )
    return data


def fsc(
    a: Image | xr.DataArray,
    b: Image | xr.DataArray,
    *,
    mask: Image | xr.DataArray | np.ndarray | None = None,
) -> xr.DataArray:
    """Fourier shell correlation of two maps (Fourier ring correlation for 2D images).

    ``FSC(r) = Re sum A B* / sqrt(sum |A|^2 sum |B|^2)`` over the coefficients whose
    radius rounds to shell ``r`` (in units of ``1 / (N * pixel_spacing)``), for shells 0
    to ``N // 2`` (Nyquist); 0 where either map has no power in the shell. Computes the
    two maps (one dask compute for both, so two half maps of one lazy average share their
    reduction).

    Parameters
    ----------
    a, b
        Cubes (or squares) of the same shape and pixel spacing: Images or image
        DataArrays, lazy or not.
    mask
        Multiplied into both maps before the transform (a soft mask, values 0 to 1).

    Returns
    -------
    xarray.DataArray
        dims ``("shell",)``; coords ``shell`` (int), ``frequency`` (1/Å), ``resolution``
        (Å, ``1 / frequency``) and ``n_coefficients`` per shell. attrs
        ``resolution_0143``: the resolution in Å where the curve first falls below 0.143
        (linear interpolation between the shells around the crossing, shell 0 counted as
        1), or Nyquist (``2 * pixel_spacing``) when it never does, as then says
        ``crosses_0143 = False``; also ``threshold`` and ``pixel_spacing``.

    Raises
    ------
    InvalidValueError
        Maps that are not cubes / squares, of different shapes or pixel spacings, or a
        mask of another shape.

    Examples
    --------
    >>> import numpy as np
    >>> import cryoxr
    >>> rng = np.random.default_rng(1)
    >>> a, b = (cryoxr.Tomogram.from_array(rng.normal(size=(32, 32, 32)), pixel_spacing=1.0,
    ...                                    experiment_id=k) for k in "ab")
    >>> curve = fsc(a, b)                        # independent noise: ~0 beyond the first shells
    >>> bool(abs(curve.sel(shell=slice(4, None))).max() < 0.2)
    True
    """
    where = "fsc"
    da_, db_ = validate_image(a), validate_image(b)
    if da_.shape != db_.shape:
        raise InvalidValueError(f"{where}: the maps must have one shape, found {da_.shape} and {db_.shape}")
    shape = tuple(int(n) for n in da_.shape)
    if "image" in da_.dims or len(set(shape)) != 1:
        raise InvalidValueError(
            f"{where}: the maps must be cubes or squares, found dims {da_.dims} of {shape}"
        )
    spacing_a, spacing_b = float(da_.attrs["pixel_spacing"]), float(db_.attrs["pixel_spacing"])
    if not np.isclose(spacing_a, spacing_b, rtol=1e-6):
        raise InvalidValueError(
            f"{where}: the maps must share a pixel spacing, found {spacing_a} and {spacing_b} Å"
        )
    arrays = [da_.data, db_.data]
    if mask is not None:
        arrays.append(_as_array(mask, shape, where))
    computed = [np.asarray(x, dtype=np.float64) for x in dask.compute(*arrays)]
    if mask is not None:
        computed = [computed[0] * computed[2], computed[1] * computed[2]]
    fa, fb = fft.rfftn(computed[0]), fft.rfftn(computed[1])
    shell, weight = _shell_index(shape)
    n = shape[0]
    shells = n // 2 + 1
    inside = shell < shells
    shell, weight = shell[inside], weight[inside]
    fa, fb = fa.ravel()[inside], fb.ravel()[inside]
    cross = np.bincount(shell, weight * (fa * fb.conj()).real, minlength=shells)
    power_a = np.bincount(shell, weight * (fa.real**2 + fa.imag**2), minlength=shells)
    power_b = np.bincount(shell, weight * (fb.real**2 + fb.imag**2), minlength=shells)
    count = np.bincount(shell, weight, minlength=shells)
    denominator = np.sqrt(power_a * power_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(denominator > 0, cross / denominator, 0.0)
    frequency = np.arange(shells) / (n * spacing_a)
    with np.errstate(divide="ignore"):
        resolution = np.where(frequency > 0, 1.0 / np.where(frequency > 0, frequency, 1.0), np.inf)
    value, crosses = _crossing(curve, frequency, FSC_THRESHOLD)
    return xr.DataArray(
        curve,
        dims=("shell",),
        coords={
            "shell": np.arange(shells),
            "frequency": ("shell", frequency, {"units": "1/angstrom"}),
            "resolution": ("shell", resolution, {"units": "angstrom"}),
            "n_coefficients": ("shell", count.astype(np.int64)),
        },
        attrs={
            "resolution_0143": value,
            "crosses_0143": crosses,
            "threshold": FSC_THRESHOLD,
            "pixel_spacing": spacing_a,
        },
        name="fsc",
    )


def _crossing(curve: np.ndarray, frequency: np.ndarray, threshold: float) -> tuple[float, bool]:
    """Resolution (Å) where ``curve`` first falls below ``threshold`` and whether it does.

    Examples
    --------
    >>> value, crosses = _crossing(np.array([1.0, 0.5, 0.1, 0.0]), np.array([0.0, 0.1, 0.2, 0.3]), 0.143)
    >>> round(value, 4), crosses        # 1 / (0.1 + 0.1 * (0.5 - 0.143) / (0.5 - 0.1))
    (5.284, True)
    """
    values = curve.copy()
    values[0] = 1.0
    below = np.flatnonzero(values < threshold)
    if below.size == 0:
        return float(1.0 / frequency[-1]), False
    r = int(below[0])
    before, after = values[r - 1], values[r]
    at = frequency[r - 1] + (frequency[r] - frequency[r - 1]) * (before - threshold) / (before - after)
    return float(1.0 / at), True
