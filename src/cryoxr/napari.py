"""napari layer data for cryoxr objects, without importing napari.

:func:`to_napari` turns an image, a PoseSet or projected positions into a list of
napari *layer-data tuples* ``(data, kwargs, layer_type)``: what a napari reader plugin
returns, and what ``viewer._add_layer_from_data(*t)`` or ``napari.layers.Layer.create(*t)``
accept. napari is never imported, so the tuples are testable anywhere and work with
any napari version (only long-standing keyword arguments are used; checked with
``napari.layers.Layer.create`` on napari 0.9). Building the tuples computes nothing;
napari itself reads the plane it displays when the layer is created.

World coordinates are Å, for every layer: an image layer's ``scale`` is its pixel
spacing (1 along ``image``) and its ``translate`` its first coordinate, and a points
layer's ``scale`` matches the unit of its data, so tomograms, particles and their
orientations overlay in one viewer whatever their binning. Dims are in napari's order,
``z, y, x`` (PoseSet positions are stored ``x, y, z`` and are reversed).

- :class:`~cryoxr.Image` / image DataArray -> one ``"image"`` layer holding the data
  as it is (a lazy dask array stays lazy: nothing is computed).
- PoseSet -> per experiment (``by_experiment=True``) a ``"points"`` layer at
  ``position + shift`` and a ``"vectors"`` layer along each particle's rotated
  reference axis; ``features`` hold the extra per-particle columns (scores, classes),
  ``experiment_id`` and the particle's index in the set. One compute reads the set.
- projected positions (:func:`cryoxr.project`) -> a ``"points"`` layer in ``image, y,
  x`` that overlays the tilt-series image layer.
- a ProjectionModel has no layer: :class:`~cryoxr.errors.InvalidValueError`.

Examples
--------
>>> import numpy as np
>>> import cryoxr
>>> from cryoxr.napari import to_napari
>>> tomo = cryoxr.Tomogram.from_array(np.zeros((10, 20, 30), np.float32), pixel_spacing=5.0,
...                                   experiment_id="TS_01")
>>> poses = cryoxr.make_poseset([[3.0, 2.0, 1.0]], experiment_id="TS_01", pixel_spacing=5.0)
>>> [(t[1]["name"], t[2]) for t in to_napari([tomo, poses])]
[('TS_01', 'image'), ('TS_01 particles', 'points'), ('TS_01 orientations', 'vectors')]
>>> layers = to_napari(poses)
>>> layers[0][0].tolist(), layers[0][1]["scale"]   # zyx pixels, scaled to Å
([[1.0, 2.0, 3.0]], (5.0, 5.0, 5.0))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeAlias, TypedDict, Unpack

import dask
import numpy as np
import pandas as pd
import xarray as xr
from scipy.spatial.transform import Rotation

from cryoxr.errors import InvalidValueError
from cryoxr.image import Image, validate_image
from cryoxr.poseset import validate_poseset

__all__ = ["LayerDataTuple", "image_layer", "poseset_layers", "projected_layer", "to_napari"]

#: ``(data, kwargs, layer_type)``, as napari reader plugins return
LayerDataTuple: TypeAlias = tuple[Any, dict[str, Any], str]
Unit = Literal["pixel", "angstrom"]

SCHEMA_VARIABLES = ("position", "shift", "orientation")
UNIT_VECTORS = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}


def image_layer(
    image: Image | xr.DataArray, *, contrast_limits: tuple[float, float] | None = None
) -> LayerDataTuple:
    """One napari image layer for an image, a tomogram or a stack, without reading it.

    Parameters
    ----------
    image
        An :class:`~cryoxr.Image` (2D, 3D or stack) or an image DataArray.
    contrast_limits
        Grey-level limits to pass on; None lets napari choose.

    Returns
    -------
    tuple
        ``(data, kwargs, "image")``: ``data`` is the DataArray's array as it is (dask
        stays dask), dims in the image's order (``z, y, x`` or ``image, y, x``);
        ``kwargs`` hold ``name`` (the experiment id), ``scale`` (Å per pixel; 1 along
        ``image``), ``translate`` (the first coordinate, Å, so a crop stays in place),
        ``rgb=False``, ``multiscale=False`` and ``metadata`` (experiment_id,
        pixel_spacing, source, dims, units).

    Examples
    --------
    >>> import numpy as np
    >>> import cryoxr
    >>> ts = cryoxr.Image.from_array(np.zeros((3, 8, 8)), pixel_spacing=2.0,
    ...                              experiment_id="TS_01", stack=True)
    >>> data, kwargs, kind = image_layer(ts)
    >>> kind, kwargs["scale"], kwargs["metadata"]["dims"]
    ('image', (1.0, 2.0, 2.0), ('image', 'y', 'x'))
    """
    data = validate_image(image)
    spacing = float(data.attrs["pixel_spacing"])
    dims = tuple(str(d) for d in data.dims)
    scale = tuple(1.0 if d == "image" else spacing for d in dims)
    translate = tuple(0.0 if d == "image" else float(data.coords[d].values[0]) for d in dims)
    eid = str(data.attrs["experiment_id"])
    kwargs: dict[str, Any] = {
        "name": eid,
        "scale": scale,
        "translate": translate,
        "rgb": False,
        "multiscale": False,
        "metadata": {
            "experiment_id": eid,
            "pixel_spacing": spacing,
            "source": str(data.attrs.get("source", "")),
            "dims": dims,
            "units": tuple("index" if d == "image" else "angstrom" for d in dims),
        },
    }
    if contrast_limits is not None:
        kwargs["contrast_limits"] = tuple(float(v) for v in contrast_limits)
    return data.data, kwargs, "image"


def _features(ds: xr.Dataset, computed: dict[str, np.ndarray], ids: np.ndarray) -> pd.DataFrame:
    columns: dict[str, Any] = {"particle": np.arange(ds.sizes["particle"], dtype=np.int64)}
    columns["experiment_id"] = ids
    for name, values in computed.items():
        columns[name] = values
    return pd.DataFrame(columns)


def poseset_layers(
    poses: xr.Dataset,
    *,
    unit: Unit = "pixel",
    by_experiment: bool = True,
    point_size: float = 50.0,
    vectors: bool = True,
    vector_axis: Literal["x", "y", "z"] = "z",
    vector_length: float = 100.0,
) -> list[LayerDataTuple]:
    """napari points (and vectors) layers for a PoseSet, in ``z, y, x`` order.

    Points sit at ``position + shift``. With ``unit="pixel"`` the data are pixels of the
    poses and ``scale`` is their pixel spacing; with ``unit="angstrom"`` the data are Å
    and ``scale`` is 1. Either way world coordinates are Å, as for :func:`image_layer`,
    so a particle at voxel ``(x, y, z)`` lands on the image voxel ``[z, y, x]``.
    Reads the set with one compute.

    Parameters
    ----------
    poses
        A PoseSet, numpy- or dask-backed.
    unit
        ``"pixel"`` or ``"angstrom"``: the unit of the layer data (see above).
    by_experiment
        One points (and vectors) layer per experiment, named after it (in order of first
        appearance); else one layer for the whole set. ``experiment_id`` is a feature
        either way.
    point_size
        Point diameter in Å.
    vectors
        Also return a vectors layer along each particle's reference ``vector_axis``
        rotated into the tomogram (the orientation).
    vector_axis
        The reference axis drawn: ``"x"``, ``"y"`` or ``"z"``.
    vector_length
        Length of the vectors in Å.

    Returns
    -------
    list of tuple
        ``(points (N, 3), kwargs, "points")`` and, with ``vectors``,
        ``(vectors (N, 2, 3), kwargs, "vectors")`` (start and direction, zyx) per layer
        group. ``kwargs`` hold ``name`` (``"<experiment> particles"`` /
        ``"<experiment> orientations"``), ``scale``, ``size`` (points), ``features`` (a
        DataFrame: ``particle`` index in ``poses``, ``experiment_id`` and every extra
        per-particle column) and ``metadata`` (experiment_id, pixel_spacing, unit, source).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.spatial.transform import Rotation
    >>> import cryoxr
    >>> poses = cryoxr.make_poseset([[10.0, 20.0, 30.0]], orientation=Rotation.from_euler("y", [90], degrees=True),
    ...                             experiment_id="TS_01", pixel_spacing=2.0, extra={"score": [0.9]})
    >>> points, vecs = poseset_layers(poses, unit="angstrom", vector_length=10.0)
    >>> points[0].tolist(), points[1]["scale"], points[1]["features"]["score"].tolist()
    ([[60.0, 40.0, 20.0]], (1.0, 1.0, 1.0), [0.9])
    >>> vecs[0].round(6).tolist()   # reference z along the tomogram's x, 10 Å long
    [[[60.0, 40.0, 20.0], [0.0, 0.0, 10.0]]]
    """
    validate_poseset(poses, check_values=False)
    if unit not in ("pixel", "angstrom"):
        raise InvalidValueError(f"to_napari: unit must be 'pixel' or 'angstrom', found {unit!r}")
    if vector_axis not in UNIT_VECTORS:
        raise InvalidValueError(f"to_napari: vector_axis must be 'x', 'y' or 'z', found {vector_axis!r}")
    for name, value in (("point_size", point_size), ("vector_length", vector_length)):
        if not (np.isfinite(value) and value > 0):
            raise InvalidValueError(f"to_napari: {name} must be a positive number of Å, found {value!r}")
    spacing = float(poses.attrs["pixel_spacing"])
    per_unit = spacing if unit == "angstrom" else 1.0  # data units per pixel
    angstrom_per_data = 1.0 if unit == "angstrom" else spacing
    extras = [
        str(name)
        for name, var in poses.data_vars.items()
        if name not in SCHEMA_VARIABLES and var.dims == ("particle",)
    ]
    # one compute for everything the layers hold
    position, shift, quats, *extra_values = dask.compute(
        poses["position"].data,
        poses["shift"].data,
        poses["orientation"].data,
        *(poses[name].data for name in extras),
    )
    xyz = (np.asarray(position) + np.asarray(shift)) * per_unit
    zyx = np.ascontiguousarray(xyz[:, ::-1])
    n = zyx.shape[0]
    if "experiment_id" in poses.coords:
        ids = np.asarray(poses.coords["experiment_id"].values).astype(str)
    else:
        ids = np.full(n, str(poses.attrs["experiment_id"]))
    features = _features(poses, dict(zip(extras, map(np.asarray, extra_values), strict=True)), ids)
    if vectors:
        quats = np.asarray(quats).reshape(-1, 4)
        direction = (
            Rotation.from_quat(quats).apply(UNIT_VECTORS[vector_axis]).reshape(-1, 3)
            if n
            else np.zeros((0, 3))
        )
        arrows = np.stack([zyx, direction[:, ::-1] * (vector_length / angstrom_per_data)], axis=1)

    groups: list[tuple[str, np.ndarray | slice]] = []
    if by_experiment:
        _, first = np.unique(ids, return_index=True)
        groups = [(str(ids[i]), np.flatnonzero(ids == ids[i])) for i in sorted(first)]
    if not groups:  # one layer for the set (or an empty set: still one, empty, layer)
        unique = list(dict.fromkeys(ids.tolist())) or [str(poses.attrs.get("experiment_id", "particles"))]
        groups = [(unique[0] if len(unique) == 1 else "particles", slice(None))]
    scale = (angstrom_per_data,) * 3
    layers: list[LayerDataTuple] = []
    for label, rows in groups:
        metadata = {
            "experiment_id": label,
            "pixel_spacing": spacing,
            "unit": unit,
            "source": str(poses.attrs.get("source", "")),
        }
        sub_features = features.iloc[rows].reset_index(drop=True)
        name = label if label.endswith("particles") else f"{label} particles"
        points_kwargs: dict[str, Any] = {
            "name": name,
            "scale": scale,
            "size": point_size / angstrom_per_data,
            "features": sub_features,
            "metadata": metadata,
        }
        layers.append((zyx[rows], points_kwargs, "points"))
        if vectors:
            vectors_kwargs: dict[str, Any] = {
                "name": f"{label} orientations",
                "scale": scale,
                "edge_color": "orange",
                "features": sub_features.copy(),
                "metadata": {**metadata, "vector_axis": vector_axis, "vector_length": vector_length},
            }
            layers.append((arrows[rows], vectors_kwargs, "vectors"))
    return layers


def projected_layer(projected: xr.DataArray) -> LayerDataTuple:
    """A napari points layer of projected positions, over a tilt-series image layer.

    Every finite (particle, tilt) position becomes a point ``[image, y, x]`` in
    tilt-image pixels, with ``scale = (1, s, s)`` for the model's pixel spacing ``s``,
    so it overlays :func:`image_layer` of the tilt series (same world coordinates, Å).
    Computes ``projected``: meant for sets small enough to browse.

    Returns
    -------
    tuple
        ``(points (M, 3), kwargs, "points")``; ``features`` hold ``particle`` and
        ``image`` indices (and ``experiment_id`` when ``projected`` has it).

    Examples
    --------
    >>> import xarray as xr
    >>> xy = xr.DataArray([[[4.0, 3.0], [5.0, 3.0]]], dims=("particle", "image", "axis"),
    ...                   attrs={"pixel_spacing": 2.0})
    >>> data, kwargs, kind = projected_layer(xy)
    >>> data.tolist(), kwargs["scale"]
    ([[0.0, 3.0, 4.0], [1.0, 3.0, 5.0]], (1.0, 2.0, 2.0))
    """
    if not isinstance(projected, xr.DataArray) or projected.dims != ("particle", "image", "axis"):
        raise InvalidValueError(
            "to_napari: projected positions must have dims ('particle', 'image', 'axis'), "
            f"found {getattr(projected, 'dims', None)}"
        )
    if "pixel_spacing" not in projected.attrs:
        raise InvalidValueError(
            "to_napari: projected positions need attr pixel_spacing (Å per tilt-image pixel) to "
            "overlay a tilt series; cryoxr.project sets it when all experiments share one"
        )
    spacing = float(projected.attrs["pixel_spacing"])
    xy = np.asarray(projected.values, dtype=np.float64)
    n_particles, n_images = xy.shape[:2]
    particle, image = np.meshgrid(np.arange(n_particles), np.arange(n_images), indexing="ij")
    finite = np.isfinite(xy).all(axis=2)
    data = np.column_stack([image[finite], xy[finite][:, 1], xy[finite][:, 0]]).astype(np.float64)
    features: dict[str, Any] = {"particle": particle[finite], "image": image[finite]}
    if "experiment_id" in projected.coords:
        ids = np.asarray(projected.coords["experiment_id"].values).astype(str)
        features["experiment_id"] = ids[particle[finite]]
    kwargs: dict[str, Any] = {
        "name": "projected particles",
        "scale": (1.0, spacing, spacing),
        "features": pd.DataFrame(features),
        "metadata": {"pixel_spacing": spacing, "unit": "pixel"},
    }
    return data, kwargs, "points"


def _projection_model(obj: pd.DataFrame, *_: Any) -> list[LayerDataTuple]:
    raise InvalidValueError(
        "to_napari: a ProjectionModel (pandas DataFrame of tilt-series alignments) has no napari "
        "layer; project particles with cryoxr.project(poses, model, ...) and pass the result, "
        "or draw the model with cryoxr.plot.plot_tilt_scheme"
    )


class PoseSetLayerOptions(TypedDict, total=False):
    """The options of :func:`poseset_layers` that :func:`to_napari` passes on."""

    unit: Unit
    by_experiment: bool
    point_size: float
    vectors: bool
    vector_axis: Literal["x", "y", "z"]
    vector_length: float


def _image(
    obj: Image | xr.DataArray, contrast_limits: tuple[float, float] | None, options: PoseSetLayerOptions
) -> list[LayerDataTuple]:
    return [image_layer(obj, contrast_limits=contrast_limits)]


def _dataarray(
    obj: xr.DataArray, contrast_limits: tuple[float, float] | None, options: PoseSetLayerOptions
) -> list[LayerDataTuple]:
    if obj.dims == ("particle", "image", "axis"):
        return [projected_layer(obj)]
    return _image(obj, contrast_limits, options)


def _poseset(
    obj: xr.Dataset, contrast_limits: tuple[float, float] | None, options: PoseSetLayerOptions
) -> list[LayerDataTuple]:
    return poseset_layers(obj, **options)


#: what each kind of object becomes; the first matching type wins
CONVERTERS: tuple[tuple[type, Callable[..., list[LayerDataTuple]]], ...] = (
    (Image, _image),
    (xr.DataArray, _dataarray),
    (xr.Dataset, _poseset),
    (pd.DataFrame, _projection_model),
)


def to_napari(
    obj: Any,
    *,
    contrast_limits: tuple[float, float] | None = None,
    **options: Unpack[PoseSetLayerOptions],
) -> list[LayerDataTuple]:
    """napari layer-data tuples ``(data, kwargs, layer_type)`` for cryoxr objects.

    Parameters
    ----------
    obj
        An :class:`~cryoxr.Image` or image DataArray (-> :func:`image_layer`), a PoseSet
        (-> :func:`poseset_layers`), projected positions (-> :func:`projected_layer`), or
        a list of these (their layers, in order).
    contrast_limits
        Image option, see :func:`image_layer`.
    **options
        PoseSet options (``unit``, ``by_experiment``, ``point_size``, ``vectors``,
        ``vector_axis``, ``vector_length``), see :func:`poseset_layers`.

    Returns
    -------
    list of tuple
        Pass each to napari: ``for data, kwargs, kind in to_napari(obj):
        getattr(viewer, f"add_{kind}")(data, **kwargs)``.

    Raises
    ------
    InvalidValueError
        A ProjectionModel (it is not a layer), or an object of another type.

    Examples
    --------
    >>> import cryoxr
    >>> model = cryoxr.make_projection_model(experiment_id="TS_01", pixel_spacing=1.0)
    >>> to_napari(model)
    Traceback (most recent call last):
    ...
    cryoxr.errors.InvalidValueError: to_napari: a ProjectionModel (pandas DataFrame of tilt-series \
alignments) has no napari layer; ...
    """
    if isinstance(obj, list | tuple):
        return [
            layer for item in obj for layer in to_napari(item, contrast_limits=contrast_limits, **options)
        ]
    for kind, convert in CONVERTERS:
        if isinstance(obj, kind):
            return convert(obj, contrast_limits, options)
    raise InvalidValueError(
        "to_napari: expected an Image, an image DataArray, a PoseSet Dataset, projected positions "
        f"or a list of them, found {type(obj).__name__}"
    )
