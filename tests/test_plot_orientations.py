"""cryoxr.plot.orientations: equal-area histograms and Mollweide maps of view directions."""

from __future__ import annotations

import time

import numpy as np
import pytest
import xarray as xr
from scipy.spatial.transform import Rotation

import cryoxr
from cryoxr.errors import InvalidValueError
from cryoxr.plot import orientation_histogram, plot_orientations
from cryoxr.testing import raise_if_dask_computes

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402


def n_points(line: Line2D) -> int:
    return len(np.asarray(line.get_xdata()))


# -- orientations ------------------------------------------------------------------------


def test_orientation_histogram_total_is_n(poses_twin: xr.Dataset) -> None:
    with raise_if_dask_computes(max_computes=1):
        counts, lon, lat = orientation_histogram(poses_twin, bins=(36, 18))
    assert counts.shape == (36, 18)
    assert counts.sum() == 1000
    assert lon[0] == pytest.approx(-np.pi)
    assert lat[-1] == pytest.approx(np.pi / 2)
    # equal-area bins: every latitude band covers the same solid angle
    assert np.diff(np.sin(lat)) == pytest.approx(np.full(18, 2 / 18))


def test_orientation_histogram_bins_the_rotated_reference_axis() -> None:
    angle = np.radians(80.0)
    rot = Rotation.from_rotvec([[0, 0, 0], [0, angle, 0], [-angle, 0, 0], [0, 0, 0]])
    poses = cryoxr.make_poseset(np.zeros((4, 3)), orientation=rot, experiment_id="t", pixel_spacing=1.0)
    counts, _, _ = orientation_histogram(poses, bins=(4, 2))
    # z -> +z (north, twice); 80° about y: z -> near +x (lon 0, lat 10°); -80° about x: z -> near +y (lon 90°)
    assert counts[:, 1].sum() == 4  # all on or above the equator
    assert counts[2, 1] == 3  # longitude bin [0°, 90°)
    assert counts[3, 1] == 1  # longitude bin [90°, 180°]


def test_plot_orientations_histogram_and_scatter(poses: xr.Dataset) -> None:
    fig = plot_orientations(poses, kind="histogram", bins=(24, 12))
    ax = fig.axes[0]
    assert ax.name == "mollweide"
    mesh = ax.collections[0]
    assert np.asarray(mesh.get_array()).sum() == 1000
    assert len(fig.axes) == 2  # map and colour bar
    assert "particles per bin" in fig.axes[1].get_xlabel()
    fig = plot_orientations(poses)  # auto: 1,000 particles are drawn one by one
    line = fig.axes[0].lines[0]
    assert n_points(line) == 1000
    lon, lat = np.asarray(line.get_xydata()).T
    z_axis = poses.cryo.rotation.as_matrix()[:, :, 2]
    np.testing.assert_allclose(np.sin(lat), z_axis[:, 2], atol=1e-12)
    np.testing.assert_allclose(lon, np.arctan2(z_axis[:, 1], z_axis[:, 0]), atol=1e-12)
    assert "N = 1,000" in fig.axes[0].get_title()


def test_plot_orientations_of_millions_is_fast(rng: np.random.Generator) -> None:
    n = 1_000_000
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    poses = cryoxr.make_poseset(
        np.zeros((n, 3)), orientation=quats, experiment_id="t", pixel_spacing=1.0, chunks=250_000
    )
    start = time.perf_counter()
    fig = plot_orientations(poses)
    fig.canvas.draw()
    assert time.perf_counter() - start < 10.0
    assert np.asarray(fig.axes[0].collections[0].get_array()).sum() == n


def test_plot_orientations_rejects_other_axes(poses: xr.Dataset) -> None:
    _, ax = plt.subplots()
    with pytest.raises(InvalidValueError, match="Mollweide"):
        plot_orientations(poses, ax=ax)
    with pytest.raises(InvalidValueError, match="kind"):
        plot_orientations(poses, kind="hexbin")  # type: ignore[arg-type]
