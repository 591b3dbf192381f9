"""Per-particle, per-tilt defocus: hand-worked numbers and RELION 5's formula."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cryoxr
from cryoxr.errors import InvalidValueError
from cryoxr.testing import raise_if_dask_computes


def _model(**kwargs: object) -> pd.DataFrame:
    base: dict[str, object] = {
        "rotation_y": [0.0, 60.0],
        "experiment_id": "t",
        "pixel_spacing": 2.0,
        "defocus_u": 20000.0,
        "defocus_v": 19000.0,
        "defocus_handedness": -1,
        "tomogram_size_x": 100,
        "tomogram_size_y": 100,
        "tomogram_size_z": 50,
    }
    base.update(kwargs)
    return cryoxr.make_projection_model(**base)  # type: ignore[arg-type]


def test_particle_100_angstrom_above_the_centre_at_0_and_60_degrees() -> None:
    """2 Å/px, centre z = 25 px; z = 75 px is 100 Å above it. Depth 100 Å at 0 degrees,
    cos(60) * 100 = 50 Å at 60 degrees; handedness -1 subtracts it."""
    poses = cryoxr.make_poseset([[50.0, 50.0, 75.0]], experiment_id="t", pixel_spacing=2.0)
    out = cryoxr.particle_defocus(poses, _model())
    np.testing.assert_allclose(out.defocus_u.values, [[19900.0, 19950.0]], atol=1e-9)
    np.testing.assert_allclose(out.defocus_v.values, [[18900.0, 18950.0]], atol=1e-9)
    flipped = cryoxr.particle_defocus(poses, _model(), defocus_handedness=1)
    np.testing.assert_allclose(flipped.defocus_u.values, [[20100.0, 20050.0]], atol=1e-9)
    # 100 Å along x instead: no depth at 0 degrees, -sin(60) * 100 Å at 60 degrees
    sideways = cryoxr.make_poseset([[100.0, 50.0, 25.0]], experiment_id="t", pixel_spacing=2.0)
    np.testing.assert_allclose(
        cryoxr.particle_defocus(sideways, _model()).defocus_u.values,
        [[20000.0, 20000.0 + np.sin(np.deg2rad(60)) * 100.0]],
        atol=1e-9,
    )
    # the same particle picked at bin 4 (8 Å/px): the same defocus
    binned = cryoxr.make_poseset([[12.5, 12.5, 18.75]], experiment_id="t", pixel_spacing=8.0)
    np.testing.assert_allclose(
        cryoxr.particle_defocus(binned, _model()).defocus_u.values, [[19900.0, 19950.0]]
    )


def relion_defocus(
    point: np.ndarray, size: np.ndarray, row: pd.Series, hand: float, px: float, slope: float
) -> tuple[float, float]:
    """RELION 5: Tomogram::getDepthOffset and getCtf, written out (depth from N / 2.0)."""
    xt, yt, zr = np.deg2rad([row.rotation_x, row.rotation_y, row.rotation_z])
    rx = np.array([[1, 0, 0], [0, np.cos(xt), -np.sin(xt)], [0, np.sin(xt), np.cos(xt)]])
    ry = np.array([[np.cos(yt), 0, np.sin(yt)], [0, 1, 0], [-np.sin(yt), 0, np.cos(yt)]])
    rz = np.array([[np.cos(zr), -np.sin(zr), 0], [np.sin(zr), np.cos(zr), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ ry @ rx
    matrix[:3, 3] = -(rz @ ry @ rx) @ np.floor(size / 2) + [row.dx + 512, row.dy + 500, 0]
    depth = (matrix @ [*point, 1.0])[2] - (matrix @ [*(size / 2.0), 1.0])[2]
    dz = hand * px * slope * depth
    return row.defocus_u + dz, row.defocus_v + dz


def test_agrees_with_relion_formula(rng: np.random.Generator) -> None:
    size = np.array([1023, 1001, 301])  # odd: RELION's depth centre N / 2.0 is half a pixel off int(N / 2)
    n = 9
    model = cryoxr.make_projection_model(
        rotation_x=rng.normal(0, 2, n),
        rotation_y=np.linspace(-60, 60, n),
        rotation_z=rng.uniform(-180, 180, n),
        dx=rng.normal(0, 5, n),
        dy=rng.normal(0, 5, n),
        experiment_id="TS_01",
        pixel_spacing=1.35,
        defocus_u=rng.uniform(20000, 40000, n),
        defocus_v=rng.uniform(20000, 40000, n),
        defocus_handedness=1,
        tomogram_size_x=int(size[0]),
        tomogram_size_y=int(size[1]),
        tomogram_size_z=int(size[2]),
    )
    points = rng.uniform(0, 1, (40, 3)) * size
    poses = cryoxr.make_poseset(points, experiment_id="TS_01", pixel_spacing=1.35, chunks=16)
    with raise_if_dask_computes():
        out = cryoxr.particle_defocus(poses, model, defocus_slope=1.07)
    assert out.defocus_u.dims == ("particle", "image")
    assert out.defocus_u.data.chunks[0] == (16, 16, 8)
    expected = np.array(
        [[relion_defocus(p, size, row, 1.0, 1.35, 1.07) for _, row in model.iterrows()] for p in points]
    )
    np.testing.assert_allclose(out.defocus_u.values, expected[..., 0], atol=1e-6)
    np.testing.assert_allclose(out.defocus_v.values, expected[..., 1], atol=1e-6)


def test_several_experiments_and_missing_tilts(rng: np.random.Generator) -> None:
    a = _model()
    b = _model(
        experiment_id="u", rotation_y=[0.0], defocus_u=30000.0, defocus_v=30000.0, defocus_handedness=1
    )
    model = pd.concat([a, b], ignore_index=True)
    poses = cryoxr.make_poseset(
        [[50.0, 50.0, 75.0], [50.0, 50.0, 75.0]], experiment_id=["t", "u"], pixel_spacing=2.0
    )
    out = cryoxr.particle_defocus(poses, model).defocus_u.values
    np.testing.assert_allclose(out[0], [19900.0, 19950.0])
    np.testing.assert_allclose(out[1], [30100.0, np.nan])


def test_missing_columns_name_column_and_argument() -> None:
    poses = cryoxr.make_poseset([[1.0, 2.0, 3.0]], experiment_id="t", pixel_spacing=2.0)
    with pytest.raises(InvalidValueError, match=r"lacks column\(s\) \['defocus_v'\]"):
        cryoxr.particle_defocus(poses, _model().drop(columns="defocus_v"))
    with pytest.raises(InvalidValueError, match=r"'defocus_handedness'.*pass defocus_handedness="):
        cryoxr.particle_defocus(poses, _model().drop(columns="defocus_handedness"))
    with pytest.raises(InvalidValueError, match=r"no tomogram size.*pass tomogram_dimensions="):
        cryoxr.particle_defocus(poses, _model().drop(columns="tomogram_size_z"))
    with pytest.raises(InvalidValueError, match="must be \\+1 or -1"):
        cryoxr.particle_defocus(poses, _model(), defocus_handedness=2)
    # explicit size (pixels of the poses) in place of the columns
    out = cryoxr.particle_defocus(
        poses,
        _model().drop(columns="tomogram_size_z"),
        tomogram_dimensions=(100, 100, 50),
        defocus_handedness={"t": 1},
    )
    np.testing.assert_allclose(out.defocus_u.values[0, 0], 20000.0 + (3.0 - 25.0) * 2.0)
