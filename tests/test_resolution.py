"""cryoxr.resolution: Fourier shell correlation and the 0.143 resolution."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import cryoxr
from cryoxr.errors import InvalidValueError
from cryoxr.resolution import fsc
from cryoxr.testing import raise_if_dask_computes


def _map(values: np.ndarray, spacing: float = 2.0, eid: str = "m") -> cryoxr.Image:
    return cryoxr.Image.from_array(values, pixel_spacing=spacing, experiment_id=eid)


def _shells(n: int, ndim: int = 3) -> np.ndarray:
    """Shell of every coefficient of the full (complex) transform."""
    q = np.meshgrid(*[np.fft.fftfreq(n) * n] * ndim, indexing="ij")
    return np.rint(np.sqrt(sum(g * g for g in q))).astype(int)


def _brute_force(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The definition over the whole complex transform, shell by shell, in a Python loop."""
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    shells = _shells(a.shape[0], a.ndim)
    out = []
    for r in range(a.shape[0] // 2 + 1):
        inside = shells == r
        cross = (fa[inside] * fb[inside].conj()).sum().real
        out.append(cross / np.sqrt((abs(fa[inside]) ** 2).sum() * (abs(fb[inside]) ** 2).sum()))
    return np.array(out)


@pytest.mark.parametrize(("n", "ndim"), [(16, 3), (15, 3), (32, 2)])
def test_fsc_matches_the_definition_over_the_full_transform(n: int, ndim: int) -> None:
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(n,) * ndim)
    a, b = signal + rng.normal(size=signal.shape), signal + rng.normal(size=signal.shape)
    curve = fsc(_map(a), _map(b))
    np.testing.assert_allclose(curve.values, _brute_force(a, b), atol=1e-12)
    counts = np.bincount(_shells(n, ndim).ravel())[: n // 2 + 1]
    np.testing.assert_array_equal(curve.n_coefficients.values, counts)


def test_a_map_against_itself_is_one_in_every_shell() -> None:
    vol = np.random.default_rng(1).normal(size=(24, 24, 24))
    curve = fsc(_map(vol), _map(vol * 3.0 + 0.0))
    np.testing.assert_allclose(curve.values, 1.0, atol=1e-12)
    assert curve.sizes["shell"] == 13
    np.testing.assert_allclose(curve.frequency.values, np.arange(13) / (24 * 2.0))
    assert curve.frequency.attrs["units"] == "1/angstrom"
    assert curve.resolution.values[12] == pytest.approx(4.0)
    assert curve.attrs["resolution_0143"] == pytest.approx(4.0)  # Nyquist: never below 0.143
    assert curve.attrs["crosses_0143"] is False


def test_independent_noise_is_near_zero() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(32, 32, 32)), rng.normal(size=(32, 32, 32))
    curve = fsc(_map(a), _map(b))
    tail = curve.sel(shell=slice(3, None))
    assert float(abs(tail).max()) < 0.15
    assert float(abs(tail.values * np.sqrt(tail.n_coefficients.values)).max()) < 4  # within 4 sigma
    assert curve.attrs["crosses_0143"] is True


@pytest.mark.parametrize("cut", [5, 9, 12])
def test_a_low_passed_copy_crosses_within_one_shell_of_its_cut_off(cut: int) -> None:
    n, spacing = 32, 3.0
    rng = np.random.default_rng(3)
    vol = rng.normal(size=(n, n, n))
    shells = _shells(n)
    low = np.fft.ifftn(np.fft.fftn(vol) * (shells <= cut)).real
    cut_off = cut / (n * spacing)  # 1/Å
    for other in (low, low + 0.05 * rng.normal(size=low.shape)):
        curve = fsc(_map(vol, spacing), _map(other, spacing))
        assert curve.attrs["crosses_0143"]
        found = 1.0 / curve.attrs["resolution_0143"]
        assert abs(found - cut_off) <= 1.0 / (n * spacing)
        assert curve.sel(shell=cut).item() > 0.9
        assert curve.sel(shell=cut + 2).item() < 0.143


def test_mask_is_applied_to_both_maps() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(16, 16, 16)), rng.normal(size=(16, 16, 16))
    mask = np.zeros((16, 16, 16))
    mask[4:12, 4:12, 4:12] = 1.0
    np.testing.assert_allclose(
        fsc(_map(a), _map(b), mask=mask).values, fsc(_map(a * mask), _map(b * mask)).values, atol=1e-12
    )
    as_image = fsc(_map(a), _map(b), mask=_map(mask)).values
    np.testing.assert_allclose(as_image, fsc(_map(a * mask), _map(b * mask)).values, atol=1e-12)
    with pytest.raises(
        InvalidValueError, match=r"mask must have the maps' shape \(16, 16, 16\), found \(8, 8, 8\)"
    ):
        fsc(_map(a), _map(b), mask=np.ones((8, 8, 8)))


def test_lazy_maps_are_computed_together_once() -> None:
    vol = np.random.default_rng(5).normal(size=(16, 16, 16))
    a = cryoxr.Image.from_array(vol, pixel_spacing=1.0, experiment_id="a", chunks=8)
    doubled = xr.DataArray(a.data * 2.0)  # one graph shared by both maps
    with raise_if_dask_computes(max_computes=1):
        curve = fsc(a, doubled)
    np.testing.assert_allclose(curve.values, 1.0, atol=1e-12)


def test_all_zero_shells_are_zero_and_the_crossing_interpolates() -> None:
    curve = fsc(_map(np.zeros((8, 8, 8))), _map(np.zeros((8, 8, 8))))
    np.testing.assert_array_equal(curve.values, 0.0)
    # shell 0 counts as 1: the crossing lies between shells 0 and 1, 0.857 of the way
    assert 1.0 / curve.attrs["resolution_0143"] == pytest.approx((1 - 0.143) / (8 * 2.0))


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (np.zeros((8, 8, 8)), np.zeros((8, 8, 6)), r"one shape, found \(8, 8, 8\) and \(8, 8, 6\)"),
        (np.zeros((8, 8, 6)), np.zeros((8, 8, 6)), "must be cubes or squares"),
    ],
)
def test_maps_that_do_not_fit_are_named(a: np.ndarray, b: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidValueError, match=message):
        fsc(_map(a), _map(b))


def test_pixel_spacings_must_agree() -> None:
    with pytest.raises(InvalidValueError, match=r"share a pixel spacing, found 2.0 and 3.0 Å"):
        fsc(_map(np.zeros((8, 8, 8)), 2.0), _map(np.zeros((8, 8, 8)), 3.0))


def test_accessor_delegates() -> None:
    vol = _map(np.random.default_rng(6).normal(size=(8, 8, 8)))
    xr.testing.assert_identical(vol.data.cryo.fsc(vol), fsc(vol, vol))
