"""Matplotlib figures of tomograms, projected particles, orientations and tilt schemes.

matplotlib is an optional extra (``pip install 'cryoxr[plot]'``): this module imports it
inside each function, so ``import cryoxr.plot`` works without it and a call raises
:class:`MissingDependencyError` (a :class:`~cryoxr.errors.CryoxrError` and an
``ImportError``) when it is missing.

Every function **returns the** :class:`matplotlib.figure.Figure` it drew on; its axes are
``fig.axes``. Single-panel plots (:func:`plot_projected`, :func:`plot_orientations`) take
an ``ax=`` to draw into an existing axes (the figure returned is ``ax.figure``);
multi-panel plots (:func:`plot_orthoslices`, :func:`plot_tilt_scheme`) take a ``fig=``
to fill. Without either, a new pyplot figure is created (close it with
``plt.close(fig)``).

Each function computes only what it draws: three slices of a lazy tomogram, one tilt
image, one streaming histogram of the orientations -- never a whole volume or set.

Units: image axes are in Å (the coords of the data), with a scale bar; shifts of a
projection model are in pixels of its tilt images, as in the model.

Examples
--------
>>> import matplotlib
>>> matplotlib.use("Agg")
>>> import matplotlib.pyplot as plt
>>> import numpy as np
>>> import cryoxr
>>> from cryoxr.plot import plot_orthoslices
>>> tomo = cryoxr.Tomogram.from_array(np.random.default_rng(0).normal(size=(20, 40, 50)),
...                                   pixel_spacing=10.0, experiment_id="TS_01")
>>> fig = plot_orthoslices(tomo)
>>> [ax.get_xlabel() for ax in fig.axes]
['x (Å)', 'z (Å)', 'x (Å)']
>>> plt.close(fig)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from scipy.spatial.transform import Rotation

from cryoxr.errors import InvalidValueError, MissingDependencyError
from cryoxr.field_of_view import in_field_of_view
from cryoxr.image import Image, validate_image
from cryoxr.poseset import validate_poseset
from cryoxr.projection_model import PMDL, validate_projection_model

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "MissingDependencyError",
    "orientation_histogram",
    "plot_orientations",
    "plot_orthoslices",
    "plot_projected",
    "plot_tilt_scheme",
]

#: particles up to which ``plot_orientations(kind="auto")`` draws every point
SCATTER_MAX = 2000
#: colours of particles inside / outside the field of view (colour-blind safe pair)
IN_VIEW_COLOR = "#33ccff"
OUT_OF_VIEW_COLOR = "#ff7f0e"
UNIT_VECTORS = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}


def _pyplot() -> Any:
    """Import matplotlib.pyplot, or explain how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise MissingDependencyError(
            "cryoxr.plot needs matplotlib, which is not installed: pip install 'cryoxr[plot]'"
        ) from err
    return plt


# -- helpers ---------------------------------------------------------------------------


def _nice_length(span: float) -> float:
    """A 1-2-5 length close to a fifth of ``span``."""
    target = span / 5.0
    if not target > 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(target))
    for step in (5.0, 2.0, 1.0):
        if step * power <= target:
            return step * power
    return power


def _length_label(angstrom: float) -> str:
    """``500 Å`` -> ``50 nm``; lengths below 1 nm stay in Å."""
    if angstrom >= 10.0:
        return f"{angstrom / 10.0:g} nm"
    return f"{angstrom:g} Å"


def _add_scale_bar(ax: Axes, span: float, scale_bar: float | bool) -> None:
    """An Å scale bar in the lower right corner of ``ax`` (white on a dark box)."""
    if scale_bar is False:
        return
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = _nice_length(span) if scale_bar is True else float(scale_bar)
    if not (math.isfinite(length) and length > 0):
        raise InvalidValueError(f"scale_bar must be True, False or a length > 0 in Å, found {scale_bar!r}")
    bar = AnchoredSizeBar(
        ax.transData,
        length,
        _length_label(length),
        "lower right",
        pad=0.4,
        color="white",
        frameon=False,
        size_vertical=span / 150.0,
        label_top=True,
        fontproperties={"size": 9, "weight": "bold"},
    )
    ax.add_artist(bar)


def _edges(coord: np.ndarray, spacing: float) -> tuple[float, float]:
    """Outer pixel edges of a coordinate, in Å: ``n * spacing`` apart."""
    return float(coord[0]) - spacing / 2.0, float(coord[-1]) + spacing / 2.0


