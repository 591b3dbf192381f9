"""RELION conventions shared by particles and tilt series: the closed-form Euler angles."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryoxr.io.relion._common import _relion_euler, _relion_quaternions


def test_closed_form_euler_matches_scipy(rng: np.random.Generator) -> None:
    angles = np.column_stack(
        [rng.uniform(-180, 180, 500), rng.uniform(0, 180, 500), rng.uniform(-180, 180, 500)]
    )
    angles[:3] = [[0, 0, 45], [30, 180, 0], [180, 90, -179.5]]
    ours = Rotation.from_quat(_relion_quaternions(angles))
    scipy = Rotation.from_euler("ZYZ", angles, degrees=True).inv()
    np.testing.assert_allclose(ours.as_matrix(), scipy.as_matrix(), atol=1e-14)
    back = _relion_euler(ours.as_quat())
    np.testing.assert_allclose(back, angles, atol=1e-9)  # canonical triples come back as they were
    assert back[0].tolist() == pytest.approx([0, 0, 45])
    assert back[1].tolist() == pytest.approx([30, 180, 0])
    gimbal = Rotation.from_quat(_relion_quaternions(np.array([[10.0, 0, 20], [10.0, 180, 20]])))
    again = Rotation.from_quat(_relion_quaternions(_relion_euler(gimbal.as_quat())))
    assert np.allclose((again * gimbal.inv()).magnitude(), 0, atol=1e-12)
