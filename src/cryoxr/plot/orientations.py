"""Orientation figures: equal-area histograms of view directions on a Mollweide map.

:func:`orientation_histogram` is a streaming reduction over the chunks of a PoseSet
(numpy only, no matplotlib); :func:`plot_orientations` draws it, or every point of a
small set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import dask.array as da
import numpy as np
import xarray as xr
from scipy.spatial.transform import Rotation

from cryoxr.errors import InvalidValueError
from cryoxr.plot._common import _new_figure
from cryoxr.poseset import validate_poseset

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["orientation_histogram", "plot_orientations"]

#: particles up to which ``plot_orientations(kind="auto")`` draws every point
SCATTER_MAX = 2000
UNIT_VECTORS = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}


def _lon_lat(quats: np.ndarray, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (radians) of the reference ``axis`` rotated into the tomogram."""
    v = Rotation.from_quat(quats).apply(UNIT_VECTORS[axis])
    v = v.reshape(-1, 3)
    lon = np.arctan2(v[:, 1], v[:, 0])
    lat = np.arcsin(np.clip(v[:, 2], -1.0, 1.0))
    return lon, lat


def _histogram_block(quats: np.ndarray, axis: str, n_lon: int, n_lat: int) -> np.ndarray:
    """Counts in (n_lon, n_lat) equal-area bins: uniform in longitude and sin(latitude)."""
    counts = np.zeros((n_lon, n_lat), dtype=np.int64)
    if quats.shape[0]:
        lon, lat = _lon_lat(quats, axis)
        i = np.clip(np.floor((lon + np.pi) / (2 * np.pi) * n_lon).astype(np.int64), 0, n_lon - 1)
        j = np.clip(np.floor((np.sin(lat) + 1.0) / 2.0 * n_lat).astype(np.int64), 0, n_lat - 1)
        counts += np.bincount(i * n_lat + j, minlength=n_lon * n_lat).reshape(n_lon, n_lat)
    return counts[None]


