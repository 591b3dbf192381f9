"""cryoxr.plot.average: central slices of an average and its FSC curve."""

from __future__ import annotations

import numpy as np
import pytest

import cryoxr
from cryoxr.errors import InvalidValueError
from cryoxr.plot import plot_average
from cryoxr.testing import raise_if_dask_computes

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


def _average(n: int = 12, spacing: float = 4.0) -> cryoxr.Tomogram:
    values = np.arange(n**3, dtype=np.float32).reshape(n, n, n)  # value = n*n z + n y + x
    tomo = cryoxr.Tomogram.from_array(values, pixel_spacing=spacing, experiment_id="average", chunks=4)
    data = tomo.data.assign_coords({d: (np.arange(n) - n // 2) * spacing for d in ("z", "y", "x")})
    data.attrs["n_particles"] = 1234
    return cryoxr.Tomogram(data)


def test_three_central_slices_in_angstrom() -> None:
    average = _average()
    values = average.data.values
    with raise_if_dask_computes(max_computes=1):  # the three slices, in one compute
        fig = plot_average(average)
    xy, xz, yz = fig.axes
    np.testing.assert_array_equal(xy.images[0].get_array(), values[6, :, :])  # rows y, columns x
    np.testing.assert_array_equal(xz.images[0].get_array(), values[:, 6, :])  # rows z, columns x
    np.testing.assert_array_equal(yz.images[0].get_array(), values[:, :, 6])  # rows z, columns y
    assert [float(v) for v in xy.images[0].get_extent()] == [-26.0, 22.0, -26.0, 22.0]
    assert [ax.get_title() for ax in fig.axes] == ["XY at z = 0 Å", "XZ at y = 0 Å", "YZ at x = 0 Å"]
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes] == [
        ("x (Å)", "y (Å)"),
        ("x (Å)", "z (Å)"),
        ("y (Å)", "z (Å)"),
    ]
    clim = {ax.images[0].get_clim() for ax in fig.axes}
    assert len(clim) == 1  # one grey scale for the three panels
    assert fig.get_suptitle() == "average of 1,234 particles: 4 Å/px, box 12"


def test_fsc_panel_shows_the_curve_threshold_and_resolution() -> None:
    rng = np.random.default_rng(0)
    q = np.meshgrid(*[np.fft.fftfreq(16) * 16] * 3, indexing="ij")
    low = np.sqrt(sum(g * g for g in q)) <= 4  # signal up to shell 4: the FSC crosses near there
    signal = np.fft.ifftn(np.fft.fftn(rng.normal(size=(16, 16, 16))) * low).real
    half1, half2 = (
        cryoxr.Tomogram.from_array(
            signal + 0.1 * rng.normal(size=signal.shape), pixel_spacing=2.0, experiment_id=k
        )
        for k in ("half1", "half2")
    )
    curve = cryoxr.fsc(half1, half2)
    assert curve.attrs["crosses_0143"]
    fig = plot_average(half1, curve)
    panel = fig.axes[3]
    line = panel.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), curve.frequency.values)
    np.testing.assert_array_equal(line.get_ydata(), curve.values)
    assert [ln.get_ydata()[0] for ln in panel.lines[1:3]] == [0.143, 0.0]
    assert panel.lines[3].get_xdata()[0] == pytest.approx(1.0 / curve.attrs["resolution_0143"])
    assert panel.get_title() == f"FSC: 0.143 at {curve.attrs['resolution_0143']:.3g} Å"
    assert panel.get_xlabel() == "spatial frequency (1/Å)"


def test_not_an_fsc_curve_is_refused() -> None:
    average = _average()
    with pytest.raises(InvalidValueError, match=r"fsc_curve must be the output of cryoxr.fsc"):
        plot_average(average, average.data.isel(z=0))


def test_into_a_given_figure_and_through_the_accessor() -> None:
    import matplotlib.pyplot as plt

    fig = plt.figure()
    assert plot_average(_average(), fig=fig) is fig
    assert len(_average().data.cryo.plot_average().axes) == 3
