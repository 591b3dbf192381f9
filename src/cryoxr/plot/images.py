"""Image figures: orthogonal slices of a tomogram, projected particles on a tilt image.

Both read only what they draw (three slices, one tilt image and one tilt's positions)
in one dask compute; axes are in Å with a scale bar.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import xarray as xr

from cryoxr.errors import InvalidValueError
from cryoxr.field_of_view import in_field_of_view
from cryoxr.image import Image, validate_image
from cryoxr.plot._common import _add_scale_bar, _contrast, _edges, _new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_orthoslices", "plot_projected"]

#: colours of particles inside / outside the field of view (colour-blind safe pair)
IN_VIEW_COLOR = "#33ccff"
OUT_OF_VIEW_COLOR = "#ff7f0e"


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
    title: str | None = None,
    region: tuple[float, float, float, float] | None = None,
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
    title
        Axes title; default ``"<experiment>, image <index>"``. Say what is drawn when
        ``projected`` is a sample of a larger set, and the tilt angle when known.
    region
        ``(x_min, x_max, y_min, y_max)`` in Å to show (a zoom); the scale bar fits it.
        Default: the whole tilt image.

    Returns
    -------
    matplotlib.figure.Figure
        The figure of the axes; on the axes, one image and two lines (``in view``,
        ``out of view``) whose data are the drawn particles, in Å.

    Examples
    --------
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
    markers: list[tuple[str, np.ndarray, dict[str, Any]]] = [
        ("in view", mask, {"marker": "o", "markerfacecolor": "none", "markeredgecolor": IN_VIEW_COLOR}),
        ("out of view", ~mask, {"marker": "x", "markeredgewidth": 1.8, "color": OUT_OF_VIEW_COLOR}),
    ]
    for name, selected, style in markers:  # one line each: in view first, then out of view
        shown = xy[selected & finite]
        ax.plot(
            shown[:, 0],
            shown[:, 1],
            linestyle="none",
            markersize=marker_size,
            label=f"{name} ({len(shown)})",
            **style,
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
    ax.set_title(title if title is not None else f"{eid}, image {image}")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    span = x_edges[1] - x_edges[0]
    if region is not None:
        ax.set_xlim(region[0], region[1])
        ax.set_ylim(region[2], region[3])
        span = region[1] - region[0]
    _add_scale_bar(ax, span, scale_bar)
    figure: Figure = ax.figure  # type: ignore[assignment]
    return figure
