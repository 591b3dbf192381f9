"""Field of view: the mask of projected points against explicit bounds, the fused count."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import cryoxr
from cryoxr.errors import InvalidValueError
from cryoxr.field_of_view import count_in_field_of_view, in_field_of_view
from cryoxr.projection import project
from cryoxr.testing import raise_if_dask_computes, random_poses

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


# -- the composed path: project -> in_field_of_view fused --------------------------------


def _two_experiments(rng: np.random.Generator, tilt_model: pd.DataFrame) -> tuple[xr.Dataset, pd.DataFrame]:
    """Particles of two tomograms, interleaved, and a model where the second lacks tilts (NaN)."""
    ids = np.where(rng.random(700) < 0.5, "TS_01", "TS_02")
    poses = random_poses(rng, 700, experiment_id=ids)
    second = tilt_model.iloc[:30].assign(experiment_id="TS_02", rotation_z=80.0)
    return poses, pd.concat([tilt_model, second], ignore_index=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_in_field_of_view_of_project_is_fused_and_equal(
    rng: np.random.Generator, tilt_model: pd.DataFrame, dtype: type
) -> None:
    poses, model = _two_experiments(rng, tilt_model)
    projected = project(
        poses, model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE, chunks=200, dtype=dtype
    )
    shape, margin = (3838, 3710), 10.5
    with raise_if_dask_computes():
        fused = in_field_of_view(projected, image_shape=shape, margin=margin)
        counts = fused.sum("particle")
    # one fused kernel: the projected positions are not computed on the way
    assert projected.data.name not in fused.data.dask.layers
    graph = dask.optimize(fused.data)[0].__dask_graph__()
    names = [k[0] for k in graph if isinstance(k, tuple)]
    assert sum("fov_mask_block" in name for name in names) == 4  # one task per particle chunk (700 / 200)
    assert not any("project_block" in name for name in names)
    # summed over particles, each mask chunk is counted in the task that makes it
    graph = dask.optimize(counts.data)[0].__dask_graph__()
    names = [k[0] for k in graph if isinstance(k, tuple)]
    assert sum("fov_mask_block" in name for name in names) == 4
    assert not any("project_block" in name for name in names)
    assert counts.dtype == np.int64
    # the same mask as the test on the computed positions (generic path: numpy input)
    eager = in_field_of_view(projected.compute(), image_shape=shape, margin=margin)
    np.testing.assert_array_equal(fused.values, eager.values)
    assert not fused.values[poses.experiment_id.values == "TS_02", 30:].any()  # missing tilts are outside
    assert 0 < fused.values.mean() < 1
    np.testing.assert_array_equal(counts.values, eager.values.sum(axis=0))
    xr.testing.assert_identical(fused.drop_vars(list(fused.coords)), eager.drop_vars(list(eager.coords)))


def test_in_field_of_view_of_a_modified_projection_is_not_fused(
    poses: xr.Dataset, tilt_model: pd.DataFrame
) -> None:
    projected = project(poses, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE, chunks=300)
    shifted = projected + 100.0  # no longer what project() made: tested as given
    mask = in_field_of_view(shifted, image_shape=(4096, 4096))
    expected = (np.abs(projected.values + 100.0 - 2047.5) <= 2047.5).all(axis=2)
    np.testing.assert_array_equal(mask.values, expected)
    assert shifted.data.name in mask.data.dask.layers


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 129, 257, 8191, 33_333])
def test_mask_chunk_column_sums_at_every_halving(rng: np.random.Generator, n: int) -> None:
    from cryoxr.field_of_view import _MaskChunk

    mask = rng.random((n, 5)) < 0.7
    np.testing.assert_array_equal(np.sum(mask.view(_MaskChunk), axis=0), mask.sum(axis=0))
    full = np.ones((n, 3), bool).view(_MaskChunk)  # every byte 1: the halvings' sums at their largest
    np.testing.assert_array_equal(np.sum(full, axis=0), [n, n, n])
    strided = mask[::2, ::2].view(_MaskChunk)
    np.testing.assert_array_equal(np.sum(strided, axis=0), mask[::2, ::2].sum(axis=0))


def test_mask_chunks_sum_over_particles_exactly(rng: np.random.Generator) -> None:
    from cryoxr.field_of_view import _MaskChunk

    mask = rng.random((1000, 7)) < 0.6
    chunk = mask.view(_MaskChunk)
    want = mask.sum(axis=0)
    np.testing.assert_array_equal(np.sum(chunk, axis=0), want)
    np.testing.assert_array_equal(np.sum(chunk, axis=(0,), keepdims=True, dtype=np.int64), want[None, :])
    np.testing.assert_array_equal(np.sum(np.ones((600, 2), bool).view(_MaskChunk), axis=-2), [600, 600])
    assert np.sum(chunk, axis=1).tolist() == mask.sum(axis=1).tolist()  # other axes: numpy's
    assert int(np.sum(chunk)) == int(mask.sum())
    # everything else comes back as a plain ndarray
    assert type(np.concatenate([chunk, chunk])) is np.ndarray
    assert type(chunk & chunk) is np.ndarray
    assert type(~chunk) is np.ndarray


def test_counts_past_the_uint8_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    import cryoxr.field_of_view as fov

    monkeypatch.setattr(fov, "_COUNT_ROWS", 3)  # 3 rows per step: 2000 rows flush the counters twice
    poses = cryoxr.make_poseset(np.full((2000, 3), 10.0), experiment_id="t", pixel_spacing=1.0)
    model = cryoxr.make_projection_model(rotation_y=[0.0, 30.0], experiment_id="t", pixel_spacing=1.0)
    kw = {"tomogram_dimensions": (20, 20, 20), "tilt_image_center": (10, 10), "image_shape": (20, 20)}
    counts = count_in_field_of_view(poses, model, chunks=1500, **kw)
    assert counts.values.tolist() == [2000, 2000]  # every particle inside in both tilts
    xy = project(poses, model, tomogram_dimensions=(20, 20, 20), tilt_image_center=(10, 10), chunks=1500)
    composed = in_field_of_view(xy, image_shape=(20, 20)).sum("particle")
    assert composed.values.tolist() == [2000, 2000]


def test_reductions_of_the_fused_mask(poses: xr.Dataset, tilt_model: pd.DataFrame) -> None:
    projected = project(poses, tilt_model, tomogram_dimensions=DIMS, tilt_image_center=CENTRE, chunks=300)
    mask = in_field_of_view(projected, image_shape=(3000, 3500), margin=4)
    values = mask.values
    assert 0 < values.mean() < 1
    assert int(mask.sum()) == int(values.sum())
    np.testing.assert_array_equal(mask.sum("image").values, values.sum(axis=1))
    np.testing.assert_array_equal(
        mask.isel(image=[0, 5]).sum("particle").values, values[:, [0, 5]].sum(axis=0)
    )
    np.testing.assert_array_equal(mask.sum("particle").values, values.sum(axis=0))
    np.testing.assert_allclose(mask.mean("particle").values, values.mean(axis=0))
