"""ProjectionModel: construction, validation, and matrices at parity with cryotypes 0.2.0."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cryotypes.projectionmodel import projection_model_to_projection_matrices as cryotypes_matrices
from hypothesis import given, settings
from hypothesis import strategies as st

import cryoxr
from cryoxr.errors import CryoxrError, InvalidValueError, SchemaError
from cryoxr.projection_model import PMDL, projection_model_to_projection_matrices, rotation_matrices

angles = st.floats(-180, 180, allow_nan=False)
shifts = st.floats(-500, 500, allow_nan=False)


@st.composite
def models(draw: st.DrawFn) -> tuple[pd.DataFrame, tuple[float, float], tuple[int, int, int]]:
    n = draw(st.integers(1, 90))
    arrays = {
        key: draw(st.lists(strategy, min_size=n, max_size=n))
        for key, strategy in (
            ("rotation_x", angles),
            ("rotation_y", angles),
            ("rotation_z", angles),
            ("dx", shifts),
            ("dy", shifts),
        )
    }
    df = cryoxr.make_projection_model(**arrays, experiment_id="TS", pixel_spacing=1.0)
    centre = (draw(st.floats(0, 8192)), draw(st.floats(0, 8192)))
    dims = (draw(st.integers(1, 8192)), draw(st.integers(1, 8192)), draw(st.integers(1, 3000)))
    return df, centre, dims


@settings(max_examples=60, deadline=None)
@given(models())
def test_matrices_equal_cryotypes(
    case: tuple[pd.DataFrame, tuple[float, float], tuple[int, int, int]],
) -> None:
    df, centre, dims = case
    ours = projection_model_to_projection_matrices(df, centre, dims)
    theirs = np.asarray(cryotypes_matrices(df, centre, dims)).reshape(-1, 4, 4)
    assert ours.shape == (len(df), 4, 4)
    # absolute tolerance scaled by the size of the translations involved (up to ~1e4 px)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


def test_single_tilt_matches_cryotypes() -> None:
    df = cryoxr.make_projection_model(
        rotation_y=[30.0], rotation_z=85, dx=5, dy=-10, experiment_id="a", pixel_spacing=1.35
    )
    ours = projection_model_to_projection_matrices(df, (2048, 2048), (4096, 4096, 1000))
    theirs = np.asarray(cryotypes_matrices(df, (2048, 2048), (4096, 4096, 1000))).reshape(-1, 4, 4)
    assert ours.shape == (1, 4, 4)
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_relion5_worked_example() -> None:
    """docs/CONVENTIONS.md §6.2: XTilt 0, YTilt 30, ZRot 85, shifts (6.75, -13.5) Å at 1.35 Å/px."""
    df = cryoxr.make_projection_model(
        rotation_y=[30.0],
        rotation_z=85.0,
        dx=6.75 / 1.35,
        dy=-13.5 / 1.35,
        experiment_id="TS",
        pixel_spacing=1.35,
    )
    matrix = projection_model_to_projection_matrices(df, (2048, 2048), (4096, 4096, 1000))[0]
    u, v = (matrix @ [1000.0, 1500.0, 400.0, 1.0])[:2]
    assert u == pytest.approx(2515.4548, abs=1e-4)
    assert v == pytest.approx(1036.2880, abs=1e-4)


def test_zero_tilt_known_answer() -> None:
    """A 0-degree tilt maps (x, y, z) to (x - cx + ix, y - cy + iy)."""
    df = cryoxr.make_projection_model(experiment_id="a", pixel_spacing=1.0)
    matrix = projection_model_to_projection_matrices(df, (100.0, 200.0), (64, 65, 33))[0]
    # specimen centre = dims // 2 = (32, 32, 16)
    np.testing.assert_allclose((matrix @ [40.0, 50.0, 7.0, 1.0])[:2], [40 - 32 + 100, 50 - 32 + 200])


def test_rotation_z_90_swaps_axes_with_sign() -> None:
    df = cryoxr.make_projection_model(rotation_z=[90.0], experiment_id="a", pixel_spacing=1.0)
    matrix = projection_model_to_projection_matrices(df, (0.0, 0.0), (0, 0, 0))[0]
    # Rz(90): (x, y) -> (-y, x)
    np.testing.assert_allclose((matrix @ [3.0, 5.0, 9.0, 1.0])[:2], [-5.0, 3.0], atol=1e-12)


def test_tilt_90_projects_z_onto_x() -> None:
    df = cryoxr.make_projection_model(rotation_y=[90.0], experiment_id="a", pixel_spacing=1.0)
    matrix = projection_model_to_projection_matrices(df, (0.0, 0.0), (0, 0, 0))[0]
    # Ry(90): x' = z, z' = -x
    np.testing.assert_allclose((matrix @ [3.0, 5.0, 9.0, 1.0])[:2], [9.0, 5.0], atol=1e-12)


def test_explicit_specimen_center() -> None:
    df = cryoxr.make_projection_model(experiment_id="a", pixel_spacing=1.0)
    matrix = projection_model_to_projection_matrices(
        df, (0, 0), (10, 10, 10), specimen_center=(4.5, 4.5, 4.5)
    )[0]
    np.testing.assert_allclose((matrix @ [4.5, 5.5, 0, 1.0])[:2], [0.0, 1.0])


def test_rotation_matrices_are_right_handed() -> None:
    for axis in "xyz":
        m = rotation_matrices(axis, np.array([33.0]))[0]
        np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(m) == pytest.approx(1.0)


def test_make_projection_model_columns_and_extra() -> None:
    df = cryoxr.make_projection_model(
        rotation_y=[-3.0, 0.0, 3.0],
        experiment_id="TS_01",
        pixel_spacing=1.35,
        extra={"tilt_index": [2, 0, 1], "excluded": [False, False, True]},
    )
    assert list(df.columns) == [*PMDL.ALL, "tilt_index", "excluded"]
    assert df.rotation_x.tolist() == [0.0, 0.0, 0.0]
    assert df.excluded.tolist() == [False, False, True]


def test_validate_accepts_several_experiments() -> None:
    a = cryoxr.make_projection_model(rotation_y=[0.0, 1.0], experiment_id="a", pixel_spacing=1.0)
    b = cryoxr.make_projection_model(rotation_y=[0.0], experiment_id="b", pixel_spacing=2.0)
    both = pd.concat([a, b], ignore_index=True)
    assert cryoxr.validate_projection_model(both) is both


def _good() -> pd.DataFrame:
    return cryoxr.make_projection_model(rotation_y=[0.0, 1.0], experiment_id="a", pixel_spacing=1.0)


@pytest.mark.parametrize(
    ("mutate", "error", "words"),
    [
        (lambda df: df.drop(columns="dx"), SchemaError, "missing column(s) ['dx']"),
        (lambda df: df.assign(rotation_y=[0.0, np.nan]), InvalidValueError, "'rotation_y' must be finite"),
        (lambda df: df.assign(pixel_spacing=[0.0, 0.0]), InvalidValueError, "pixel_spacing must be > 0"),
        (lambda df: df.assign(pixel_spacing=[1.0, 2.0]), InvalidValueError, "one pixel_spacing"),
        (lambda df: df.assign(experiment_id=["a", ""]), InvalidValueError, "experiment_id must be non-empty"),
        (lambda df: df.assign(dx=["a", "b"]), SchemaError, "'dx' must be numeric"),
        (lambda df: df.iloc[:0], InvalidValueError, "at least one tilt"),
    ],
)
def test_bad_models(mutate, error, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error) as info:
        cryoxr.validate_projection_model(mutate(_good()))
    assert isinstance(info.value, CryoxrError)
    assert isinstance(info.value, ValueError)
    assert words in str(info.value)


def test_bad_centres() -> None:
    with pytest.raises(InvalidValueError, match="tilt_image_center"):
        projection_model_to_projection_matrices(_good(), (1.0, 2.0, 3.0), (1, 1, 1))
    with pytest.raises(InvalidValueError, match="tomogram_dimensions"):
        projection_model_to_projection_matrices(_good(), (1.0, 2.0), (1, 1))


def test_make_projection_model_length_mismatch() -> None:
    with pytest.raises(InvalidValueError, match="disagree in length"):
        cryoxr.make_projection_model(
            rotation_y=[0.0, 1.0], dx=[0.0, 1.0, 2.0], experiment_id="a", pixel_spacing=1
        )
