"""cryoxr.plot.images: orthoslices and projected particles, drawn with Agg, checked through their artists."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

import cryoxr
from cryoxr.errors import InvalidValueError
from cryoxr.plot import plot_orthoslices, plot_projected
from cryoxr.testing import raise_if_dask_computes, random_poses

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar  # noqa: E402


class CountingArray:
    """An array-like that counts the voxels read through it (wrapped lazily by dask)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim
        self.voxels_read = 0

    def __getitem__(self, key: Any) -> np.ndarray:
        out = self.array[key]
        self.voxels_read += out.size
        return out


def n_points(line: Line2D) -> int:
    return len(np.asarray(line.get_xdata()))


def scale_bar_labels(ax: Axes) -> list[str]:
    return [a.txt_label.get_text() for a in ax.artists if isinstance(a, AnchoredSizeBar)]


def ramp_volume(shape: tuple[int, int, int] = (12, 20, 30)) -> np.ndarray:
    z, y, x = np.indices(shape)
    return (z * 10_000 + y * 100 + x).astype(np.float64)


# -- orthoslices -----------------------------------------------------------------------


def test_orthoslices_extents_equal_the_tomogram_size_in_angstrom() -> None:
    tomo = cryoxr.Tomogram.from_array(ramp_volume(), pixel_spacing=4.0, experiment_id="TS_01")
    fig = plot_orthoslices(tomo)
    ax_xy, ax_zy, ax_xz = fig.axes
    half = 2.0
    assert ax_xy.images[0].get_extent() == pytest.approx([-half, 30 * 4 - half, -half, 20 * 4 - half])
    assert ax_zy.images[0].get_extent() == pytest.approx([-half, 12 * 4 - half, -half, 20 * 4 - half])
    assert ax_xz.images[0].get_extent() == pytest.approx([-half, 30 * 4 - half, -half, 12 * 4 - half])
    assert [ax.get_xlabel() for ax in fig.axes] == ["x (Å)", "z (Å)", "x (Å)"]
    assert ax_xy.get_ylabel() == "y (Å)"
    assert ax_xz.get_ylabel() == "z (Å)"
    assert "TS_01" in fig.get_suptitle()


def test_orthoslices_draw_the_slices_through_the_centre() -> None:
    vol = ramp_volume()
    tomo = cryoxr.Tomogram.from_array(vol, pixel_spacing=4.0, experiment_id="t")
    # x = 41 Å -> voxel 10, y = 20 Å -> voxel 5, z = 31 Å -> voxel 8 (nearest)
    fig = plot_orthoslices(tomo, center=(41.0, 20.0, 31.0))
    ax_xy, ax_zy, ax_xz = fig.axes
    np.testing.assert_array_equal(ax_xy.images[0].get_array(), vol[8])
    np.testing.assert_array_equal(ax_zy.images[0].get_array(), vol[:, :, 10].T)
    np.testing.assert_array_equal(ax_xz.images[0].get_array(), vol[:, 5, :])
    assert ax_xy.get_title() == "XY at z = 32 Å"
    # the crosshair marks the slice positions: x of voxel 10, y of voxel 5
    crosshair = [tuple(np.asarray(line.get_data(), dtype=float).ravel()) for line in ax_xy.lines]
    assert crosshair == [(40.0, 40.0, 0.0, 1.0), (0.0, 1.0, 20.0, 20.0)]


def test_orthoslices_read_only_the_three_slices_in_one_compute() -> None:
    source = CountingArray(ramp_volume((32, 32, 32)).astype(np.float32))
    tomo = cryoxr.Tomogram.from_array(source, pixel_spacing=1.0, experiment_id="t", chunks=8)
    with raise_if_dask_computes(max_computes=1) as scheduler:
        plot_orthoslices(tomo, center=(3.0, 3.0, 3.0))
    assert scheduler.total_computes == 1
    # three slabs of one chunk thickness at most, never the volume
    assert 0 < source.voxels_read <= 3 * 8 * 32 * 32
    assert source.voxels_read < source.array.size


def test_orthoslices_of_a_crop_keep_its_place_in_angstrom() -> None:
    tomo = cryoxr.Tomogram.from_array(ramp_volume(), pixel_spacing=2.0, experiment_id="t")
    crop = tomo.sel(x=slice(20.0, 39.0))
    fig = plot_orthoslices(crop)
    assert fig.axes[0].images[0].get_extent()[:2] == pytest.approx([19.0, 39.0])


def test_orthoslices_scale_bar() -> None:
    tomo = cryoxr.Tomogram.from_array(np.zeros((4, 50, 100)), pixel_spacing=10.0, experiment_id="t")
    fig = plot_orthoslices(tomo)
    assert scale_bar_labels(fig.axes[0]) == ["20 nm"]  # a fifth of 1000 Å
    fig = plot_orthoslices(tomo, scale_bar=50.0)
    assert scale_bar_labels(fig.axes[0]) == ["5 nm"]
    fig = plot_orthoslices(tomo, scale_bar=False)
    assert not fig.axes[0].artists


def test_orthoslices_into_a_given_figure() -> None:
    fig = plt.figure()
    tomo = cryoxr.Tomogram.from_array(np.zeros((4, 5, 6)), pixel_spacing=1.0, experiment_id="t")
    assert plot_orthoslices(tomo, fig=fig) is fig
    assert len(fig.axes) == 3


@pytest.mark.parametrize("center", [(1000.0, 0.0, 0.0), (0.0, 0.0, -3.0), (1.0, 2.0)])
def test_orthoslices_reject_a_centre_outside(center: tuple[float, ...]) -> None:
    tomo = cryoxr.Tomogram.from_array(np.zeros((4, 5, 6)), pixel_spacing=1.0, experiment_id="t")
    with pytest.raises(InvalidValueError, match="center"):
        plot_orthoslices(tomo, center=center)  # type: ignore[arg-type]


