"""Geometry as data: tomogram size and centres from the model's columns, arguments override."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import cryoxr
from cryoxr.errors import InvalidValueError
from cryoxr.geometry import experiment_geometries, projection_operators
from cryoxr.io.relion import read_relion_tilt_series
from cryoxr.testing import raise_if_dask_computes, random_poses


def relion_projection(
    point: np.ndarray, size: np.ndarray, image: np.ndarray, px: float, row: pd.Series
) -> np.ndarray:
    """RELION 5's Tomogram::setProjectionMatrix written out (docs/CONVENTIONS.md §6.2), from the file's labels."""
    xt, yt, zr = np.deg2rad([row.rlnTomoXTilt, row.rlnTomoYTilt, row.rlnTomoZRot])
    rx = np.array([[1, 0, 0], [0, np.cos(xt), -np.sin(xt)], [0, np.sin(xt), np.cos(xt)]])
    ry = np.array([[np.cos(yt), 0, np.sin(yt)], [0, 1, 0], [-np.sin(yt), 0, np.cos(yt)]])
    rz = np.array([[np.cos(zr), -np.sin(zr), 0], [np.sin(zr), np.cos(zr), 0], [0, 0, 1]])
    rotated = rz @ ry @ rx @ (point - np.floor(size / 2))
    return rotated[:2] + np.array([row.rlnTomoXShiftAngst, row.rlnTomoYShiftAngst]) / px + np.floor(image / 2)


def test_two_relion_projects_concat_filter_parquet_project(
    tmp_path: Path, relion5_project: Any, rng: np.random.Generator
) -> None:
    """Issue 15: geometry travels with the data through concat, a filter and parquet."""
    import starfile

    specs = {
        "TS_01": {"size": (4000, 3999, 1001), "image": (961, 1024), "tilt": 0.0},
        "TS_02": {"size": (1001, 801, 301), "image": (200, 151), "tilt": 7.5},
    }
    models = []
    for name, spec in specs.items():
        path = relion5_project(tmp_path / name, name, px=1.35, **spec)
        models.append(read_relion_tilt_series(path))
    model = pd.concat(models, ignore_index=True)
    keep = (model.rotation_y.abs() < 50) & ~(
        (model.experiment_id == "TS_02") & (model.acquisition_order == 1)
    )
    filtered = model[keep].reset_index(drop=True)
    filtered.to_parquet(tmp_path / "model.parquet")
    back = pd.read_parquet(tmp_path / "model.parquet")
    back.attrs = {}  # whatever the parquet engine keeps, nothing may depend on it
    ids = np.repeat(list(specs), [6, 4])
    points = rng.uniform(0, 1, (10, 3)) * np.array([specs[e]["size"] for e in ids])
    poses = cryoxr.make_poseset(points, experiment_id=ids, pixel_spacing=1.35)
    with raise_if_dask_computes():
        lazy = cryoxr.project(poses, back)
    got = lazy.values
    explicit = cryoxr.project(
        poses,
        back.drop(columns=[c for c in back.columns if c.startswith(("tomogram_size", "tilt_image_center"))]),
        tomogram_dimensions={e: s["size"] for e, s in specs.items()},
        tilt_image_center={e: (s["image"][0] // 2, s["image"][1] // 2) for e, s in specs.items()},
    ).values
    np.testing.assert_allclose(got, explicit, atol=1e-6)
    # and both are RELION's own projection of the file's numbers
    for p, (point, eid) in enumerate(zip(points, ids, strict=True)):
        table = starfile.read(tmp_path / eid / "tilt_series" / f"{eid}.star")
        rows = table[keep[model.experiment_id == eid].to_numpy()]
        spec = specs[eid]
        expected = [
            relion_projection(point, np.array(spec["size"]), np.array(spec["image"]), 1.35, row)
            for _, row in rows.iterrows()
        ]
        np.testing.assert_allclose(got[p, : len(expected)], expected, atol=1e-6)
        assert np.isnan(got[p, len(expected) :]).all()


def test_binned_poses_project_as_unbinned_with_odd_sizes(rng: np.random.Generator) -> None:
    """Bin-4 picks on unbinned tilts: the model's bin-1 size gives RELION's exact centre."""
    model = cryoxr.make_projection_model(
        rotation_y=np.linspace(-60, 60, 7),
        rotation_z=85.0,
        dx=rng.normal(0, 3, 7),
        experiment_id="TS_01",
        pixel_spacing=1.35,
        tomogram_size_x=4095,
        tomogram_size_y=4093,
        tomogram_size_z=999,
        tilt_image_center_x=2048.0,
        tilt_image_center_y=2047.0,
    )
    points = rng.uniform(0, 1, (50, 3)) * [4095, 4093, 999]
    unbinned = cryoxr.make_poseset(points, experiment_id="TS_01", pixel_spacing=1.35)
    binned = cryoxr.make_poseset(points / 4, experiment_id="TS_01", pixel_spacing=5.4)
    np.testing.assert_allclose(
        cryoxr.project(binned, model).values, cryoxr.project(unbinned, model).values, atol=1e-9
    )
    # hand-worked: the bin-1 centre (2047, 2046, 499) is (511.75, 511.5, 124.75) at bin 4
    centre = cryoxr.make_poseset([[511.75, 511.5, 124.75]], experiment_id="TS_01", pixel_spacing=5.4)
    xy = cryoxr.project(centre, model).values[0]
    np.testing.assert_allclose(xy, np.column_stack([2048.0 + model.dx, 2047.0 + model.dy]), atol=1e-9)
    # the same centre through count_in_field_of_view, streaming
    assert cryoxr.count_in_field_of_view(centre, model, image_shape=(4096, 4096)).values.tolist() == [1] * 7


def test_missing_geometry_names_column_and_argument() -> None:
    model = cryoxr.make_projection_model(rotation_y=[0.0], experiment_id="a", pixel_spacing=1.0)
    poses = cryoxr.make_poseset([[1.0, 2.0, 3.0]], experiment_id="a", pixel_spacing=1.0)
    with pytest.raises(
        InvalidValueError,
        match=r"experiment 'a' has no tomogram size.*'tomogram_size_x'.*pass tomogram_dimensions=",
    ):
        cryoxr.project(poses, model, tilt_image_center=(5, 5))
    with pytest.raises(
        InvalidValueError, match=r"no tilt-image centre.*'tilt_image_center_x'.*pass tilt_image_center="
    ):
        cryoxr.project(poses, model, tomogram_dimensions=(10, 10, 10))
    sized = model.assign(tomogram_size_x=10, tomogram_size_y=10, tomogram_size_z=10)
    with pytest.raises(InvalidValueError, match="no tilt-image centre"):
        cryoxr.count_in_field_of_view(poses, sized, image_shape=(10, 10))
    with pytest.raises(
        InvalidValueError, match=r"lacks column\(s\) \['image_size_y', 'image_size_x'\].*image_shape="
    ):
        cryoxr.count_in_field_of_view(poses, sized, tilt_image_center=(5, 5))
    # NaN (a concat of a model that has the column and one that has not) is "not known"
    other = sized.assign(experiment_id="b", tomogram_size_x=np.nan)
    both = pd.concat([sized, other], ignore_index=True)
    poses_b = cryoxr.make_poseset([[1.0, 2.0, 3.0]], experiment_id="b", pixel_spacing=1.0)
    with pytest.raises(InvalidValueError, match="experiment 'b' has no tomogram size"):
        cryoxr.project(poses_b, both, tilt_image_center=(5, 5))


def test_arguments_override_columns_and_mappings_fall_back() -> None:
    model = cryoxr.make_projection_model(
        rotation_y=[0.0],
        experiment_id="a",
        pixel_spacing=1.0,
        tomogram_size_x=100,
        tomogram_size_y=100,
        tomogram_size_z=10,
        tilt_image_center_x=50.0,
        tilt_image_center_y=50.0,
    )
    poses = cryoxr.make_poseset([[60.0, 40.0, 5.0]], experiment_id="a", pixel_spacing=1.0)
    assert cryoxr.project(poses, model).values.tolist() == [[[60.0, 40.0]]]
    assert cryoxr.project(poses, model, tomogram_dimensions=(80, 80, 10)).values.tolist() == [[[70.0, 50.0]]]
    assert cryoxr.project(poses, model, tilt_image_center=(0, 0)).values.tolist() == [[[10.0, -10.0]]]
    assert cryoxr.project(poses, model, specimen_center=(61, 41, 5)).values.tolist() == [[[49.0, 49.0]]]
    # a mapping without this experiment: the columns answer
    assert cryoxr.project(poses, model, tilt_image_center={"other": (0, 0)}).values.tolist() == [
        [[60.0, 40.0]]
    ]


def test_per_tilt_centres_and_image_shape_from_columns(rng: np.random.Generator) -> None:
    model = cryoxr.make_projection_model(
        rotation_y=[0.0, 30.0],
        experiment_id="a",
        pixel_spacing=1.0,
        tomogram_size_x=64,
        tomogram_size_y=64,
        tomogram_size_z=16,
        tilt_image_center_x=[32.0, 31.5],
        tilt_image_center_y=[32.0, 30.0],
        image_size_x=64,
        image_size_y=60,
    )
    poses = cryoxr.make_poseset(
        rng.uniform(0, 64, (200, 3)) * [1, 1, 0.25], experiment_id="a", pixel_spacing=1
    )
    xy = cryoxr.project(poses, model)
    centred = cryoxr.project(poses, model, tilt_image_center=(0, 0)).values
    np.testing.assert_allclose(xy.values - centred, np.broadcast_to([[32.0, 32.0], [31.5, 30.0]], xy.shape))
    counts = cryoxr.count_in_field_of_view(poses, model).values
    expected = cryoxr.in_field_of_view(xy, image_shape=(60, 64)).sum("particle").values
    np.testing.assert_array_equal(counts, expected)
    wider = pd.concat([model, model.assign(experiment_id="b", image_size_x=100)], ignore_index=True)
    with pytest.raises(InvalidValueError, match="differ in size"):
        cryoxr.count_in_field_of_view(
            poses.assign_coords(experiment_id=("particle", ["a", "b"] * 100)), wider
        )


def test_depth_is_the_third_row_of_the_projection(rng: np.random.Generator, tilt_model: pd.DataFrame) -> None:
    dims = (4096, 4095, 1001)
    poses = random_poses(rng, 300, chunks=100)
    with raise_if_dask_computes():
        out = cryoxr.project(
            poses, tilt_model, tomogram_dimensions=dims, tilt_image_center=(2048, 2048), return_depth=True
        )
    assert isinstance(out, xr.Dataset)
    assert out.depth.dims == ("particle", "image")
    matrices = cryoxr.projection_model_to_projection_matrices(tilt_model, (2048, 2048), dims)
    points = (poses.position + poses["shift"]).values
    homogeneous = np.column_stack([points, np.ones(len(points))])
    expected = np.einsum("tij,pj->pti", matrices, homogeneous)
    np.testing.assert_allclose(out.depth.values, expected[:, :, 2], atol=1e-9)
    np.testing.assert_allclose(out.projected.values, expected[:, :, :2], atol=1e-9)
    plain = cryoxr.project(poses, tilt_model, tomogram_dimensions=dims, tilt_image_center=(2048, 2048))
    np.testing.assert_array_equal(out.projected.values, plain.values)


def test_operators_and_geometries_agree(poses: xr.Dataset, tilt_model: pd.DataFrame) -> None:
    kwargs = {"tomogram_dimensions": (4096, 4096, 1000), "tilt_image_center": (2048, 2048)}
    (geometry,) = experiment_geometries(poses, tilt_model, **kwargs)
    assert geometry.specimen_center.tolist() == [2048, 2048, 500]
    assert geometry.depth_center.tolist() == [2048, 2048, 500]
    ids, weights, bias, n_tilts, spacing = projection_operators(poses, tilt_model, depth=True, **kwargs)
    assert ids == ["TS_01"]
    assert weights.shape == (1, 3, 3 * 41)
    assert n_tilts.tolist() == [41]
    assert spacing.tolist() == [1.35]
    np.testing.assert_allclose(bias[0, 2::3], geometry.matrices[:, 2, 3])
