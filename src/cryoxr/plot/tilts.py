"""Tilt-scheme figure: tilt angles and image shifts of a projection model per image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cryoxr.plot._common import _new_figure
from cryoxr.projection_model import PMDL, validate_projection_model

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_tilt_scheme"]


def plot_tilt_scheme(
    model: pd.DataFrame,
    *,
    fig: Figure | None = None,
    figsize: tuple[float, float] = (7.0, 7.0),
) -> Figure:
    """Tilt angle and image shifts against image index, one line per experiment.

    Three panels share the x axis (the image index within each experiment, as the
    ``image`` dim of a tilt series and of :func:`cryoxr.project`): the tilt angle
    ``rotation_y`` (°), and the shifts ``dx`` and ``dy`` (pixels of the tilt images).
    The legend gives each experiment's tilt-axis angle (median ``rotation_z``).

    Parameters
    ----------
    model
        A ProjectionModel, one or several experiments.
    fig
        A figure to draw into (it should be empty); a new pyplot figure when None.
    figsize
        Size in inches of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        Axes in ``fig.axes``: ``[tilt angle, dx, dy]``, each with one line per experiment.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import cryoxr
    >>> model = cryoxr.make_projection_model(rotation_y=[-3.0, 0.0, 3.0], rotation_z=85.0,
    ...                                      experiment_id="TS_01", pixel_spacing=1.35)
    >>> fig = plot_tilt_scheme(model)
    >>> fig.axes[0].lines[0].get_ydata().tolist()
    [-3.0, 0.0, 3.0]
    >>> plt.close(fig)
    """
    validate_projection_model(model)
    fig = _new_figure(fig, figsize)
    axes = fig.subplots(3, 1, sharex=True)
    for eid, group in model.groupby(PMDL.EXPERIMENT_ID, sort=False):
        index = np.arange(len(group))
        axis_angle = float(np.median(group[PMDL.ROTATION_Z].to_numpy(dtype=np.float64)))
        label = f"{eid} (tilt axis {axis_angle:.1f}°)"
        style: dict[str, Any] = {"marker": "o", "markersize": 3, "linewidth": 1}
        (line,) = axes[0].plot(index, group[PMDL.ROTATION_Y].to_numpy(dtype=np.float64), label=label, **style)
        for ax, column in ((axes[1], PMDL.SHIFT_X), (axes[2], PMDL.SHIFT_Y)):
            ax.plot(index, group[column].to_numpy(dtype=np.float64), color=line.get_color(), **style)
    axes[0].set_ylabel("tilt angle (°)")
    axes[1].set_ylabel("dx (px)")
    axes[2].set_ylabel("dy (px)")
    axes[2].set_xlabel("image index")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    for ax in axes[1:]:
        ax.axhline(0.0, color="0.5", linewidth=0.8)
    n_experiments = model[PMDL.EXPERIMENT_ID].nunique()
    axes[0].legend(fontsize=8, ncols=max(1, min(3, n_experiments // 8 + 1)))
    fig.suptitle("Tilt scheme")
    return fig
