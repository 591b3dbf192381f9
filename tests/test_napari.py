"""cryoxr.napari: layer-data tuples, their scales and dims order, and their overlay in Å."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.spatial.transform import Rotation

import cryoxr
from cryoxr.errors import InvalidValueError
from cryoxr.napari import image_layer, poseset_layers, projected_layer, to_napari
from cryoxr.testing import raise_if_dask_computes, random_poses


def world(data: np.ndarray, kwargs: dict, index: np.ndarray | None = None) -> np.ndarray:
    """napari's data -> world transform for scale and translate (no rotation/shear)."""
    points = np.asarray(data if index is None else index, dtype=np.float64)
    scale = np.asarray(kwargs["scale"])
    translate = np.asarray(kwargs.get("translate", np.zeros(len(scale))))
    return points * scale + translate


@pytest.fixture
def tomogram() -> cryoxr.Tomogram:
    return cryoxr.Tomogram.from_array(
        da.zeros((40, 64, 80), dtype=np.float32, chunks=16),
        pixel_spacing=6.8,
        experiment_id="TS_01",
        source="ts01.mrc",
    )


# -- images --------------------------------------------------------------------------------


def test_tomogram_layer_is_lazy_with_scale_in_angstrom(tomogram: cryoxr.Tomogram) -> None:
    with raise_if_dask_computes():
        (layer,) = to_napari(tomogram)
    data, kwargs, kind = layer
    assert kind == "image"
    assert data is tomogram.data.data
    assert isinstance(data, da.Array)
    assert data.shape == (40, 64, 80)
    assert kwargs["name"] == "TS_01"
    assert kwargs["scale"] == (6.8, 6.8, 6.8)
    assert kwargs["translate"] == (0.0, 0.0, 0.0)
    assert kwargs["rgb"] is False
    assert kwargs["multiscale"] is False
    assert kwargs["metadata"]["dims"] == ("z", "y", "x")
    assert kwargs["metadata"]["source"] == "ts01.mrc"
    assert "contrast_limits" not in kwargs
    assert image_layer(tomogram, contrast_limits=(-1, 2))[1]["contrast_limits"] == (-1.0, 2.0)


def test_stack_and_micrograph_scales() -> None:
    ts = cryoxr.Image.from_array(np.zeros((41, 16, 16)), pixel_spacing=1.35, experiment_id="TS", stack=True)
    data, kwargs, _ = image_layer(ts)
    assert kwargs["scale"] == (1.0, 1.35, 1.35)
    assert kwargs["metadata"]["units"] == ("index", "angstrom", "angstrom")
    micrograph = cryoxr.Micrograph.from_array(np.zeros((16, 24)), pixel_spacing=0.8, experiment_id="m")
    data, kwargs, _ = image_layer(micrograph.data)  # a bare DataArray works too
    assert data.shape == (16, 24)
    assert kwargs["scale"] == (0.8, 0.8)


def test_crop_is_translated_to_its_place(tomogram: cryoxr.Tomogram) -> None:
    crop = tomogram.isel(z=slice(10, 20), x=slice(5, None))
    _, kwargs, _ = image_layer(crop)
    assert kwargs["translate"] == pytest.approx((10 * 6.8, 0.0, 5 * 6.8))


# -- poses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["pixel", "angstrom"])
def test_particle_lands_on_its_image_voxel(tomogram: cryoxr.Tomogram, unit: str) -> None:
    voxels_xyz = np.array([[3.0, 5.0, 7.0], [79.0, 63.0, 39.0], [10.0, 20.0, 30.0]])
    poses = cryoxr.make_poseset(voxels_xyz, experiment_id="TS_01", pixel_spacing=6.8)
    (image, points, _vectors) = to_napari([tomogram, poses], unit=unit)  # type: ignore[arg-type]
    for crop in (tomogram, tomogram.isel(x=slice(2, None), z=slice(1, None))):
        _, crop_kwargs, _ = image_layer(crop)
        offset = np.array([1, 0, 2]) if crop is not tomogram else np.zeros(3, dtype=int)
        # image voxel [z, y, x] of the crop, in world coordinates
        zyx_index = voxels_xyz[:, ::-1] - offset
        np.testing.assert_allclose(world(points[0], points[1]), world(None, crop_kwargs, zyx_index))  # type: ignore[arg-type]
    assert image[1]["name"] == "TS_01"
    assert points[1]["name"] == "TS_01 particles"


def test_points_are_zyx_in_pixels_or_angstrom() -> None:
    poses = cryoxr.make_poseset(
        [[1.0, 2.0, 3.0]], shift=[[0.5, 0.0, -1.0]], experiment_id="t", pixel_spacing=2.0
    )
    (pixels, _), (angstrom, _) = poseset_layers(poses), poseset_layers(poses, unit="angstrom")
    assert pixels[0].tolist() == [[2.0, 2.0, 1.5]]  # position + shift, reversed
    assert pixels[1]["scale"] == (2.0, 2.0, 2.0)
    assert angstrom[0].tolist() == [[4.0, 4.0, 3.0]]
    assert angstrom[1]["scale"] == (1.0, 1.0, 1.0)
    # point size is given in Å: the same on screen in both units
    assert pixels[1]["size"] * 2.0 == angstrom[1]["size"] == 50.0
    assert pixels[1]["metadata"]["unit"] == "pixel"


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_vectors_follow_the_rotated_reference_axis(poses: xr.Dataset, axis: str) -> None:
    _, (vectors, kwargs, kind) = poseset_layers(poses, vector_axis=axis, vector_length=80.0)  # type: ignore[arg-type]
    assert kind == "vectors"
    assert vectors.shape == (1000, 2, 3)
    column = "xyz".index(axis)
    expected = poses.cryo.rotation.as_matrix()[:, :, column][:, ::-1] * 80.0 / 1.35  # zyx, pixels
    np.testing.assert_allclose(vectors[:, 1], expected, atol=1e-9)
    start = (poses.position + poses["shift"]).values[:, ::-1]
    np.testing.assert_allclose(vectors[:, 0], start)
    # 80 Å long in world coordinates
    np.testing.assert_allclose(np.linalg.norm(vectors[:, 1] * np.asarray(kwargs["scale"]), axis=1), 80.0)
    assert kwargs["metadata"]["vector_axis"] == axis
    assert len(poseset_layers(poses, vectors=False)) == 1


