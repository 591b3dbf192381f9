"""CTF and dose weights: zeros where the formula puts them, hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryoxr.ctf import ctf_2d, dose_weights, electron_wavelength, frequency_grid, tilt_ctf_parameters
from cryoxr.errors import InvalidValueError

OPTICS = {"voltage": 300.0, "spherical_aberration": 2.7, "amplitude_contrast": 0.1}


def test_wavelength_at_300_and_200_kv() -> None:
    """h / sqrt(2 m e V (1 + e V / (2 m c^2))): 0.0196876 Å at 300 kV, 0.025079 Å at 200 kV."""
    assert electron_wavelength(300.0) == pytest.approx(0.0196876, abs=1e-7)
    assert electron_wavelength(200.0) == pytest.approx(0.0250793, abs=1e-6)


def test_frequency_grid_layout_matches_numpy_fft() -> None:
    ky, kx = frequency_grid((5, 6), 2.0)
    np.testing.assert_allclose(ky.ravel(), [0, 0.1, 0.2, -0.2, -0.1])
    np.testing.assert_allclose(kx.ravel(), [0, 1 / 12, 2 / 12, 3 / 12])
    assert frequency_grid((5, 6), 2.0, rfft=False)[1].shape == (1, 6)


def test_zeros_of_a_pure_phase_ctf_without_cs() -> None:
    """Cs = 0, Q0 = 0: CTF = sin(pi lambda dz k^2), zero at k_n = sqrt(n / (lambda dz)).
    300 kV, dz = 15,000 Å: k_1 = 1 / sqrt(0.0196876 * 15000) = 0.058192 1/Å."""
    lam = 0.01968761531  # 300 kV
    dz = 15000.0
    k1 = 1.0 / np.sqrt(lam * dz)
    assert k1 == pytest.approx(0.058192, abs=1e-6)
    n = 512
    px = 1.0 / (n * k1 / 64)  # k_1 falls on column 64, k_2 = sqrt(2) k_1 between columns
    c = ctf_2d((n, n), px, dz, dz, 0.0, 300.0, 0.0, 0.0)
    assert abs(c[0, 64]) < 1e-9
    assert abs(c[64, 0]) < 1e-9
    assert abs(c[-64, 0]) < 1e-9
    assert c[0, 32] > 0.7  # sin(pi / 4) between origin and the first zero, positive in RELION's sign
    profile = c[0]
    crossings = np.nonzero(np.diff(np.sign(profile[1:])) != 0)[0] + 1
    # second zero at sqrt(2) * 64 = 90.51 columns, third at sqrt(3) * 64 = 110.85
    assert 90 in crossings
    assert 110 in crossings


def test_zero_with_spherical_aberration_and_amplitude_contrast() -> None:
    """First zero where pi lambda dz k^2 - pi/2 Cs lambda^3 k^4 + atan(Q0 / sqrt(1 - Q0^2)) = pi,
    solved by hand as a quadratic in k^2."""
    lam, dz, cs = 0.01968761531, 20000.0, 2.7e7
    k3 = np.arctan(0.1 / np.sqrt(1 - 0.01))
    a, b, c0 = -0.5 * np.pi * cs * lam**3, np.pi * lam * dz, k3 - np.pi
    k2 = (-b + np.sqrt(b * b - 4 * a * c0)) / (2 * a)
    k = np.sqrt(k2)
    # a 1-pixel grid at exactly that frequency: column 1 of a 2-wide box of pixel 1 / (2 k)
    value = ctf_2d((1, 2), 1 / (2 * k), dz, dz, 0.0, **OPTICS)[0, 1]
    assert abs(value) < 1e-9
    # the origin is Q0 (times scale), the B-factor leaves it alone
    assert ctf_2d(4, 2.0, dz, dz, 0.0, **OPTICS, bfactor=100.0, scale=0.5)[0, 0] == pytest.approx(0.05)


def test_astigmatism_angle_puts_defocus_u_along_the_angle() -> None:
    """Angle 0: dU along x, dV along y; angle 90: dU along y. At the grid point (3, 4)
    (direction atan2(3, 4) = 36.87 degrees) and angle 30 the defocus is
    dU cos^2(6.87 deg) + dV sin^2(6.87 deg)."""
    du, dv = 12000.0, 18000.0
    n, px = 64, 2.0
    lam = electron_wavelength(300.0)

    def hand(defocus: float, k: float) -> float:
        gamma = (
            -np.pi * lam * defocus * k * k
            + 0.5 * np.pi * 2.7e7 * lam**3 * k**4
            - np.arctan(0.1 / np.sqrt(0.99))
        )
        return float(-np.sin(gamma))

    k10 = 10 / (n * px)
    straight = ctf_2d((n, n), px, du, dv, 0.0, **OPTICS, rfft=False)
    assert straight[0, 10] == pytest.approx(hand(du, k10), abs=1e-9)  # x axis: dU
    assert straight[10, 0] == pytest.approx(hand(dv, k10), abs=1e-9)  # y axis: dV
    assert ctf_2d((n, n), px, du, dv, 90.0, **OPTICS)[10, 0] == pytest.approx(hand(du, k10), abs=1e-9)
    off = np.deg2rad(np.rad2deg(np.arctan2(3, 4)) - 30.0)
    defocus = du * np.cos(off) ** 2 + dv * np.sin(off) ** 2
    assert ctf_2d((n, n), px, du, dv, 30.0, **OPTICS)[3, 4] == pytest.approx(
        hand(defocus, 5 / (n * px)), abs=1e-9
    )
    # the half grid's negative rows are the point reflection of the full grid's
    assert ctf_2d((n, n), px, du, dv, 30.0, **OPTICS)[-3, 4] == pytest.approx(
        ctf_2d((n, n), px, du, dv, 30.0, **OPTICS, rfft=False)[3, -4]
    )


def test_phase_shift_of_90_degrees_turns_sine_into_cosine() -> None:
    """Q0 = 0, Cs = 0, phase shift 90 degrees: CTF = sin(pi lambda dz k^2 + pi / 2) = 1 at k = 0."""
    c = ctf_2d(8, 2.0, 10000.0, 10000.0, 0.0, 300.0, 0.0, 0.0, phase_shift=90.0)
    assert c[0, 0] == pytest.approx(1.0)


def test_bfactor_and_scale_envelope() -> None:
    """B = 400 Å^2 at k = 0.05 1/Å: exp(-400 * 0.0025 / 4) = exp(-0.25)."""
    plain = ctf_2d(20, 1.0, 10000.0, 10000.0, 0.0, **OPTICS)
    damped = ctf_2d(20, 1.0, 10000.0, 10000.0, 0.0, **OPTICS, bfactor=400.0, scale=2.0)
    assert damped[0, 1] == pytest.approx(plain[0, 1] * np.exp(-0.25) * 2.0, rel=1e-12)


def test_vectorised_over_tilts_equals_one_by_one() -> None:
    du = np.array([10000.0, 15000.0, 20000.0])
    many = ctf_2d((16, 12), 3.0, du, du - 500, [0.0, 10.0, 20.0], **OPTICS, dtype=np.float32)
    assert many.shape == (3, 16, 7)
    assert many.dtype == np.float32
    for i in range(3):
        one = ctf_2d((16, 12), 3.0, du[i], du[i] - 500, 10.0 * i, **OPTICS)
        np.testing.assert_allclose(many[i], one, atol=1e-6)


def test_dose_weight_at_known_exposure() -> None:
    """k = 1/8 Å^-1 (box 16 at 0.5 Å/px, column 1 is 1/8): Dc = 0.245 * 8^1.665 + 2.81 = 10.623 e/Å^2;
    after 30 e/Å^2 the weight is exp(-30 / (2 * 10.623)) = 0.2436."""
    w = dose_weights(16, 0.5, [0.0, 30.0])
    dc = 0.245 * 8**1.665 + 2.81
    assert dc == pytest.approx(10.6229, abs=1e-3)
    assert w[1, 0, 1] == pytest.approx(np.exp(-30 / (2 * dc)), rel=1e-12)
    assert w[1, 0, 1] == pytest.approx(0.2436, abs=1e-4)
    assert w[1, 0, 0] == 1.0
    assert (w[0] == 1.0).all()
    assert w.shape == (2, 16, 9)
    # monotone: more dose, more damage; higher frequency, more damage
    assert (np.diff(w[1, 0]) < 0).all()


def test_dose_weight_bfactor_per_dose() -> None:
    """b = 4 Å^2 per e/Å^2 at D = 10: exp(-4 * 10 * k^2 / 4) = exp(-10 k^2)."""
    w = dose_weights(10, 1.0, 10.0, bfactor_per_dose=4.0)
    assert w[0, 1] == pytest.approx(np.exp(-10 * 0.01))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ctf_2d(8, 1.0, 1e4, 1e4, 0.0, 300.0, 2.7, 1.5), "amplitude_contrast"),
        (lambda: ctf_2d(8, 0.0, 1e4, 1e4, 0.0, 300.0, 2.7, 0.1), "pixel_size"),
        (lambda: ctf_2d(8, 1.0, [1e4, 2e4], [1e4, 2e4, 3e4], 0.0, 300.0, 2.7, 0.1), "broadcast"),
        (lambda: ctf_2d(8, 1.0, np.nan, 1e4, 0.0, 300.0, 2.7, 0.1), "defocus_u must be finite"),
        (lambda: ctf_2d((8, 8, 8), 1.0, 1e4, 1e4, 0.0, 300.0, 2.7, 0.1), "shape"),
        (lambda: dose_weights(8, 1.0, -1.0), "pre_exposure"),
    ],
)
def test_bad_input_is_named(call: object, match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        call()  # type: ignore[operator]


def test_tilt_ctf_parameters_defaults_and_errors() -> None:
    rows = pd.DataFrame(
        {
            "defocus_u": [1e4, 2e4],
            "defocus_v": [1e4, 2e4],
            "defocus_angle": [0.0, 5.0],
            "voltage": 300.0,
            "spherical_aberration": 2.7,
            "amplitude_contrast": 0.1,
            "ctf_scale": [np.nan, 0.5],
        }
    )
    p = tilt_ctf_parameters(rows)
    assert p["scale"].tolist() == [1.0, 0.5]
    assert p["bfactor"].tolist() == [0.0, 0.0]
    assert ctf_2d(4, 2.0, **p).shape == (2, 4, 3)
    with pytest.raises(InvalidValueError, match=r"'voltage'.*rlnVoltage.*no such column"):
        tilt_ctf_parameters(rows.drop(columns="voltage"), where="TS_01")