def orientation_histogram(
    poses: xr.Dataset, *, bins: tuple[int, int] = (72, 36), axis: Literal["x", "y", "z"] = "z"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Histogram of view directions in equal-area bins, streaming over chunks.

    Parameters
    ----------
    poses
        A PoseSet, numpy- or dask-backed.
    bins
        Number of bins in longitude and latitude. Latitude bins are uniform in
        ``sin(latitude)``, so every bin covers the same solid angle.
    axis
        The reference axis whose direction in the tomogram is binned.

    Returns
    -------
    counts : numpy.ndarray
        (n_lon, n_lat) int64 particle counts; they sum to the number of particles.
    lon_edges, lat_edges : numpy.ndarray
        Bin edges in radians.

    Examples
    --------
    >>> import numpy as np
    >>> import cryoxr
    >>> poses = cryoxr.make_poseset(np.zeros((5, 3)), experiment_id="t", pixel_spacing=1.0)
    >>> counts, lon, lat = orientation_histogram(poses, bins=(4, 2))
    >>> int(counts.sum()), counts.shape, float(np.degrees(lat[-1]))
    (5, (4, 2), 90.0)
    """
    n_lon, n_lat = (int(b) for b in bins)
    if n_lon < 1 or n_lat < 1:
        raise InvalidValueError(f"orientation_histogram: bins must be two ints >= 1, found {bins!r}")
    if axis not in UNIT_VECTORS:
        raise InvalidValueError(f"orientation_histogram: axis must be 'x', 'y' or 'z', found {axis!r}")
    quats = poses["orientation"].data
    if isinstance(quats, da.Array):
        quats = quats.rechunk({1: 4})
        per_chunk = quats.map_blocks(
            _histogram_block,
            axis,
            n_lon,
            n_lat,
            drop_axis=1,
            new_axis=(1, 2),
            chunks=((1,) * quats.numblocks[0], (n_lon,), (n_lat,)),
            dtype=np.int64,
        )
        counts = np.asarray(per_chunk.sum(axis=0).compute())
    else:
        counts = _histogram_block(np.asarray(quats), axis, n_lon, n_lat)[0]
    lon_edges = np.linspace(-np.pi, np.pi, n_lon + 1)
    lat_edges = np.arcsin(np.linspace(-1.0, 1.0, n_lat + 1))
    return counts, lon_edges, lat_edges


def plot_orientations(
    poses: xr.Dataset,
    *,
    kind: Literal["auto", "histogram", "scatter"] = "auto",
    axis: Literal["x", "y", "z"] = "z",
    bins: tuple[int, int] = (72, 36),
    ax: Axes | None = None,
    cmap: str = "viridis",
    figsize: tuple[float, float] = (8.0, 4.5),
) -> Figure:
    """Distribution of view directions on a Mollweide map.

    The view direction of a particle is its reference's ``axis`` (z by default) rotated
    into the tomogram (the third column of the rotation matrix). Longitude is its
    azimuth in the tomogram's xy plane from +x towards +y; latitude its elevation above
    that plane (+90° is along the tomogram's +z, the beam at zero tilt).

    Large sets are binned with numpy in equal-area bins (a streaming reduction over
    the chunks of a dask set: millions of particles plot in seconds); small sets are
    drawn point by point.

    Parameters
    ----------
    poses
        A PoseSet.
    kind
        ``"histogram"`` (particles per equal-area bin, with a colour bar), ``"scatter"``
        (one dot per particle), or ``"auto"``: scatter up to 2,000 particles.
    axis
        Reference axis to follow: ``"x"``, ``"y"`` or ``"z"``.
    bins
        Bins in longitude and latitude, see :func:`orientation_histogram`.
    ax
        A Mollweide axes (``projection="mollweide"``) to draw into; a new figure when None.
    cmap
        Colormap of the histogram.
    figsize
        Size in inches of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        With ``kind="histogram"``, the axes hold one QuadMesh whose array sums to the
        number of particles (plus a colour-bar axes); with ``"scatter"``, one line with
        one point per particle.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> from scipy.spatial.transform import Rotation
    >>> import cryoxr
    >>> poses = cryoxr.make_poseset(np.zeros((3000, 3)), orientation=Rotation.random(3000, random_state=0),
    ...                             experiment_id="TS_01", pixel_spacing=1.0)
    >>> fig = plot_orientations(poses)
    >>> int(fig.axes[0].collections[0].get_array().sum())
    3000
    >>> plt.close(fig)
    """
    validate_poseset(poses, check_values=False)
    if kind not in ("auto", "histogram", "scatter"):
        raise InvalidValueError(
            f"plot_orientations: kind must be 'auto', 'histogram' or 'scatter', found {kind!r}"
        )
    if axis not in UNIT_VECTORS:
        raise InvalidValueError(f"plot_orientations: axis must be 'x', 'y' or 'z', found {axis!r}")
    n = int(poses.sizes["particle"])
    if kind == "auto":
        kind = "scatter" if n <= SCATTER_MAX else "histogram"
    if ax is None:
        fig = _new_figure(None, figsize)
        ax = fig.add_subplot(projection="mollweide")
    elif getattr(ax, "name", None) != "mollweide":
        raise InvalidValueError(
            "plot_orientations: ax must be a Mollweide axes (fig.add_subplot(projection='mollweide')), "
            f"found projection {getattr(ax, 'name', None)!r}"
        )
    figure: Figure = ax.figure  # type: ignore[assignment]
    if kind == "histogram":
        counts, lon_edges, lat_edges = orientation_histogram(poses, bins=bins, axis=axis)
        mesh = ax.pcolormesh(lon_edges, lat_edges, counts.T, cmap=cmap, shading="flat", rasterized=True)
        bar = figure.colorbar(mesh, ax=ax, orientation="horizontal", shrink=0.6, pad=0.08)
        bar.set_label("particles per bin (equal-area bins)")
    elif n:
        quats = np.asarray(poses["orientation"].values)
        lon, lat = _lon_lat(quats, axis)
        ax.plot(lon, lat, linestyle="none", marker=".", markersize=3, alpha=0.6, color="tab:blue")
    else:
        ax.plot([], [], linestyle="none", marker=".")
    from matplotlib import patheffects

    ax.grid(True, alpha=0.4)
    ax.set_xticks(np.radians([-120, -60, 0, 60, 120]))
    halo: list[patheffects.AbstractPathEffect] = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    for label in ax.get_xticklabels():  # longitude labels sit on the map: keep them legible
        label.set_path_effects(halo)
        label.set_fontsize(8)
    ax.set_xlabel("longitude: azimuth from +x towards +y")
    ax.set_ylabel("latitude: elevation above xy")
    eids = poses.attrs.get("experiment_id") if "experiment_id" not in poses.coords else None
    where = f"{eids}, " if eids else ""
    ax.set_title(f"{where}reference {axis} axis in the tomogram, N = {n:,}", pad=14)
    return figure
