"""Field of view: the mask of projected points against explicit bounds, the fused count."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cryoxr.errors import InvalidValueError
from cryoxr.field_of_view import count_in_field_of_view, in_field_of_view
from cryoxr.projection import project

DIMS = (4096, 4096, 1000)
CENTRE = (2048.0, 2048.0)


def test_in_field_of_view_matches_explicit_bounds(poses_twin: xr.Dataset, tilt_model: pd.DataFrame) -> None:
    projected = project(poses_twin, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE)
    shape = (3838, 3710)  # (ny, nx)
    mask = in_field_of_view(projected, image_shape=shape, margin=10.5).values
    xy = projected.values
    expected = (
        (xy[..., 0] >= 10.5)
        & (xy[..., 0] <= shape[1] - 1 - 10.5)
        & (xy[..., 1] >= 10.5)
        & (xy[..., 1] <= shape[0] - 1 - 10.5)
    )
    np.testing.assert_array_equal(mask, expected)
    assert 0 < expected.mean() < 1  # the case is not trivial
    counts = count_in_field_of_view(
        poses_twin,
        tilt_model,
        tomogram_dimensions=DIMS,
        tilt_image_center=CENTRE,
        image_shape=shape,
        margin=10.5,
    )
    np.testing.assert_array_equal(counts.values, expected.sum(axis=0))
    assert projected.cryo.in_field_of_view(image_shape=shape, margin=10.5).values.sum() == expected.sum()


def test_in_field_of_view_edges_and_nan() -> None:
    xy = xr.DataArray(
        np.array([[[0.0, 0.0], [-1e-9, 0.0], [9.0, 9.0], [np.nan, 1.0]]]), dims=("particle", "image", "axis")
    )
    assert in_field_of_view(xy, image_shape=(10, 10)).values.tolist() == [[True, False, True, False]]
    with pytest.raises(InvalidValueError, match="image_shape"):
        in_field_of_view(xy, image_shape=(10,))
