"""The figure of a subtomogram average: its three central slices and its FSC curve.

Reads only the three slices of a lazy average (one dask compute); the FSC curve is the
output of :func:`cryoxr.fsc` (already computed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import xarray as xr

from cryoxr.errors import InvalidValueError
from cryoxr.image import Image, validate_image
from cryoxr.plot._common import _add_scale_bar, _contrast, _edges, _new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_average"]

#: (panel title, dim fixed at its centre, horizontal dim, vertical dim)
SLICES = (("XY", "z", "x", "y"), ("XZ", "y", "x", "z"), ("YZ", "x", "y", "z"))


def plot_average(
    average: Image | xr.DataArray,
    fsc_curve: xr.DataArray | None = None,
    *,
    fig: Figure | None = None,
    cmap: str = "gray",
    percentiles: tuple[float, float] = (0.5, 99.5),
    scale_bar: float | bool = True,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Orthogonal central slices of an average and, when given, its FSC curve.

    Three panels show the XY, XZ and YZ planes through the central voxel (index
    ``n // 2``: the particle centre of a :func:`cryoxr.average_subtomograms` map), in Å,
    with one grey scale (``percentiles`` of the three slices) so densities compare
    across panels; y and z increase upwards. The fourth panel, with ``fsc_curve``, plots
    the FSC against spatial frequency (1/Å) with the 0.143 threshold and the resolution
    where the curve crosses it (``fsc_curve.attrs["resolution_0143"]``).

    Parameters
    ----------
    average
        A 3D :class:`~cryoxr.Image` or image DataArray, lazy or not.
    fsc_curve
        Output of :func:`cryoxr.fsc` (e.g. between the half maps), or None.
    fig
        A figure to draw into (it should be empty); a new pyplot figure when None.
    cmap, percentiles
        Colormap and grey-level limits of the slices.
    scale_bar
        True for an automatic scale bar on the XY panel, False for none, or a length in Å.
    figsize
        Size in inches of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        ``fig.axes`` is ``[xy, xz, yz]`` plus ``fsc`` when a curve is given.

    Raises
    ------
    InvalidValueError
        ``fsc_curve`` is not an FSC curve (dims ``("shell",)`` with a ``frequency`` coordinate).

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> import cryoxr
    >>> from cryoxr.plot import plot_average
    >>> avg = cryoxr.Tomogram.from_array(np.random.default_rng(0).normal(size=(16, 16, 16)),
    ...                                  pixel_spacing=5.0, experiment_id="average")
    >>> fig = plot_average(avg, cryoxr.fsc(avg, avg))
    >>> [ax.get_title() for ax in fig.axes]
    ['XY at z = 40 Å', 'XZ at y = 40 Å', 'YZ at x = 40 Å', 'FSC: 0.143 at 10 Å (Nyquist)']
    >>> plt.close(fig)
    """
    data = validate_image(average, ndim=3, stack=False)
    if fsc_curve is not None and (fsc_curve.dims != ("shell",) or "frequency" not in fsc_curve.coords):
        raise InvalidValueError(
            "plot_average: fsc_curve must be the output of cryoxr.fsc (dims ('shell',) with a "
            f"'frequency' coordinate), found dims {fsc_curve.dims} and coords {list(fsc_curve.coords)}"
        )
    spacing = float(data.attrs["pixel_spacing"])
    centre = {d: data.sizes[d] // 2 for d in ("z", "y", "x")}
    planes = [data.isel({fixed: centre[fixed]}).transpose(up, across) for _, fixed, across, up in SLICES]
    slices = [np.asarray(s) for s in dask.compute(*(p.data for p in planes))]
    vmin, vmax = _contrast(slices, percentiles)
    panels = 4 if fsc_curve is not None else 3
    fig = _new_figure(fig, figsize or (3.2 * panels, 3.4))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    style: dict[str, Any] = {"cmap": cmap, "vmin": vmin, "vmax": vmax, "origin": "lower", "aspect": "equal"}
    for ax, image, (title, fixed, across, up) in zip(axes, slices, SLICES, strict=False):
        extent = (*_edges(data.coords[across].values, spacing), *_edges(data.coords[up].values, spacing))
        ax.imshow(image, extent=extent, **style)
        at = float(data.coords[fixed].values[centre[fixed]])
        ax.set_title(f"{title} at {fixed} = {at:g} Å", fontsize=10)
        ax.set_xlabel(f"{across} (Å)")
        ax.set_ylabel(f"{up} (Å)")
    _add_scale_bar(axes[0], data.sizes["x"] * spacing, scale_bar)
    if fsc_curve is not None:
        _plot_fsc(axes[3], fsc_curve)
    n = data.attrs.get("n_particles")
    label = f"{data.attrs['experiment_id']}" + (
        f" of {n:,} particles" if isinstance(n, int | np.integer) else ""
    )
    fig.suptitle(f"{label}: {spacing:g} Å/px, box {data.sizes['x']}")
    return fig


def _plot_fsc(ax: Any, curve: xr.DataArray) -> None:
    frequency = np.asarray(curve.coords["frequency"].values)
    threshold = float(curve.attrs.get("threshold", 0.143))
    ax.plot(frequency, np.asarray(curve.values), color="#1f77b4", marker=".", markersize=3)
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=0.8)
    ax.axhline(0.0, color="black", linewidth=0.5)
    resolution = curve.attrs.get("resolution_0143")
    title = "FSC"
    if resolution is not None and np.isfinite(resolution):
        ax.axvline(1.0 / float(resolution), color="#d62728", linewidth=0.8)
        nyquist = "" if curve.attrs.get("crosses_0143", True) else " (Nyquist)"
        title = f"FSC: {threshold:g} at {float(resolution):.3g} Å{nyquist}"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.2, 1.05)
    ax.set_xlim(0.0, float(frequency[-1]))