def test_features_hold_extra_columns_and_experiment(rng: np.random.Generator) -> None:
    ids = np.array(["TS_02", "TS_01", "TS_02", "TS_03", "TS_01"])
    poses = cryoxr.make_poseset(
        rng.uniform(0, 100, (5, 3)),
        orientation=Rotation.random(5, random_state=1),
        experiment_id=ids,
        pixel_spacing=1.0,
        extra={"score": np.arange(5) / 10, "class_number": np.array([1, 2, 1, 2, 3])},
    )
    layers = to_napari(poses)
    assert [(kwargs["name"], kind) for _, kwargs, kind in layers] == [
        ("TS_02 particles", "points"),
        ("TS_02 orientations", "vectors"),
        ("TS_01 particles", "points"),
        ("TS_01 orientations", "vectors"),
        ("TS_03 particles", "points"),
        ("TS_03 orientations", "vectors"),
    ]
    data, kwargs, _ = layers[2]
    features = kwargs["features"]
    assert isinstance(features, pd.DataFrame)
    assert list(features.columns) == ["particle", "experiment_id", "score", "class_number"]
    assert features["particle"].tolist() == [1, 4]
    assert features["score"].tolist() == [0.1, 0.4]
    assert (features["experiment_id"] == "TS_01").all()
    np.testing.assert_allclose(data, poses.position.values[[1, 4], ::-1])
    assert len(layers[3][0]) == len(layers[3][1]["features"]) == 2
    # one layer for the whole set, the experiment as a feature
    (points, _vectors) = to_napari(poses, by_experiment=False)
    assert points[1]["name"] == "particles"
    assert points[1]["features"]["experiment_id"].tolist() == ids.tolist()
    assert points[0].shape == (5, 3)


def test_dask_poseset_is_read_in_one_compute(poses_twin: xr.Dataset) -> None:
    with raise_if_dask_computes(max_computes=1):
        points, vectors = to_napari(poses_twin)
    assert points[0].shape == (1000, 3)
    assert isinstance(points[0], np.ndarray)
    assert vectors[0].shape == (1000, 2, 3)


def test_empty_poseset() -> None:
    poses = cryoxr.make_poseset(np.zeros((0, 3)), experiment_id="t", pixel_spacing=1.0)
    points, vectors = to_napari(poses)
    assert points[0].shape == (0, 3)
    assert vectors[0].shape == (0, 2, 3)


@pytest.mark.parametrize(
    ("option", "value"),
    [("unit", "nm"), ("vector_axis", "w"), ("point_size", 0.0), ("vector_length", float("nan"))],
)
def test_bad_poseset_options(poses: xr.Dataset, option: str, value: object) -> None:
    with pytest.raises(InvalidValueError, match=option):
        to_napari(poses, **{option: value})  # type: ignore[arg-type]


# -- projected positions, projection models, others -----------------------------------------------


def test_projected_points_overlay_the_tilt_series(rng: np.random.Generator, tilt_model: pd.DataFrame) -> None:
    poses = random_poses(rng, 20, dims=(200, 200, 50))
    projected = cryoxr.project(
        poses, tilt_model, tomogram_dimensions=(200, 200, 50), tilt_image_center=(100, 100)
    )
    ts = cryoxr.Image.from_array(
        np.zeros((41, 200, 200)), pixel_spacing=1.35, experiment_id="TS_01", stack=True
    )
    (image, points) = to_napari([ts, projected])
    data, kwargs, kind = points
    assert kind == "points"
    assert data.shape == (20 * 41, 3)
    assert kwargs["features"]["image"].tolist()[:3] == [0, 1, 2]
    # particle 7 in tilt 12: world (image, y, x) = (12, y * 1.35, x * 1.35), as the image pixel there
    row = 7 * 41 + 12
    x, y = projected.values[7, 12]
    np.testing.assert_allclose(world(data, kwargs)[row], world(None, image[1], np.array([12, y, x])))  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="pixel_spacing"):
        projected_layer(projected.drop_attrs())


def test_projection_model_is_not_a_layer(tilt_model: pd.DataFrame) -> None:
    with pytest.raises(InvalidValueError, match="ProjectionModel") as info:
        to_napari(tilt_model)
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidValueError, match="found int"):
        to_napari(3)


def test_layers_build_in_napari(tomogram: cryoxr.Tomogram, poses: xr.Dataset) -> None:
    layers_module = pytest.importorskip("napari.layers")
    for data, kwargs, kind in to_napari([tomogram, poses]):
        layer = layers_module.Layer.create(data, kwargs, kind)
        assert layer.name == kwargs["name"]
