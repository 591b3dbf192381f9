"""Subtilt extraction: patches centred on projected points, NaN outside, streaming means."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import cryoxr
from cryoxr.errors import InvalidValueError
from cryoxr.extraction import extract_subtilts
from cryoxr.projection import project


def _gaussian_tilt_series(points: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """(T, ny, nx) images with a Gaussian spot at every (particle, tilt) point."""
    n_tilts = points.shape[1]
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    images = np.zeros((n_tilts, *shape))
    for t in range(n_tilts):
        for x, y in points[:, t]:
            images[t] += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return images


def test_extracted_mean_patch_peaks_at_box_centre(rng: np.random.Generator) -> None:
    model = cryoxr.make_projection_model(
        rotation_y=[-40.0, 0.0, 35.0],
        rotation_z=80.0,
        dx=[1.3, 0.0, -2.2],
        experiment_id="ts",
        pixel_spacing=2.0,
        # the geometry travels with the model (binned poses below: sizes in the model's pixels)
        tomogram_size_x=200,
        tomogram_size_y=180,
        tomogram_size_z=60,
        tilt_image_center_x=100.0,
        tilt_image_center_y=90.0,
    )
    dims = (200, 180, 60)
    poses = cryoxr.make_poseset(
        rng.uniform([40, 40, 10], [160, 140, 50], size=(40, 3)) / 2,
        experiment_id="ts",
        pixel_spacing=4.0,
        chunks=16,
    )
    projected = project(poses, model)
    explicit = project(poses, model, tomogram_dimensions=np.array(dims) / 2, tilt_image_center=(100, 90))
    np.testing.assert_allclose(projected.values, explicit.values, atol=1e-9)
    points = projected.values
    images = _gaussian_tilt_series(points, (180, 200), sigma=1.5)
    tilt_series = cryoxr.Image.from_array(
        images.astype(np.float32), pixel_spacing=2.0, experiment_id="ts", stack=True
    )
    box = 16
    patches = extract_subtilts(tilt_series, projected, box_size=box, particles_per_task=7)
    assert patches.dims == ("particle", "image", "y", "x")
    assert patches.dtype == np.float32
    mean = patches.mean("particle", skipna=True).values
    for t in range(3):
        # centroid of the peak region, in box pixels: within 0.5 px of the centre
        peak = mean[t]
        weights = np.where(peak > peak.max() * 0.3, peak, 0)
        yy, xx = np.mgrid[0:box, 0:box]
        cy, cx = (weights * yy).sum() / weights.sum(), (weights * xx).sum() / weights.sum()
        assert abs(cx - box // 2) < 0.5
        assert abs(cy - box // 2) < 0.5
        assert np.unravel_index(np.argmax(peak), peak.shape) == (box // 2, box // 2)
    residual_x = patches.residual_x.values
    np.testing.assert_allclose(residual_x, points[..., 0] - np.floor(points[..., 0] + 0.5))
    assert np.abs(residual_x).max() <= 0.5


def test_extraction_outside_is_nan() -> None:
    ts = cryoxr.Image.from_array(np.ones((2, 10, 10)), pixel_spacing=1.0, experiment_id="t", stack=True)
    xy = xr.DataArray(np.array([[[0.0, 0.0], [np.nan, np.nan]]]), dims=("particle", "image", "axis"))
    patch = extract_subtilts(ts, xy, box_size=4).values
    # nearest pixel (0, 0) sits at box index 2: rows/cols 0 and 1 are outside the image
    assert np.isnan(patch[0, 0, :2]).all()
    assert np.isnan(patch[0, 0, :, :2]).all()
    assert (patch[0, 0, 2:, 2:] == 1).all()
    assert np.isnan(patch[0, 1]).all()
    with pytest.raises(InvalidValueError, match="box_size"):
        extract_subtilts(ts, xy, box_size=0)
    with pytest.raises(InvalidValueError, match="2 images, the projected positions 3 tilts"):
        extract_subtilts(
            ts, xr.DataArray(np.zeros((1, 3, 2)), dims=("particle", "image", "axis")), box_size=4
        )


def test_mean_patch_streams_with_bounded_chunks(tilt_model: pd.DataFrame) -> None:
    """The per-tilt mean over many particles never materialises the patches."""
    n = 20_000
    poses = cryoxr.make_poseset(
        np.random.default_rng(0).uniform(0, 512, size=(n, 3)),
        experiment_id="TS_01",
        pixel_spacing=1.35,
        chunks=5_000,
    )
    projected = project(
        poses, tilt_model.iloc[:3], tomogram_dimensions=(512, 512, 512), tilt_image_center=(256, 256)
    )
    ts = cryoxr.Image.from_array(
        da.ones((3, 512, 512), chunks=(1, 512, 512)), pixel_spacing=1.35, experiment_id="TS_01", stack=True
    )
    patches = extract_subtilts(ts, projected, box_size=32, particles_per_task=1000)
    assert patches.data.chunksize == (1000, 1, 32, 32)
    total = patches.notnull().sum(("particle", "y", "x"))
    with dask.config.set(scheduler="threads"):
        mean = patches.mean("particle").values
    assert mean.shape == (3, 32, 32)
    assert int(total.values.max()) > 0
