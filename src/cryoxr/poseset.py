"""Particle poses as an :class:`xarray.Dataset` that follows a schema.

A PoseSet is a plain Dataset (``PoseSet`` is a type alias, never a subclass) with

- dims ``particle`` (N), ``axis`` (coords ``x y z``), ``quaternion`` (coords ``x y z w``);
- ``position`` (particle, axis) float64 pixels, centre of the first pixel = 0;
- ``shift`` (particle, axis) float64 pixels, additive: ``position + shift`` is the particle;
- ``orientation`` (particle, quaternion) float64 unit quaternions (scalar last, as scipy)
  of the rotation taking the reference's basis vectors into the tomogram frame;
- ``experiment_id``: a str attr, or a str coordinate on ``particle`` for multi-tomogram sets;
- attrs ``pixel_spacing`` (Å per pixel of ``position``) and ``source``;
- any other per-particle column as a data variable on ``particle``; text as numpy's
  variable-width :data:`TEXT_DTYPE` (``experiment_id`` stays fixed-width ``<U``).

Examples
--------
>>> import numpy as np
>>> from cryoxr import make_poseset
>>> ds = make_poseset(np.zeros((3, 3)), experiment_id="TS_01", pixel_spacing=1.35)
>>> dict(ds.sizes)
{'particle': 3, 'axis': 3, 'quaternion': 4}
>>> ds.orientation.values[0].tolist()
[0.0, 0.0, 0.0, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy.spatial.transform import Rotation

from cryoxr.errors import InvalidValueError, SchemaError

__all__ = [
    "AXIS",
    "QUATERNION",
    "QUATERNION_TOLERANCE",
    "TEXT_DTYPE",
    "PoseSet",
    "absolute_position",
    "experiment_ids",
    "from_cryotypes",
    "make_poseset",
    "rescale",
    "rotation",
    "to_cryotypes",
    "validate_poseset",
]

PoseSet: TypeAlias = xr.Dataset
AXIS = ["x", "y", "z"]
QUATERNION = ["x", "y", "z", "w"]
#: how far |q| may be from 1 before a quaternion is rejected
QUATERNION_TOLERANCE = 1e-6
#: dtype of text data variables (``rlnImageName``, ...): numpy's variable-width strings,
#: 16 bytes a value (plus the text beyond 15 bytes) where ``<U`` takes 4 bytes per
#: character of the longest value. xarray 2026.9 cannot fill them with NaN: ``where``
#: and outer joins raise (pydata/xarray#10965); select with ``isel(particle=mask)``.
TEXT_DTYPE = np.dtypes.StringDType()
#: particles per chunk when a numpy-backed set is chunked without an explicit size
DEFAULT_PARTICLE_CHUNK = 100_000

ArrayInput: TypeAlias = Any  # numpy / dask / array-like


def _is_dask(x: Any) -> bool:
    return isinstance(x, da.Array)


def _as_float_array(value: ArrayInput, name: str) -> np.ndarray | da.Array:
    if _is_dask(value):
        return value.astype(np.float64)
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidValueError(
            f"make_poseset: {name} must be numeric, found {type(value).__name__}"
        ) from None


def _vectors(value: ArrayInput, name: str, n: int | None) -> np.ndarray | da.Array:
    arr = _as_float_array(value, name)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise InvalidValueError(
            f"make_poseset: {name} must have shape (N, 3) (or (N, 2) for 2D sets), found {tuple(arr.shape)}"
        )
    if n is not None and arr.shape[0] != n:
        raise InvalidValueError(
            f"make_poseset: {name} must have one row per particle ({n}), found {arr.shape[0]}"
        )
    if arr.shape[1] == 2:  # 2D sets: z = 0
        zeros = (da.zeros if _is_dask(arr) else np.zeros)((arr.shape[0], 1), dtype=np.float64)
        arr = (da.concatenate if _is_dask(arr) else np.concatenate)([arr, zeros], axis=1)
    return arr


def _matrices_to_quats(block: np.ndarray) -> np.ndarray:
    return np.asarray(Rotation.from_matrix(block).as_quat(), dtype=np.float64).reshape(-1, 4)


def _orientation(value: Any, n: int) -> np.ndarray | da.Array:
    if value is None:
        identity = np.zeros((n, 4))
        identity[:, 3] = 1.0
        return identity
    quats: np.ndarray | da.Array
    if isinstance(value, Rotation):
        quats = np.asarray(value.as_quat(), dtype=np.float64).reshape(-1, 4)
    else:
        quats = _as_float_array(value, "orientation")
        if quats.ndim == 3 and quats.shape[1:] == (3, 3):
            if isinstance(quats, da.Array):
                quats = quats.rechunk({1: 3, 2: 3}).map_blocks(
                    _matrices_to_quats, drop_axis=2, chunks=(quats.chunks[0], (4,)), dtype=np.float64
                )
            else:
                quats = _matrices_to_quats(quats)
        elif not (quats.ndim == 2 and quats.shape[1] == 4):
            raise InvalidValueError(
                "make_poseset: orientation must be a scipy Rotation, (N, 4) xyzw quaternions "
                f"or (N, 3, 3) matrices, found shape {tuple(quats.shape)}"
            )
    if quats.shape[0] != n:
        raise InvalidValueError(
            f"make_poseset: orientation must have one entry per particle ({n}), found {quats.shape[0]}"
        )
    return quats


def make_poseset(
    position: ArrayInput,
    *,
    shift: ArrayInput | None = None,
    orientation: Rotation | ArrayInput | None = None,
    experiment_id: str | Sequence[str] | np.ndarray,
    pixel_spacing: float,
    source: str | Path = "",
    extra: Mapping[str, ArrayInput] | None = None,
    chunks: int | None = None,
) -> xr.Dataset:
    """Build a PoseSet Dataset from arrays.

    Parameters
    ----------
    position
        (N, 3) xyz pixels (or (N, 2) for a 2D set, z = 0); numpy or dask.
    shift
        (N, 3) xyz pixels added to ``position``; zeros when None.
    orientation
        scipy ``Rotation`` of N rotations, (N, 4) xyzw quaternions or (N, 3, 3) matrices
        (reference basis -> tomogram); identity when None.
    experiment_id
        One str for the whole set, or N strs (a multi-tomogram set), kept as a coordinate
        on ``particle``.
    pixel_spacing
        Å per pixel of ``position`` and ``shift``.
    source
        Where the poses came from.
    extra
        Further per-particle columns (name -> (N,) array), kept as data variables.
    chunks
        Particles per chunk: the Dataset is chunked along ``particle``. Dask inputs keep
        their chunking when None.

    Returns
    -------
    xarray.Dataset
        The PoseSet. Numpy-backed sets are fully validated; dask-backed sets are checked
        for structure only (no compute) -- call :func:`validate_poseset` to check values.

    Raises
    ------
    InvalidValueError
        Shapes that disagree, NaN or infinite values, non-unit quaternions, bad metadata.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.spatial.transform import Rotation
    >>> ds = make_poseset(np.ones((2, 3)), orientation=Rotation.from_euler("z", [[0], [90]], degrees=True),
    ...                   experiment_id=["TS_01", "TS_02"], pixel_spacing=1.0, chunks=1)
    >>> ds.experiment_id.values.tolist(), ds.chunks["particle"]
    (['TS_01', 'TS_02'], (1, 1))
    """
    pos = _vectors(position, "position", None)
    n = int(pos.shape[0])
    if shift is None:
        # a lazy set stays lazy: no (N, 3) array of zeros in memory or in the graph
        sh = da.zeros_like(pos) if isinstance(pos, da.Array) else np.zeros((n, 3))
    else:
        sh = _vectors(shift, "shift", n)
    if orientation is None and isinstance(pos, da.Array):
        identity = da.zeros((n, 4), chunks=(pos.chunks[0], 4), dtype=np.float64)
        quats: np.ndarray | da.Array = identity + np.array([0.0, 0.0, 0.0, 1.0])
    else:
        quats = _orientation(orientation, n)
    data_vars: dict[str, Any] = {
        "position": (("particle", "axis"), pos),
        "shift": (("particle", "axis"), sh),
        "orientation": (("particle", "quaternion"), quats),
    }
    for name, column in (extra or {}).items():
        if name in data_vars or name in ("experiment_id", "particle", "axis", "quaternion"):
            raise InvalidValueError(f"make_poseset: extra column {name!r} clashes with the schema")
        col = column if _is_dask(column) else np.asarray(column)
        if col.dtype.kind == "U":
            col = col.astype(TEXT_DTYPE)
        if col.ndim != 1 or col.shape[0] != n:
            raise InvalidValueError(
                f"make_poseset: extra column {name!r} must have shape ({n},), found {tuple(col.shape)}"
            )
        data_vars[name] = ("particle", col)
    coords: dict[str, Any] = {"axis": AXIS, "quaternion": QUATERNION}
    attrs: dict[str, Any] = {"pixel_spacing": pixel_spacing, "source": str(source)}
    if isinstance(experiment_id, str):
        attrs["experiment_id"] = experiment_id
    else:
        ids = np.asarray(experiment_id)
        if ids.shape != (n,):
            raise InvalidValueError(
                f"make_poseset: experiment_id must be a str or {n} strs, found shape {ids.shape}"
            )
        if ids.dtype.kind == "T":  # numpy refuses astype(str) from StringDType
            ids = ids.astype(f"U{max(int(np.strings.str_len(ids).max(initial=0)), 1)}")
        elif ids.dtype.kind != "U":
            try:
                ids = ids.astype(str)
            except (TypeError, ValueError):
                raise InvalidValueError(
                    f"make_poseset: experiment_id must hold strs, found dtype {ids.dtype}"
                ) from None
        coords["experiment_id"] = ("particle", ids)
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    if chunks is not None:
        ds = ds.chunk({"particle": int(chunks)})
        if "experiment_id" in coords:
            # labels stay in memory: groupby, selection and projection need them eagerly
            ds = ds.assign_coords(experiment_id=coords["experiment_id"])
    is_lazy = any(_is_dask(v.data) for v in ds.data_vars.values())
    validate_poseset(ds, check_values=not is_lazy)
    return ds


def experiment_ids(ds: xr.Dataset) -> list[str]:
    """The experiment ids of a PoseSet, in order of first appearance.

    Examples
    --------
    >>> import numpy as np
    >>> experiment_ids(make_poseset(np.zeros((3, 3)), experiment_id=["b", "a", "b"], pixel_spacing=1))
    ['b', 'a']
    """
    if "experiment_id" in ds.coords:
        values = np.asarray(ds.coords["experiment_id"].values)
        _, first = np.unique(values, return_index=True)
        return [str(values[i]) for i in sorted(first)]
    return [str(ds.attrs["experiment_id"])]


def _bad_rows(block: np.ndarray, kind: str) -> np.ndarray:
    """Per-block (count, first local index) of rows that break the schema."""
    if kind == "finite":
        bad = ~np.isfinite(block).all(axis=1)
    else:
        norm = np.sqrt((block * block).sum(axis=1))
        bad = ~(np.abs(norm - 1.0) <= QUATERNION_TOLERANCE)
    count = int(bad.sum())
    first = int(np.argmax(bad)) if count else -1
    return np.array([count, first], dtype=np.int64)


def _bad_rows_block(block: np.ndarray, kind: str) -> np.ndarray:
    return _bad_rows(block, kind)[None, :]


def _check_values(ds: xr.Dataset) -> None:
    checks = [("position", "finite"), ("shift", "finite"), ("orientation", "unit")]
    results: list[Any] = []
    offsets: list[np.ndarray] = []
    for name, kind in checks:
        arr = ds[name].data
        if _is_dask(arr):
            arr = arr.rechunk({1: -1})
            results.append(
                arr.map_blocks(
                    _bad_rows_block,
                    kind,
                    drop_axis=1,
                    new_axis=1,
                    chunks=((1,) * arr.numblocks[0], (2,)),
                    dtype=np.int64,
                )
            )
            offsets.append(np.cumsum((0, *arr.chunks[0][:-1])))
        else:
            results.append(_bad_rows(np.asarray(arr), kind)[None, :])
            offsets.append(np.zeros(1, dtype=np.int64))
    # one compute for all three checks: a streaming reduction, never the whole set
    computed = dask.compute(*results)
    messages = {
        "finite": "must be finite (no NaN or inf)",
        "unit": f"must be unit quaternions (| |q| - 1 | <= {QUATERNION_TOLERANCE})",
    }
    for (name, kind), per_block, offset in zip(checks, computed, offsets, strict=True):
        per_block = np.asarray(per_block).reshape(-1, 2)
        total = int(per_block[:, 0].sum())
        if total:
            block = int(np.argmax(per_block[:, 0] > 0))
            first = int(offset[block] + per_block[block, 1])
            raise InvalidValueError(
                f"PoseSet: {name} {messages[kind]}; {total} bad row(s), first at particle {first}"
            )


def validate_poseset(ds: xr.Dataset, *, check_values: bool = True) -> xr.Dataset:
    """Check that a Dataset follows the PoseSet schema.

    Structure (dims, coords, dtypes, attrs) is checked without touching data. With
    ``check_values``, positions and shifts must be finite and orientations unit
    quaternions; for a dask-backed set this runs **one** streaming compute of a
    per-chunk reduction (two integers per chunk), never loading the set.

    Parameters
    ----------
    ds
        The Dataset to check.
    check_values
        Also check the values (see above).

    Returns
    -------
    xarray.Dataset
        ``ds``, unchanged.

    Raises
    ------
    SchemaError
        Missing variables, dims or attrs.
    InvalidValueError
        Bad values or metadata.

    Examples
    --------
    >>> import numpy as np
    >>> ds = make_poseset(np.zeros((2, 3)), experiment_id="t", pixel_spacing=1.0)
    >>> validate_poseset(ds.assign(position=ds.position * np.nan))
    Traceback (most recent call last):
    ...
    cryoxr.errors.InvalidValueError: PoseSet: position must be finite (no NaN or inf); \
