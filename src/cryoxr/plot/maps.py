"""Central slices of particle maps side by side: a reconstruction next to its reference.

:func:`plot_map_slices` draws one row per map and three columns, the central XY, XZ and
YZ sections through voxel ``box // 2`` (where :func:`cryoxr.reconstruct_particle` puts
the particle), each row with its own grey levels (maps on different scales, a
reconstruction and a planted reference, still compare by shape), axes in Å from the
map's centre.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from cryoxr.errors import InvalidValueError
from cryoxr.plot._common import _add_scale_bar, _contrast, _new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_map_slices"]

#: (title, axes shown horizontally / vertically) of the three sections of a (z, y, x) map
SECTIONS = (("XY (z = 0)", "x", "y"), ("XZ (y = 0)", "x", "z"), ("YZ (x = 0)", "y", "z"))


def _as_volume(value: Any, name: str) -> tuple[np.ndarray, float]:
    """A cubic (z, y, x) array and its voxel size in Å (1 when the input has none)."""
    spacing = 1.0
    if isinstance(value, xr.DataArray):
        spacing = float(value.attrs.get("pixel_spacing", 1.0))
        if tuple(value.dims) != ("z", "y", "x"):
            raise InvalidValueError(
                f"plot_map_slices: map {name!r} must have dims ('z', 'y', 'x'), found {value.dims}"
            )
        value = value.values
    elif hasattr(value, "data") and isinstance(getattr(value, "data", None), xr.DataArray):  # a cryoxr Image
        return _as_volume(value.data, name)
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 3:
        raise InvalidValueError(f"plot_map_slices: map {name!r} must be 3D, found shape {array.shape}")
    return array, spacing


def plot_map_slices(
    maps: Mapping[str, Any],
    *,
    title: str | None = None,
    fig: Figure | None = None,
    cmap: str = "gray",
    percentiles: tuple[float, float] = (0.5, 99.5),
    scale_bar: float | bool = True,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Central XY, XZ and YZ sections of each map, one row per map.

    Parameters
    ----------
    maps
        Row label -> map: a (z, y, x) DataArray (its ``pixel_spacing`` gives Å; e.g. a
        variable of :func:`cryoxr.reconstruct_particle`'s result), a 3D Image, or a numpy
        array (1 Å per voxel). Lazy maps are computed.
    title
        Figure title.
    fig
        An empty figure to draw into; a new pyplot figure when None.
    cmap
        Colormap.
    percentiles
        Grey-level limits per row, as percentiles of that row's three sections.
    scale_bar
        True for an automatic scale bar in the first panel of each row, False for none,
        or its length in Å.
    figsize
        Size in inches of a new figure (default: 2.6 per panel).

    Returns
    -------
    matplotlib.figure.Figure
        ``fig.axes`` row by row, three per map (XY, XZ, YZ).

    Raises
    ------
    InvalidValueError
        No maps, or a map that is not a 3D volume.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> vol = np.zeros((8, 8, 8))
    >>> vol[4, 4, 6] = 1.0
    >>> fig = plot_map_slices({"map": vol, "reference": vol})
    >>> len(fig.axes), fig.axes[0].get_title(), fig.axes[0].get_ylabel()
    (6, 'map: XY (z = 0)', 'y (Å)')
    >>> plt.close(fig)
    """
    if not maps:
        raise InvalidValueError("plot_map_slices: expected at least one map, found none")
    volumes = {str(name): _as_volume(value, str(name)) for name, value in maps.items()}
    rows = len(volumes)
    fig = _new_figure(fig, figsize or (3 * 2.6, rows * 2.6))
    grid = fig.subplots(rows, 3, squeeze=False)
    for row, (name, (volume, spacing)) in enumerate(volumes.items()):
        nz, ny, nx = volume.shape
        sections = {
            "x": (volume[nz // 2], ("x", "y")),
            "z": (volume[:, ny // 2, :], ("x", "z")),
            "y": (volume[:, :, nx // 2], ("y", "z")),
        }
        planes = [sections[key][0] for key in ("x", "z", "y")]
        low, high = _contrast(planes, percentiles)
        sizes = {"x": nx, "y": ny, "z": nz}
        for col, ((label, horizontal, vertical), plane) in enumerate(zip(SECTIONS, planes, strict=True)):
            ax = grid[row, col]
            h0 = (-(sizes[horizontal] // 2) - 0.5) * spacing
            v0 = (-(sizes[vertical] // 2) - 0.5) * spacing
            extent = (h0, h0 + sizes[horizontal] * spacing, v0, v0 + sizes[vertical] * spacing)
            ax.imshow(
                plane, origin="lower", cmap=cmap, vmin=low, vmax=high, extent=extent, interpolation="nearest"
            )
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_xlabel(f"{horizontal} (Å)")
            ax.set_ylabel(f"{vertical} (Å)")
            if col == 0:
                _add_scale_bar(ax, sizes[horizontal] * spacing, scale_bar)
    if title:
        fig.suptitle(title)
    return fig