def test_orthoslices_reject_a_stack() -> None:
    ts = cryoxr.Image.from_array(np.zeros((3, 4, 4)), pixel_spacing=1.0, experiment_id="t", stack=True)
    with pytest.raises(InvalidValueError, match="spatial dims"):
        plot_orthoslices(ts)


# -- projected particles ---------------------------------------------------------------


@pytest.fixture
def tilt_setup(rng: np.random.Generator, tilt_model: pd.DataFrame) -> dict[str, Any]:
    dims = (256, 256, 64)
    poses = random_poses(rng, 300, pixel_spacing=1.35, dims=dims, chunks=100)
    projected = cryoxr.project(poses, tilt_model, tomogram_dimensions=dims, tilt_image_center=(128, 128))
    ts = cryoxr.Image.from_array(
        rng.normal(size=(41, 256, 256)).astype(np.float32),
        pixel_spacing=1.35,
        experiment_id="TS_01",
        stack=True,
    )
    return {"poses": poses, "projected": projected, "ts": ts, "dims": dims}


@pytest.mark.parametrize("image", [0, 20, 40])
def test_projected_counts_in_and_out_of_view(tilt_setup: dict[str, Any], image: int) -> None:
    projected, ts = tilt_setup["projected"], tilt_setup["ts"]
    fig = plot_projected(ts, projected, image=image, margin=10)
    ax = fig.axes[0]
    inside = cryoxr.in_field_of_view(projected, image_shape=(256, 256), margin=10).isel(image=image).values
    in_line, out_line = ax.lines
    assert n_points(in_line) == inside.sum()
    assert n_points(out_line) == (~inside).sum()
    assert in_line.get_label() == f"in view ({inside.sum()})"
    # drawn in Å: pixel positions times the pixel spacing
    xy = projected.isel(image=image).values[inside] * 1.35
    np.testing.assert_allclose(np.asarray(in_line.get_xydata()), xy)
    assert ax.images[0].get_extent() == pytest.approx([-0.675, 256 * 1.35 - 0.675] * 2)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x (Å)", "y (Å)")
    (frame,) = ax.patches  # the in-view region: pixel centres 10 .. 245
    assert isinstance(frame, Rectangle)
    assert (frame.get_x(), frame.get_width()) == pytest.approx((10 * 1.35, 235 * 1.35))


def test_projected_title_and_region(tilt_setup: dict[str, Any]) -> None:
    projected, ts = tilt_setup["projected"], tilt_setup["ts"]
    assert plot_projected(ts, projected, image=2).axes[0].get_title() == "TS_01, image 2"
    region = (100.0, 200.0, 50.0, 150.0)
    fig = plot_projected(ts, projected, image=2, title="a sample of 300", region=region)
    ax = fig.axes[0]
    assert ax.get_title() == "a sample of 300"
    assert (*ax.get_xlim(), *ax.get_ylim()) == pytest.approx(region)
    (bar,) = [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]
    # the scale bar fits the 100 Å region shown, not the 345 Å image
    length = bar.size_bar.get_children()[0].get_width()
    assert 10 <= length <= 50


def test_projected_reads_one_tilt_in_one_compute(tilt_setup: dict[str, Any]) -> None:
    with raise_if_dask_computes(max_computes=1):
        plot_projected(tilt_setup["ts"], tilt_setup["projected"], image=3)


def test_projected_draws_only_the_tilt_series_experiment(
    rng: np.random.Generator, tilt_model: pd.DataFrame
) -> None:
    ids = np.array(["TS_01", "TS_02"] * 50)
    poses = random_poses(rng, 100, experiment_id=ids, dims=(128, 128, 32))
    model = pd.concat([tilt_model, tilt_model.assign(experiment_id="TS_02")], ignore_index=True)
    projected = cryoxr.project(poses, model, tomogram_dimensions=(128, 128, 32), tilt_image_center=(64, 64))
    ts = cryoxr.Image.from_array(
        np.zeros((41, 128, 128)), pixel_spacing=1.35, experiment_id="TS_02", stack=True
    )
    fig = plot_projected(ts, projected, image=20)
    assert sum(n_points(line) for line in fig.axes[0].lines) == 50
    other = cryoxr.Image.from_array(
        np.zeros((41, 8, 8)), pixel_spacing=1.35, experiment_id="TS_09", stack=True
    )
    with pytest.raises(InvalidValueError, match="TS_09"):
        plot_projected(other, projected)


def test_projected_on_a_binned_tilt_series_needs_image_shape(tilt_setup: dict[str, Any]) -> None:
    binned = tilt_setup["ts"].bin(2)
    with pytest.raises(InvalidValueError, match="image_shape"):
        plot_projected(binned, tilt_setup["projected"])
    fig = plot_projected(binned, tilt_setup["projected"], image_shape=(256, 256))
    assert sum(n_points(line) for line in fig.axes[0].lines) == 300


def test_projected_into_given_axes_and_bad_index(tilt_setup: dict[str, Any]) -> None:
    fig, ax = plt.subplots()
    assert plot_projected(tilt_setup["ts"], tilt_setup["projected"], ax=ax) is fig
    with pytest.raises(InvalidValueError, match="image must be an index"):
        plot_projected(tilt_setup["ts"], tilt_setup["projected"], image=41)
    with pytest.raises(InvalidValueError, match="projected"):
        plot_projected(tilt_setup["ts"], tilt_setup["projected"].isel(image=0))
