"""cryoxr.plot.tilts: the tilt scheme, one line per experiment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cryoxr
from cryoxr.plot import plot_tilt_scheme

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

# -- tilt scheme -------------------------------------------------------------------------


def test_tilt_scheme_one_line_per_experiment(tilt_model: pd.DataFrame) -> None:
    other = cryoxr.make_projection_model(
        rotation_y=np.linspace(-40, 40, 21), rotation_z=-95.0, experiment_id="TS_02", pixel_spacing=1.35
    )
    fig = plot_tilt_scheme(pd.concat([tilt_model, other], ignore_index=True))
    angle, dx, dy = fig.axes
    assert [len(ax.lines) for ax in fig.axes] == [2, 3, 3]  # plus the zero line of the shifts
    np.testing.assert_array_equal(angle.lines[0].get_ydata(), tilt_model.rotation_y)
    np.testing.assert_array_equal(angle.lines[1].get_xdata(), np.arange(21))
    np.testing.assert_array_equal(dx.lines[0].get_ydata(), tilt_model.dx)
    np.testing.assert_array_equal(dy.lines[1].get_ydata(), other.dy)
    legend = angle.get_legend()
    assert legend is not None
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["TS_01 (tilt axis 85.0°)", "TS_02 (tilt axis -95.0°)"]
    assert (angle.get_ylabel(), dx.get_ylabel(), dy.get_xlabel()) == (
        "tilt angle (°)",
        "dx (px)",
        "image index",
    )
