"""Contrast transfer function and dose weights of tilt images, as RELION 5 draws them.

Pure numpy functions on Fourier grids, vectorised over tilts (any leading shape of the
parameters): :func:`ctf_2d` is RELION's ``CTF::draw`` with the per-tilt values of
``Tomogram::getCtf``, :func:`dose_weights` is ``Damage::weightStack_GG`` (the critical
exposure model of Grant & Grigorieff, eLife 2015), and :func:`tilt_ctf_parameters`
reads the per-tilt optics columns of a ProjectionModel the way ``TomogramSet::loadTomogram``
reads a RELION 5 tilt-series STAR file.

What RELION 5 computes (``src/ctf.h``, ``src/ctf.cpp``, ``src/jaz/optics/damage.cpp``,
read at commit 73f0a3c, restated here):

- wavelength ``lambda = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` Å, ``V`` in volts;
- with ``Cs`` in Å (mm x 1e7), ``K1 = pi lambda``, ``K2 = pi / 2 Cs lambda^3``,
  ``K3 = atan(Q0 / sqrt(1 - Q0^2))`` (amplitude contrast ``Q0``), ``K5`` the phase
  shift in radians (RELION stores degrees), ``K4 = -B / 4``;
- astigmatism as a quadratic form: the defocus along a spatial-frequency direction at
  angle ``theta`` from the x axis is ``dU cos^2(theta - a) + dV sin^2(theta - a)``,
  ``a`` the defocus angle (so ``defocus_u`` lies along ``a``), underfocus positive;
- ``gamma = -K1 defocus(theta) k^2 + K2 k^4 - K5 - K3`` and
  ``CTF = -sin(gamma) exp(K4 k^2) scale`` (``k`` in 1/Å): positive (``= Q0 scale``) at
  the origin;
- frequencies of a ``(ny, nx)`` box of pixel size ``p``: column ``x`` of the half grid
  is ``x / (nx p)`` for ``x = 0 .. nx // 2``, row ``y`` is ``y / (ny p)`` for
  ``y < ny / 2`` and ``(y - ny) / (ny p)`` above (numpy's ``rfftfreq`` / ``fftfreq``);
- dose weight of a tilt with cumulative exposure ``D`` (e/Å²):
  ``exp(-D / (2 (0.245 k^-1.665 + 2.81)))``, 1 at ``k = 0``; when the tomogram set has
  ``rlnCtfBfactorPerElectronDose`` ``b > 0``, ``exp(-b D k^2 / 4)`` instead.

RELION's ``getCTF`` also replaces values with ``|CTF| < 1e-8`` by ``+-1e-8`` (to avoid
divisions by zero on GPUs); these functions return the formula's value, the two differ
by at most 1e-8.

Examples
--------
>>> import numpy as np
>>> from cryoxr.ctf import ctf_2d, electron_wavelength
>>> round(float(electron_wavelength(300.0)), 7)
0.0196876
>>> c = ctf_2d((8, 8), 2.0, defocus_u=[10000.0, 20000.0], defocus_v=[10000.0, 20000.0],
...            defocus_angle=0.0, voltage=300.0, spherical_aberration=2.7, amplitude_contrast=0.1)
>>> c.shape, round(float(c[0, 0, 0]), 6)
((2, 8, 5), 0.1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from cryoxr.errors import InvalidValueError
from cryoxr.projection_model import PTC

__all__ = [
    "CTF_COLUMNS",
    "ctf_2d",
    "dose_weights",
    "electron_wavelength",
    "frequency_grid",
    "tilt_ctf_parameters",
]

#: critical-exposure fit of Grant & Grigorieff (2015), as in RELION's ``Damage``
_CRITICAL_A, _CRITICAL_B, _CRITICAL_C = 0.245, -1.665, 2.81


def electron_wavelength(voltage: ArrayLike) -> Any:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV.

    RELION's ``CTF::initialise``: ``12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` with
    ``V`` in volts.

    Examples
    --------
    >>> round(float(electron_wavelength(200.0)), 7), round(float(electron_wavelength(300.0)), 7)
    (0.0250795, 0.0196876)
    """
    volts = np.asarray(voltage, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(volts * (1.0 + volts * 0.978466e-6))


def _shape2(shape: int | Sequence[int], where: str) -> tuple[int, int]:
    dims = (shape, shape) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if len(dims) != 2 or any(int(d) != d or int(d) < 1 for d in dims):
        raise InvalidValueError(f"{where}: shape must be an int or (ny, nx) of ints >= 1, found {shape!r}")
    return int(dims[0]), int(dims[1])


def _pixel_size(pixel_size: float, where: str) -> float:
    value = float(pixel_size)
    if not np.isfinite(value) or value <= 0:
        raise InvalidValueError(f"{where}: pixel_size must be a finite number > 0 (Å), found {pixel_size!r}")
    return value


def frequency_grid(
    shape: int | Sequence[int], pixel_size: float, *, rfft: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies ``(ky, kx)`` in 1/Å of a ``(ny, nx)`` box, broadcastable.

    The layout of ``numpy.fft.rfft2`` (``rfft=True``, ``nx // 2 + 1`` columns) or
    ``fft2`` (``rfft=False``); RELION's half grids use the same numbers (the even-size
    Nyquist row is negative).

    Examples
    --------
    >>> ky, kx = frequency_grid((4, 4), 2.0)
    >>> ky.ravel().tolist(), kx.ravel().tolist()
    ([0.0, 0.125, -0.25, -0.125], [0.0, 0.125, 0.25])
    """
    ny, nx = _shape2(shape, "frequency_grid")
    p = _pixel_size(pixel_size, "frequency_grid")
    ky = np.fft.fftfreq(ny, d=p)[:, None]
    kx = (np.fft.rfftfreq(nx, d=p) if rfft else np.fft.fftfreq(nx, d=p))[None, :]
    return ky, kx


def _batch(where: str, **values: ArrayLike) -> dict[str, np.ndarray]:
    """The parameters as float64 arrays broadcast to one shape, with a trailing (1, 1)."""
    try:
        arrays = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in values.values()))
    except ValueError as error:
        shapes = {k: np.shape(v) for k, v in values.items()}
        raise InvalidValueError(f"{where}: the parameters do not broadcast to one shape: {shapes}") from error
    out = {}
    for name, array in zip(values, arrays, strict=True):
        if not np.isfinite(array).all():
            raise InvalidValueError(f"{where}: {name} must be finite, found {array[~np.isfinite(array)][0]}")
        out[name] = array[..., None, None]
    return out


def ctf_2d(
    shape: int | Sequence[int],
    pixel_size: float,
    defocus_u: ArrayLike,
    defocus_v: ArrayLike,
    defocus_angle: ArrayLike,
    voltage: ArrayLike,
    spherical_aberration: ArrayLike,
    amplitude_contrast: ArrayLike,
    phase_shift: ArrayLike = 0.0,
    bfactor: ArrayLike = 0.0,
    scale: ArrayLike = 1.0,
    *,
    rfft: bool = True,
    dtype: Any = np.float64,
) -> np.ndarray:
    """The CTF of a ``(ny, nx)`` box on its Fourier grid, for one or many tilts.

    RELION 5's ``CTF::getCTF`` with damping (the B-factor envelope) and scale, drawn on
    the grid of :func:`frequency_grid` (see the module docstring for the formula). The
    optical parameters broadcast together; their shape leads the output's.

    Parameters
    ----------
    shape
        Box size ``(ny, nx)`` or one int for a square box, in pixels.
    pixel_size
        Å per pixel of the box (the binned pixel size for binned boxes).
    defocus_u, defocus_v
        Defocus in Å, underfocus positive (``rlnDefocusU/V``, plus a particle's depth).
    defocus_angle
        Astigmatism angle in degrees: ``defocus_u`` lies along this direction,
        counter-clockwise from x (``rlnDefocusAngle``).
    voltage
        Acceleration voltage, kV.
    spherical_aberration
        Cs in mm.
    amplitude_contrast
        Fraction 0..1 (``rlnAmplitudeContrast``).
    phase_shift
        Phase-plate shift in degrees (``rlnPhaseShift``).
    bfactor
        B-factor in Å² (``rlnCtfBfactor``): the envelope ``exp(-B k^2 / 4)``.
    scale
        Overall factor (``rlnCtfScalefactor``).
    rfft
        Half grid of ``numpy.fft.rfft2`` (default) or the full ``fft2`` grid.
    dtype
        Output dtype (computation in float64).

    Returns
    -------
    numpy.ndarray
        Shape ``batch + (ny, nx // 2 + 1)`` (or ``(ny, nx)`` with ``rfft=False``).

    Raises
    ------
    InvalidValueError
        Non-finite parameters, amplitude contrast outside 0..1, parameters that do not
        broadcast, a bad shape or pixel size.

    Examples
    --------
    The first zero of an aberration-free, pure phase-contrast CTF is where
    ``pi lambda dz k^2 = pi``:

    >>> import numpy as np
    >>> lam = electron_wavelength(300.0)
    >>> k1 = 1 / np.sqrt(lam * 20000.0)
    >>> c = ctf_2d((256, 256), 1 / (256 * k1 / 40), 20000.0, 20000.0, 0.0, 300.0, 0.0, 0.0)
    >>> abs(float(c[0, 40])) < 1e-12
    True
    """
    where = "ctf_2d"
    ky, kx = frequency_grid(shape, pixel_size, rfft=rfft)
    p = _batch(
        where,
        defocus_u=defocus_u,
        defocus_v=defocus_v,
        defocus_angle=defocus_angle,
        voltage=voltage,
        spherical_aberration=spherical_aberration,
        amplitude_contrast=amplitude_contrast,
        phase_shift=phase_shift,
        bfactor=bfactor,
        scale=scale,
    )
    q0 = p["amplitude_contrast"]
    if ((q0 < 0) | (q0 > 1)).any():
        raise InvalidValueError(f"{where}: amplitude_contrast must be in [0, 1], found {q0.ravel().tolist()}")
    if (p["voltage"] <= 0).any():
        raise InvalidValueError(f"{where}: voltage must be > 0 kV, found {p['voltage'].ravel().tolist()}")
    lam = electron_wavelength(p["voltage"])
    cs = p["spherical_aberration"] * 1e7
    angle = np.deg2rad(p["defocus_angle"])
    c, s = np.cos(angle), np.sin(angle)
    along = c * kx + s * ky  # frequency component along the defocus-U direction
    across = -s * kx + c * ky
    k2 = kx * kx + ky * ky
    defocus_k2 = p["defocus_u"] * along * along + p["defocus_v"] * across * across
    with np.errstate(divide="ignore", invalid="ignore"):
        k3 = np.arctan(q0 / np.sqrt(1.0 - q0 * q0))  # pi / 2 at Q0 = 1, as C's atan(inf)
    gamma = (
        -np.pi * lam * defocus_k2 + 0.5 * np.pi * cs * lam**3 * k2 * k2 - np.deg2rad(p["phase_shift"]) - k3
    )
    out = -np.sin(gamma) * np.exp(-0.25 * p["bfactor"] * k2) * p["scale"]
    return np.asarray(out, dtype=dtype)


def dose_weights(
    shape: int | Sequence[int],
    pixel_size: float,
    pre_exposure: ArrayLike,
    *,
    bfactor_per_dose: float = 0.0,
    rfft: bool = True,
    dtype: Any = np.float64,
) -> np.ndarray:
    """Radiation-damage weights of tilts with cumulative exposures ``pre_exposure``.

    RELION 5's ``Damage::weightStack_GG`` (used by ``Tomogram::computeDoseWeight``):
    with the critical exposure ``Dc(k) = 0.245 k^-1.665 + 2.81`` e/Å² of Grant &
    Grigorieff (2015), the weight of a tilt recorded after ``D`` e/Å² is
    ``exp(-D / (2 Dc(k)))`` (1 at ``k = 0``). With ``bfactor_per_dose = b > 0``
    (RELION's ``rlnCtfBfactorPerElectronDose``) it is ``exp(-b D k^2 / 4)`` instead.

    Parameters
    ----------
    shape
        Box size ``(ny, nx)`` or one int, pixels.
    pixel_size
        Å per pixel of the box.
    pre_exposure
        Cumulative exposure before each tilt, e/Å² (``rlnMicrographPreExposure``); any
        shape, it leads the output's.
    bfactor_per_dose
        Å² per e/Å²; 0 (default, as RELION when the label is absent) uses the critical
        exposure model.
    rfft, dtype
        Grid layout and output dtype, as for :func:`ctf_2d`.

    Returns
    -------
    numpy.ndarray
        Shape ``pre_exposure.shape + (ny, nx // 2 + 1)`` (or ``(ny, nx)``).

    Examples
    --------
    At 1/10 Å^-1 the critical exposure is ``0.245 * 10**1.665 + 2.81`` e/Å²:

    >>> import numpy as np
    >>> w = dose_weights(10, 1.0, [0.0, 20.0])
    >>> dc = 0.245 * 10**1.665 + 2.81
    >>> float(w[0, 0, 1]), bool(np.isclose(w[1, 0, 1], np.exp(-20.0 / (2 * dc)))), float(w[1, 0, 0])
    (1.0, True, 1.0)
    """
    where = "dose_weights"
    ky, kx = frequency_grid(shape, pixel_size, rfft=rfft)
    dose = _batch(where, pre_exposure=pre_exposure)["pre_exposure"]
    if (dose < 0).any():
        raise InvalidValueError(f"{where}: pre_exposure must be >= 0 e/Å², found {dose.ravel().tolist()}")
    b = float(bfactor_per_dose)
    if not np.isfinite(b) or b < 0:
        raise InvalidValueError(
            f"{where}: bfactor_per_dose must be a finite number >= 0, found {bfactor_per_dose!r}"
        )
    k2 = kx * kx + ky * ky
    if b > 0:
        return np.asarray(np.exp(-0.25 * b * dose * k2), dtype=dtype)
    k = np.sqrt(k2)
    with np.errstate(divide="ignore"):
        critical = _CRITICAL_A * np.where(k > 0, k, np.inf) ** _CRITICAL_B + _CRITICAL_C
    critical = np.where(k > 0, critical, np.inf)  # k = 0: no damage
    return np.asarray(np.exp(-0.5 * dose / critical), dtype=dtype)


#: ProjectionModel column -> (keyword of :func:`ctf_2d`, value RELION uses when its label is absent)
CTF_COLUMNS: dict[str, tuple[str, float | None]] = {
    PTC.DEFOCUS_U: ("defocus_u", None),
    PTC.DEFOCUS_V: ("defocus_v", None),
    PTC.DEFOCUS_ANGLE: ("defocus_angle", None),
    PTC.VOLTAGE: ("voltage", None),
    PTC.SPHERICAL_ABERRATION: ("spherical_aberration", None),
    PTC.AMPLITUDE_CONTRAST: ("amplitude_contrast", None),
    PTC.PHASE_SHIFT: ("phase_shift", 0.0),
    PTC.CTF_BFACTOR: ("bfactor", 0.0),
    PTC.CTF_SCALE: ("scale", 1.0),
}


def tilt_ctf_parameters(rows: pd.DataFrame, *, where: str = "tilt_ctf_parameters") -> dict[str, np.ndarray]:
    """The :func:`ctf_2d` keywords of the tilts in ``rows`` (ProjectionModel rows), (T,) each.

    Defocus U/V/angle, voltage, Cs and amplitude contrast must be present and finite
    (RELION reads them with ``getValueSafely``); a missing ``phase_shift``,
    ``ctf_bfactor`` or ``ctf_scale`` column (or NaN there) takes RELION's value for an
    absent label: 0, 0, 1 (``TomogramSet::loadTomogram``).

    Raises
    ------
    InvalidValueError
        A required column absent or not finite; the message names it, with its RELION label.

    Examples
    --------
    >>> import pandas as pd
    >>> rows = pd.DataFrame({"defocus_u": [1e4], "defocus_v": [1e4], "defocus_angle": [0.0],
    ...                      "voltage": [300.0], "spherical_aberration": [2.7], "amplitude_contrast": [0.1]})
    >>> p = tilt_ctf_parameters(rows)
    >>> p["scale"].tolist(), p["phase_shift"].tolist()
    ([1.0], [0.0])
    """
    out: dict[str, np.ndarray] = {}
    for column, (keyword, absent) in CTF_COLUMNS.items():
        if column in rows.columns:
            values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            values = np.full(len(rows), np.nan)
        if absent is not None:
            values = np.where(np.isnan(values), absent, values)
        elif not np.isfinite(values).all():
            found = "no such column" if column not in rows.columns else f"{values[~np.isfinite(values)][0]}"
            raise InvalidValueError(
                f"{where}: the CTF needs column {column!r} ({_RELION_LABELS[column]}) on every tilt, found {found}"
            )
        out[keyword] = values
    return out


_RELION_LABELS = {
    PTC.DEFOCUS_U: "RELION: rlnDefocusU, Å",
    PTC.DEFOCUS_V: "RELION: rlnDefocusV, Å",
    PTC.DEFOCUS_ANGLE: "RELION: rlnDefocusAngle, degrees",
    PTC.VOLTAGE: "RELION: rlnVoltage, kV",
    PTC.SPHERICAL_ABERRATION: "RELION: rlnSphericalAberration, mm",
    PTC.AMPLITUDE_CONTRAST: "RELION: rlnAmplitudeContrast",
}