def _contrast(slices: list[np.ndarray], percentiles: tuple[float, float]) -> tuple[float, float]:
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in slices])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, percentiles)
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def _new_figure(fig: Figure | None, figsize: tuple[float, float]) -> Figure:
    if fig is not None:
        return fig
    return _pyplot().figure(figsize=figsize, layout="constrained")


# -- orthogonal slices ---------------------------------------------------------------


def plot_orthoslices(
    tomogram: Image | xr.DataArray,
    *,
    center: tuple[float, float, float] | None = None,
    fig: Figure | None = None,
    cmap: str = "gray",
    percentiles: tuple[float, float] = (0.5, 99.5),
    scale_bar: float | bool = True,
    crosshair: bool = True,
    figsize: tuple[float, float] = (8.0, 7.0),
) -> Figure:
    """Three orthogonal slices of a tomogram through one point, in Å.

    The XY slice sits top left, the ZY slice (z horizontal) to its right sharing y, the
    XZ slice (z vertical) below it sharing x; panel sizes follow the volume's extent in
    Å, so distances read the same in every panel. y and z increase upwards (as in IMOD).
    Only the three slices are read (one dask compute), never the whole volume.

    Parameters
    ----------
    tomogram
        A :class:`~cryoxr.Tomogram` (or a 3D image DataArray), lazy or not.
    center
        The point ``(x, y, z)`` in Å (the tomogram's coords); the nearest voxel's slices
        are drawn. Default: the middle of the volume.
    fig
        A figure to draw into (it should be empty); a new pyplot figure when None.
    cmap
        Colormap of the densities.
    percentiles
        Grey-level limits, as percentiles of the drawn voxels.
    scale_bar
        True for an automatic scale bar on the XY panel, False for none, or its length in Å.
    crosshair
        Mark the slice positions with thin lines.
    figsize
        Size in inches of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        Axes in ``fig.axes``: ``[xy, zy, xz]``; each has one image artist whose extent
        is the volume's extent in Å (pixel edges, ``n * pixel_spacing`` wide).

    Raises
    ------
    InvalidValueError
        A centre outside the volume.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> import cryoxr
    >>> tomo = cryoxr.Tomogram.from_array(np.zeros((10, 20, 30)), pixel_spacing=5.0,
    ...                                   experiment_id="TS_01")
    >>> fig = plot_orthoslices(tomo, center=(50.0, 20.0, 25.0))
    >>> [float(v) for v in fig.axes[0].images[0].get_extent()]  # x and y edges, Å
    [-2.5, 147.5, -2.5, 97.5]
    >>> plt.close(fig)
    """
    data = validate_image(tomogram, ndim=3, stack=False)
    eid = str(data.attrs["experiment_id"])
    spacing = float(data.attrs["pixel_spacing"])
    coords = {d: np.asarray(data.coords[d].values) for d in ("x", "y", "z")}
    edges = {d: _edges(c, spacing) for d, c in coords.items()}
    if center is None:
        point = {d: float(c[len(c) // 2]) for d, c in coords.items()}
    else:
        values = np.asarray(center, dtype=np.float64).reshape(-1)
        if values.shape != (3,) or not np.isfinite(values).all():
            raise InvalidValueError(
                f"plot_orthoslices: center must be 3 finite numbers (x, y, z) in Å, found {center!r}"
            )
        point = dict(zip(("x", "y", "z"), values.tolist(), strict=True))
        for d, v in point.items():
            low, high = edges[d]
            if not low <= v <= high:
                raise InvalidValueError(
                    f"plot_orthoslices: center {d} = {v:g} Å lies outside tomogram {eid!r} "
                    f"({low:g} to {high:g} Å)"
                )
    index = {d: int(np.clip(np.rint((point[d] - c[0]) / spacing), 0, len(c) - 1)) for d, c in coords.items()}
    xy = data.isel(z=index["z"]).transpose("y", "x")
    zy = data.isel(x=index["x"]).transpose("y", "z")
    xz = data.isel(y=index["y"]).transpose("z", "x")
    # one compute for the three slices: only their chunks are read
    slices = [np.asarray(s) for s in dask.compute(xy.data, zy.data, xz.data)]
    vmin, vmax = _contrast(slices, percentiles)

    fig = _new_figure(fig, figsize)
    span = {d: edges[d][1] - edges[d][0] for d in edges}
    grid = fig.add_gridspec(2, 2, width_ratios=(span["x"], span["z"]), height_ratios=(span["y"], span["z"]))
    ax_xy = fig.add_subplot(grid[0, 0])
    ax_zy = fig.add_subplot(grid[0, 1], sharey=ax_xy)
    ax_xz = fig.add_subplot(grid[1, 0], sharex=ax_xy)
    style: dict[str, Any] = {"cmap": cmap, "vmin": vmin, "vmax": vmax, "origin": "lower", "aspect": "equal"}
    ax_xy.imshow(slices[0], extent=(*edges["x"], *edges["y"]), **style)
    ax_zy.imshow(slices[1], extent=(*edges["z"], *edges["y"]), **style)
    ax_xz.imshow(slices[2], extent=(*edges["x"], *edges["z"]), **style)
    at = {d: float(coords[d][index[d]]) for d in coords}
    ax_xy.set_title(f"XY at z = {at['z']:g} Å", fontsize=10)
    ax_zy.set_title(f"ZY at x = {at['x']:g} Å", fontsize=10)
    ax_xz.set_title(f"XZ at y = {at['y']:g} Å", fontsize=10)
    for ax, (across, up) in ((ax_xy, ("x", "y")), (ax_zy, ("z", "y")), (ax_xz, ("x", "z"))):
        ax.set_xlabel(f"{across} (Å)")
        ax.set_ylabel(f"{up} (Å)")
        if crosshair:
            line: dict[str, Any] = {"color": "yellow", "alpha": 0.5, "linewidth": 0.8}
            ax.axvline(at[across], **line)
            ax.axhline(at[up], **line)
    ax_zy.tick_params(labelleft=False)
    ax_zy.set_ylabel("")
    ax_xy.tick_params(labelbottom=False)
    ax_xy.set_xlabel("x (Å)", visible=False)
    _add_scale_bar(ax_xy, span["x"], scale_bar)
    fig.suptitle(f"{eid}: {spacing:g} Å/px, {data.sizes['x']} x {data.sizes['y']} x {data.sizes['z']} voxels")
    return fig


# -- projected particles on a tilt image ----------------------------------------------


def plot_projected(
    tilt_series: Image | xr.DataArray,
    projected: xr.DataArray,
    *,
    image: int = 0,
    image_shape: tuple[int, int] | None = None,
    margin: float = 0.0,
    ax: Axes | None = None,
    cmap: str = "gray",
    percentiles: tuple[float, float] = (0.5, 99.5),
    scale_bar: float | bool = True,
    marker_size: float = 6.0,
    figsize: tuple[float, float] = (7.0, 7.0),
) -> Figure:
    """One tilt image with the projected particles on it, coloured by field of view.

    Particles inside the field of view (:func:`cryoxr.in_field_of_view` with
    ``image_shape`` and ``margin``) are drawn as cyan circles, the others as orange
    crosses (tilts an experiment lacks, NaN, are not drawn); a dashed rectangle marks
    the region inside the margin. For a multi-experiment
    ``projected``, only the particles of the tilt series' experiment are drawn. Axes are
    in Å of the tilt series (positions in tilt pixels times the model's pixel spacing),
    y upwards; one dask compute reads the one tilt image and the one tilt's positions.

    Parameters
    ----------
    tilt_series
        A stack :class:`~cryoxr.Image` (dims ``("image", "y", "x")``), or its DataArray.
    projected
        Output of :func:`cryoxr.project`, in tilt-image pixels.
    image
        Index of the tilt to draw (along ``image`` of both).
    image_shape
        ``(ny, nx)`` of the tilt images in the pixels of ``projected``; default the
        tilt series' shape (required when its pixel spacing differs from the model's,
        e.g. a binned tilt series).
    margin
        Pixels a particle must stay inside the border to count as in view.
    ax
        Axes to draw into; a new figure when None.
    cmap, percentiles
        Colormap and grey-level limits (percentiles of the tilt image).
    scale_bar
        True for an automatic scale bar, False for none, or its length in Å.
    marker_size
        Marker size in points.
    figsize
        Size in inches of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The figure of the axes; on the axes, one image and two lines (``in view``,
        ``out of view``) whose data are the drawn particles, in Å.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> import cryoxr
    >>> ts = cryoxr.Image.from_array(np.zeros((2, 32, 32)), pixel_spacing=2.0,
    ...                              experiment_id="TS_01", stack=True)
    >>> poses = cryoxr.make_poseset([[16.0, 16, 8], [31, 16, 8]], experiment_id="TS_01",
    ...                             pixel_spacing=2.0)
    >>> model = cryoxr.make_projection_model(rotation_y=[0, 60], experiment_id="TS_01",
    ...                                      pixel_spacing=2.0)
    >>> xy = cryoxr.project(poses, model, tomogram_dimensions=(32, 32, 16),
    ...                     tilt_image_center=(16, 16))
    >>> fig = plot_projected(ts, xy, image=0, margin=2)
    >>> [(line.get_label(), len(line.get_xdata())) for line in fig.axes[0].lines]
    [('in view (1)', 1), ('out of view (1)', 1)]
    >>> plt.close(fig)
    """
    data = validate_image(tilt_series, stack=True)
    if not isinstance(projected, xr.DataArray) or projected.dims != ("particle", "image", "axis"):
        raise InvalidValueError(
            "plot_projected: projected must be the DataArray of cryoxr.project, dims "
            f"('particle', 'image', 'axis'), found {getattr(projected, 'dims', type(projected).__name__)}"
        )
    eid = str(data.attrs["experiment_id"])
    n_images = min(data.sizes["image"], projected.sizes["image"])
    if not (isinstance(image, int | np.integer) and 0 <= image < n_images):
        raise InvalidValueError(
            f"plot_projected: image must be an index in [0, {n_images - 1}] (tilt series {eid!r} has "
            f"{data.sizes['image']} images, projected {projected.sizes['image']}), found {image!r}"
        )
    spacing = float(data.attrs["pixel_spacing"])
    model_spacing = float(projected.attrs.get("pixel_spacing", spacing))
    if image_shape is None:
        if not math.isclose(model_spacing, spacing, rel_tol=1e-6):
            raise InvalidValueError(
                f"plot_projected: the tilt series {eid!r} has {spacing:g} Å/px, the projected positions "
                f"{model_spacing:g} Å/px: pass image_shape=(ny, nx) in pixels of the projection model"
            )
        image_shape = (data.sizes["y"], data.sizes["x"])
    if "experiment_id" in projected.coords:
        ids = np.asarray(projected.coords["experiment_id"].values)
        mine = np.flatnonzero(ids == eid)
        if mine.size == 0:
            raise InvalidValueError(
                f"plot_projected: no projected particle belongs to experiment {eid!r} "
                f"(found {sorted(set(ids.tolist()))[:5]})"
            )
        projected = projected.isel(particle=mine)
    one_tilt = projected.isel(image=slice(image, image + 1))
    inside = in_field_of_view(one_tilt, image_shape=image_shape, margin=margin)
    pixels, xy, mask = dask.compute(data.isel(image=image).data, one_tilt.data, inside.data)
    xy = np.asarray(xy)[:, 0, :] * model_spacing
    mask = np.asarray(mask)[:, 0]
    finite = np.isfinite(xy).all(axis=1)
    vmin, vmax = _contrast([np.asarray(pixels)], percentiles)

    if ax is None:
        fig = _new_figure(None, figsize)
        ax = fig.add_subplot()
    x_edges = _edges(np.asarray(data.coords["x"].values), spacing)
    y_edges = _edges(np.asarray(data.coords["y"].values), spacing)
    ax.imshow(
        np.asarray(pixels),
        extent=(*x_edges, *y_edges),
        origin="lower",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        aspect="equal",
    )
    shown_in = xy[mask & finite]
    shown_out = xy[~mask & finite]
    ax.plot(
        shown_in[:, 0],
        shown_in[:, 1],
        linestyle="none",
        marker="o",
        markersize=marker_size,
        markerfacecolor="none",
        markeredgecolor=IN_VIEW_COLOR,
        label=f"in view ({len(shown_in)})",
    )
    ax.plot(
        shown_out[:, 0],
        shown_out[:, 1],
        linestyle="none",
        marker="x",
        markersize=marker_size,
        markeredgewidth=1.8,
        color=OUT_OF_VIEW_COLOR,
        label=f"out of view ({len(shown_out)})",
    )
    if margin:
        from matplotlib.patches import Rectangle

        # the region counted as in view: pixel centres [margin, n - 1 - margin]
        ny, nx = (float(v) for v in image_shape)
        ax.add_patch(
            Rectangle(
                (margin * model_spacing, margin * model_spacing),
                (nx - 1 - 2 * margin) * model_spacing,
                (ny - 1 - 2 * margin) * model_spacing,
                fill=False,
                linestyle="--",
                linewidth=1.0,
                edgecolor="white",
                alpha=0.7,
                label=f"margin {margin:g} px",
            )
        )
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_title(f"{eid}, image {image}")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    _add_scale_bar(ax, x_edges[1] - x_edges[0], scale_bar)
    figure: Figure = ax.figure  # type: ignore[assignment]
    return figure


# -- orientation distribution -----------------------------------------------------------


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
    >>> import matplotlib
    >>> matplotlib.use("Agg")
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


# -- tilt scheme --------------------------------------------------------------------------


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
    >>> import matplotlib
    >>> matplotlib.use("Agg")
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
