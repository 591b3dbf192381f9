"""Point groups as RELION names them: each a group of rotations of the right order."""

from __future__ import annotations

import numpy as np
import pytest

from cryoxr.errors import InvalidValueError
from cryoxr.symmetry import symmetrise_fourier, symmetry_matrices

ORDERS = {"C1": 1, "C2": 2, "c5": 5, "C12": 12, "D1": 2, "D2": 4, "d7": 14, "T": 12, "O": 24, "I": 60}
ORDERS |= {"I1": 60, "I2": 60, "I3": 60, "I4": 60, "C99": 99, "D99": 198}


def _find(matrix: np.ndarray, group: np.ndarray, tolerance: float = 1e-4) -> int:
    hits = np.flatnonzero(np.abs(group - matrix).max(axis=(1, 2)) < tolerance)
    assert hits.size == 1, f"found {hits.size} matches"
    return int(hits[0])


@pytest.mark.parametrize(("name", "order"), sorted(ORDERS.items()))
def test_point_groups_are_groups_of_the_right_order(name: str, order: int) -> None:
    group = symmetry_matrices(name)
    assert group.shape == (order, 3, 3)
    assert np.allclose(group[0], np.eye(3))
    assert np.allclose(np.einsum("nij,nkj->nik", group, group), np.eye(3), atol=1e-6)  # orthogonal
    assert np.allclose(np.linalg.det(group), 1.0)  # proper rotations: no mirrors
    # closed under products and inverses, no element twice
    for g in group[:: max(1, order // 12)]:
        for h in group:
            _find(g @ h, group)
        _find(g.T, group)


def test_axes_are_relions() -> None:
    # C4: quarter turns about z; D2 adds the 2-fold about x; O holds the 3-fold about (1, 1, 1)
    c4 = symmetry_matrices("C4")
    assert np.allclose(c4[1] @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    d2 = symmetry_matrices("D2")
    _find(np.diag([1.0, -1.0, -1.0]), d2)
    o = symmetry_matrices("O")
    _find(np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), o)
    # I (= I2, RELION's default): a 2-fold about z, a 5-fold about (0.525731, 0, 0.850651)
    i2 = symmetry_matrices("I")
    _find(np.diag([-1.0, -1.0, 1.0]), i2)
    axis = np.array([0.525731114, 0.0, 0.850650807])
    fivefold = [g for g in i2 if np.allclose(g @ axis, axis, atol=1e-6) and not np.allclose(g, np.eye(3))]
    assert len(fivefold) == 4
    assert np.allclose(
        sorted(np.trace(g) for g in fivefold),
        sorted([1 + 2 * np.cos(2 * np.pi * k / 5) for k in (1, 2, 3, 4)]),
    )
    assert np.allclose(symmetry_matrices("I2"), i2)


@pytest.mark.parametrize("name", ["C0", "C100", "Cs", "C2v", "D3h", "Oh", "I5", "X", "", "c 2"])
def test_unknown_or_mirror_groups_are_refused(name: str) -> None:
    with pytest.raises(InvalidValueError, match="symmetry"):
        symmetry_matrices(name)


def test_refuses_non_strings() -> None:
    with pytest.raises(InvalidValueError, match="point-group name"):
        symmetry_matrices(4)  # type: ignore[arg-type]


def test_symmetrised_spectrum_is_invariant_and_c1_is_identity() -> None:
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(15, 15, 15))
    spectrum = np.fft.rfftn(np.fft.ifftshift(volume))
    same = np.fft.fftshift(
        np.fft.irfftn(symmetrise_fourier(spectrum, symmetry_matrices("C1")), s=(15,) * 3, axes=(0, 1, 2))
    )
    assert np.allclose(same, volume)
    d2 = np.fft.fftshift(
        np.fft.irfftn(symmetrise_fourier(spectrum, symmetry_matrices("D2")), s=(15,) * 3, axes=(0, 1, 2))
    )
    # the 2-folds about z and x map the (odd) box onto itself voxel for voxel
    assert np.allclose(d2[:, ::-1, ::-1], d2)  # 2-fold about z: (x, y) -> (-x, -y)
    assert np.allclose(d2[::-1, ::-1, :], d2)  # 2-fold about x: (y, z) -> (-y, -z)
    # the average of the group's images: mean over the four voxel permutations
    expected = (volume + volume[:, ::-1, ::-1] + volume[::-1, ::-1, :] + volume[::-1, :, ::-1]) / 4
    assert np.allclose(d2, expected)
    real = symmetrise_fourier(np.abs(spectrum), symmetry_matrices("C2"))
    assert real.dtype == np.float64
    assert real.shape == spectrum.shape