2 bad row(s), first at particle 0
    """
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(f"PoseSet: expected an xarray.Dataset, found {type(ds).__name__}")
    expected = {
        "position": ("particle", "axis"),
        "shift": ("particle", "axis"),
        "orientation": ("particle", "quaternion"),
    }
    for name, dims in expected.items():
        if name not in ds.data_vars:
            raise SchemaError(f"PoseSet: data variable {name!r} is missing (found {list(ds.data_vars)})")
        if ds[name].dims != dims:
            raise SchemaError(f"PoseSet: {name} must have dims {dims}, found {ds[name].dims}")
        if ds[name].dtype != np.float64:
            raise SchemaError(f"PoseSet: {name} must be float64, found {ds[name].dtype}")
    for dim, labels in (("axis", AXIS), ("quaternion", QUATERNION)):
        if dim not in ds.coords or [str(v) for v in ds.coords[dim].values] != labels:
            found = None if dim not in ds.coords else list(ds.coords[dim].values)
            raise SchemaError(f"PoseSet: coordinate {dim!r} must be {labels}, found {found}")
    spacing = ds.attrs.get("pixel_spacing")
    try:
        ok = spacing is not None and math.isfinite(float(spacing)) and float(spacing) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidValueError(
            f"PoseSet: attr pixel_spacing must be a positive number of Å, found {spacing!r}"
        )
    if not isinstance(ds.attrs.get("source", ""), str | Path):
        raise InvalidValueError(f"PoseSet: attr source must be a str, found {ds.attrs['source']!r}")
    if "experiment_id" in ds.coords:
        ids = ds.coords["experiment_id"]
        if ids.dims != ("particle",) or ids.dtype.kind not in "UO":
            raise SchemaError(
                f"PoseSet: coordinate experiment_id must be strs on 'particle', found {ids.dims} {ids.dtype}"
            )
        values = np.asarray(ids.values)
        if values.size and (values == "").any():
            raise InvalidValueError(
                f"PoseSet: experiment_id must be non-empty, found '' at particle {int(np.argmax(values == ''))}"
            )
    else:
        eid = ds.attrs.get("experiment_id")
        if not isinstance(eid, str) or not eid:
            raise InvalidValueError(
                f"PoseSet: experiment_id must be a non-empty str attr or coordinate, found {eid!r}"
            )
    if check_values:
        _check_values(ds)
    return ds


def rotation(ds: xr.Dataset) -> Rotation:
    """The orientations as one scipy Rotation of N rotations (computes a dask set).

    Examples
    --------
    >>> import numpy as np
    >>> r = rotation(make_poseset(np.zeros((1, 3)), experiment_id="t", pixel_spacing=1))
    >>> r.as_matrix().round(6).tolist()
    [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]
    """
    return Rotation.from_quat(np.asarray(ds["orientation"].values).reshape(-1, 4))


def absolute_position(ds: xr.Dataset, *, unit: str = "pixel") -> xr.DataArray:
    """``position + shift`` (lazy for dask sets), in pixels or in Å (``unit="angstrom"``).

    Examples
    --------
    >>> import numpy as np
    >>> ds = make_poseset([[1.0, 2, 3]], shift=[[0.5, 0, -1]], experiment_id="t", pixel_spacing=2)
    >>> absolute_position(ds, unit="angstrom").values.tolist()
    [[3.0, 4.0, 4.0]]
    """
    total = ds["position"] + ds["shift"]
    if unit == "pixel":
        return total
    if unit == "angstrom":
        out = total * float(ds.attrs["pixel_spacing"])
        out.attrs["units"] = "angstrom"
        return out
    raise InvalidValueError(f"absolute_position: unit must be 'pixel' or 'angstrom', found {unit!r}")


def rescale(ds: xr.Dataset, pixel_spacing: float) -> xr.Dataset:
    """The same poses in pixels of another size (e.g. from a binned tomogram to bin 1).

    ``position`` and ``shift`` are multiplied by ``old_spacing / pixel_spacing`` (lazily
    for dask sets); positions keep the convention that the centre of the first pixel is 0.

    Examples
    --------
    >>> import numpy as np
    >>> ds = make_poseset([[10.0, 20.0, 5.0]], experiment_id="t", pixel_spacing=10.8)
    >>> rescale(ds, 5.4).position.values.tolist(), rescale(ds, 5.4).attrs["pixel_spacing"]
    ([[20.0, 40.0, 10.0]], 5.4)
    """
    old = float(ds.attrs["pixel_spacing"])
    try:
        new = float(pixel_spacing)
    except (TypeError, ValueError):
        new = float("nan")
    if not math.isfinite(new) or new <= 0:
        raise InvalidValueError(
            f"rescale: pixel_spacing must be a positive number of Å, found {pixel_spacing!r}"
        )
    ratio = old / new
    out = ds.assign(position=ds["position"] * ratio, shift=ds["shift"] * ratio)
    out.attrs = {**ds.attrs, "pixel_spacing": new}
    return out


def to_cryotypes(ds: xr.Dataset) -> Any:
    """Convert to ``cryotypes.poseset.PoseSet`` (one per experiment for a multi-experiment set).

    Computes a dask-backed set. Extra columns have no home in cryotypes and are dropped.

    Returns
    -------
    cryotypes.poseset.PoseSet or list of them
        A list (in order of first appearance) when ``experiment_id`` is a coordinate.
    """
    from cryotypes.poseset import PoseSet as CryotypesPoseSet  # optional dependency

    validate_poseset(ds, check_values=False)

    def one(sub: xr.Dataset, eid: str) -> Any:
        return CryotypesPoseSet(
            position=np.asarray(sub["position"].values),
            shift=np.asarray(sub["shift"].values),
            orientation=rotation(sub),
            experiment_id=eid,
            pixel_spacing=float(ds.attrs["pixel_spacing"]),
            source=str(ds.attrs.get("source", "")),
        )

    if "experiment_id" not in ds.coords:
        return one(ds, str(ds.attrs["experiment_id"]))
    ids = np.asarray(ds.coords["experiment_id"].values)
    return [one(ds.isel(particle=np.flatnonzero(ids == eid)), eid) for eid in experiment_ids(ds)]


def from_cryotypes(obj: Any | Sequence[Any], *, chunks: int | None = None) -> xr.Dataset:
    """Build a PoseSet from objects following the cryotypes PoseSetProtocol.

    Duck-typed (``position``, ``shift``, ``orientation``, ``experiment_id``,
    ``pixel_spacing``, ``source``), so cryotypes itself is not needed. A sequence of such
    objects (sharing one pixel spacing) becomes one multi-experiment set.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> import numpy as np
    >>> obj = SimpleNamespace(position=np.zeros((2, 3)), shift=None, orientation=None,
    ...                       experiment_id="t", pixel_spacing=1.0, source="")
    >>> from_cryotypes(obj).sizes["particle"]
    2
    """
    objs = list(obj) if isinstance(obj, Sequence) else [obj]
    if not objs:
        raise InvalidValueError("from_cryotypes: expected at least one PoseSet-like object, found none")
    fields = ("position", "shift", "orientation", "experiment_id", "pixel_spacing", "source")
    for o in objs:
        missing = [f for f in fields if not hasattr(o, f)]
        if missing:
            raise SchemaError(f"from_cryotypes: {type(o).__name__} lacks {missing} of the PoseSetProtocol")
    spacings = {float(o.pixel_spacing) for o in objs}
    if len(spacings) != 1:
        raise InvalidValueError(
            f"from_cryotypes: objects must share one pixel_spacing, found {sorted(spacings)}"
        )
    positions, shifts, quats, ids = [], [], [], []
    for o in objs:
        p = np.asarray(o.position, dtype=np.float64)
        p = p.reshape(-1, p.shape[-1]) if p.ndim == 2 else p
        positions.append(p)
        n = p.shape[0]
        shifts.append(np.zeros_like(p) if o.shift is None else np.asarray(o.shift, dtype=np.float64))
        quats.append(
            _orientation(o.orientation, n)
            if o.orientation is None or isinstance(o.orientation, Rotation)
            else np.asarray(o.orientation)
        )
        ids.extend([str(o.experiment_id)] * n)
    experiment: str | list[str] = str(objs[0].experiment_id) if len(objs) == 1 else ids
    return make_poseset(
        np.concatenate(positions),
        shift=np.concatenate(shifts),
        orientation=np.concatenate(quats),
        experiment_id=experiment,
        pixel_spacing=spacings.pop(),
        source=str(objs[0].source),
        chunks=chunks,
    )
