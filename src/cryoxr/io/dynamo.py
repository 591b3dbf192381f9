"""Dynamo particle tables (``.tbl``) and tomogram maps (``.doc``) <-> PoseSet.

A ``.tbl`` is whitespace-separated numbers, one particle per row, at least 35 columns by
Dynamo's convention (cryoxr reads any row of 26 or more: enough for the geometry). Every
column is kept: geometry goes into the PoseSet's schema, every other column becomes a
data variable on ``particle`` named as in :data:`DYNAMO_COLUMNS` (unknown columns
``col<n>``), so writing back loses nothing.

Geometry (CONVENTIONS.md sections 6, 7 and the decisions table)::

    position    = (x, y, z) - origin_offset        # columns 24-26
    shift       = (dx, dy, dz)                     # columns 4-6
    orientation = Rotation.from_euler("zxz", [tdrot, tilt, narot], degrees=True).inv()
    experiment_id = tomogram_map[tomo] if a map is given, else str(tomo)   # column 20

``origin_offset`` is the keyword ``origin``: ``"none"`` (0, default: what dynamo2warp,
dynamo2relion and cryohub do, and what pairs with Warp/RELION), ``"corner"`` (0.5:
Dynamo's wiki reading of continuous corner-origin coordinates, as RELION's legacy
``dynamo_particle.cpp``) or ``"one_based"`` (1). Which one Dynamo itself uses is
**unresolved**; the default follows the converters users pair with Warp and RELION.

Examples
--------
>>> import tempfile, pathlib
>>> import numpy as np
>>> from cryoxr import make_poseset
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> poses = make_poseset([[10.0, 20.0, 30.0]], experiment_id=["TS_01"], pixel_spacing=1.35)
>>> write_dynamo_table(poses, folder / "p.tbl", tomogram_map=folder / "p.doc")
>>> (folder / "p.doc").read_text()
'1 TS_01\\n'
>>> back = read_dynamo_table(folder / "p.tbl", tomogram_map=folder / "p.doc")
>>> back.position.values.tolist(), back.experiment_id.values.tolist(), int(back.tomo[0])
([[10.0, 20.0, 30.0]], ['TS_01'], 1)
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import xarray as xr
from scipy.spatial.transform import Rotation

from cryoxr.errors import FormatError, InvalidValueError
from cryoxr.io._atomic import atomic_path, atomic_paths
from cryoxr.io.tables import data_row_line, read_numeric_table, read_text_lines
from cryoxr.poseset import experiment_ids, make_poseset, rotation, validate_poseset

__all__ = [
    "DYNAMO_COLUMNS",
    "DYNAMO_EULER_SEQUENCE",
    "ORIGIN_OFFSETS",
    "DynamoColumn",
    "read_dynamo_table",
    "read_tomogram_map",
    "write_dynamo_table",
    "write_tomogram_map",
]

PathLike = str | os.PathLike[str]
Origin = Literal["none", "corner", "one_based"]


class DynamoColumn(NamedTuple):
    """One column of a Dynamo table."""

    number: int  #: 1-based column number
    name: str  #: Dynamo's name, and the data variable's when not geometry
    dtype: type  #: int or float
    field: str  #: where it goes in a PoseSet
    default: float  #: value written when the PoseSet has nothing for it


def _c(
    number: int, name: str, dtype: type, field: str = "data variable", default: float = 0.0
) -> DynamoColumn:
    return DynamoColumn(number, name, dtype, field, default)


#: Dynamo's table convention (wiki "Table convention"; names as teamtomo dynamotable)
DYNAMO_COLUMNS: tuple[DynamoColumn, ...] = (
    _c(1, "tag", int, "data variable (default 1..N)"),
    _c(2, "aligned", int, default=1.0),
    _c(3, "averaged", int, default=1.0),
    _c(4, "dx", float, "shift x"),
    _c(5, "dy", float, "shift y"),
    _c(6, "dz", float, "shift z"),
    _c(7, "tdrot", float, "orientation (zxz extrinsic, inverted)"),
    _c(8, "tilt", float, "orientation (zxz extrinsic, inverted)"),
    _c(9, "narot", float, "orientation (zxz extrinsic, inverted)"),
    _c(10, "cc", float),
    _c(11, "cc2", float),
    _c(12, "cpu", int),
    _c(13, "ftype", int),
    _c(14, "ymintilt", float),
    _c(15, "ymaxtilt", float),
    _c(16, "xmintilt", float),
    _c(17, "xmaxtilt", float),
    _c(18, "fs1", float),
    _c(19, "fs2", float),
    _c(20, "tomo", int, "experiment_id (through the tomogram map) and data variable tomo"),
    _c(21, "reg", int),
    _c(22, "class", int),
    _c(23, "annotation", int),
    _c(24, "x", float, "position x (+ origin offset)"),
    _c(25, "y", float, "position y (+ origin offset)"),
    _c(26, "z", float, "position z (+ origin offset)"),
    _c(27, "dshift", float),
    _c(28, "daxis", float),
    _c(29, "dnarot", float),
    _c(30, "dcc", float),
    _c(31, "otag", int),
    _c(32, "npar", int),
    _c(33, "col33", float),
    _c(34, "ref", int),
    _c(35, "sref", int),
    _c(36, "apix", float, "data variable; pixel_spacing when uniform and > 0"),
    _c(37, "def", float),
    _c(38, "col38", float),
    _c(39, "col39", float),
    _c(40, "col40", float),
    _c(41, "eig1", float),
    _c(42, "eig2", float),
)
_BY_NAME = {c.name: c for c in DYNAMO_COLUMNS}
#: fewest columns cryoxr reads (through z) and writes (Dynamo's standard table)
MIN_READ_COLUMNS = 26
MIN_WRITE_COLUMNS = 36  # through apix (36), so the pixel size survives a round trip
#: scipy sequence of Dynamo's Euler angles; orientation = ``from_euler(...).inv()``
DYNAMO_EULER_SEQUENCE = "zxz"
#: keyword ``origin`` -> what is subtracted from table x, y, z to get cryoxr positions
ORIGIN_OFFSETS: dict[str, float] = {"none": 0.0, "corner": 0.5, "one_based": 1.0}
_GEOMETRY = ("dx", "dy", "dz", "tdrot", "tilt", "narot", "x", "y", "z")


def _column_name(index: int) -> str:
    return DYNAMO_COLUMNS[index].name if index < len(DYNAMO_COLUMNS) else f"col{index + 1}"


def _integral(values: np.ndarray) -> np.ndarray:
    """Where ``values`` are integers that int64 holds exactly (1e308 is integral, but no int64)."""
    return (values == np.round(values)) & (np.abs(values) < 2**53)


def _origin_offset(origin: str, where: str) -> float:
    if origin not in ORIGIN_OFFSETS:
        raise InvalidValueError(f"{where}: origin must be one of {sorted(ORIGIN_OFFSETS)}, found {origin!r}")
    return ORIGIN_OFFSETS[origin]


def read_tomogram_map(path: PathLike) -> dict[int, str]:
    """Read a Dynamo tomogram map (``.doc``): ``<number> <tomogram>`` per line.

    The tomogram entry is kept verbatim (a path or a name; inner spaces allowed).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> doc = pathlib.Path(tempfile.mkdtemp()) / "t.doc"
    >>> _ = doc.write_text("1 /data/TS 01.mrc\\n2 TS_02\\n")
    >>> read_tomogram_map(doc)
    {1: '/data/TS 01.mrc', 2: 'TS_02'}
    """
    p, lines = read_text_lines(path, what="Dynamo tomogram map (.doc)", allow_empty=True)
    mapping: dict[int, str] = {}
    for line_no, text in enumerate(lines, 1):
        if not text.strip():
            continue
        parts = text.strip().split(maxsplit=1)
        try:
            number = int(parts[0])
        except ValueError:
            raise FormatError(
                f"{p}, line {line_no}, column 1 (tomogram number): expected an integer, found {parts[0]!r}"
            ) from None
        if len(parts) < 2:
            raise FormatError(
                f"{p}, line {line_no}, column 2 (tomogram): expected a name or path, found nothing"
            )
        if number in mapping:
            raise FormatError(
                f"{p}, line {line_no}: expected each tomogram number once, found {number} again"
            )
        mapping[number] = parts[1]
    return mapping


def write_tomogram_map(mapping: Mapping[int, str], path: PathLike, *, overwrite: bool = False) -> None:
    """Write a Dynamo tomogram map (``.doc``), one ``<number> <tomogram>`` per line.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> doc = pathlib.Path(tempfile.mkdtemp()) / "t.doc"
    >>> write_tomogram_map({2: "TS_02", 1: "TS_01"}, doc)
    >>> doc.read_text()
    '1 TS_01\\n2 TS_02\\n'
    """
    text = _tomogram_map_text(mapping)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _tomogram_map_text(mapping: Mapping[int, str]) -> str:
    """The ``.doc`` content of a tomogram map, after checking every name."""
    for number, name in mapping.items():
        if (
            not isinstance(name, str)
            or not name.strip()
            or name != name.strip()
            or "\n" in name
            or "\r" in name
        ):
            raise InvalidValueError(
                f"write_tomogram_map: tomogram {number} must be a one-line name without surrounding "
                f"whitespace, found {name!r}"
            )
    return "".join(f"{int(k)} {mapping[k]}\n" for k in sorted(mapping))


def read_dynamo_table(
    tbl: PathLike,
    *,
    tomogram_map: PathLike | Mapping[int, str] | None = None,
    origin: Origin = "none",
    pixel_spacing: float | None = None,
    chunks: int | None = None,
) -> xr.Dataset:
    """Read a Dynamo table as a PoseSet, keeping every column.

    Parameters
    ----------
    tbl
        The ``.tbl`` file.
    tomogram_map
        A ``.doc`` file (or a ``{number: name}`` mapping) giving each ``tomo`` number's
        tomogram; its entries become the experiment ids. Without it the experiment id is
        the number as text (``"1"``). The numbers stay in data variable ``tomo``.
    origin
        How table ``x, y, z`` relate to cryoxr's positions (first pixel centre = 0):
        ``"none"`` (default, no offset), ``"corner"`` (subtract 0.5) or ``"one_based"``
        (subtract 1). See the module docstring: Dynamo's own choice is unresolved.
    pixel_spacing
        Å per pixel. None (default): the ``apix`` column when it is present, > 0 and the
        same for every particle, else 1.0.
    chunks
        Particles per chunk (see :func:`cryoxr.make_poseset`).

    Returns
    -------
    xarray.Dataset
        The PoseSet; ``experiment_id`` is a coordinate on ``particle``; attrs ``format``
        ``"dynamo"``, ``origin`` and ``n_columns``.

    Raises
    ------
    FormatError
        Fewer than 26 columns, ragged rows, text or NaN where numbers belong, an empty or
        non-UTF-8 file, or a ``tomo`` number missing from the map.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tbl = pathlib.Path(tempfile.mkdtemp()) / "p.tbl"
    >>> row = [0.0] * 35
    >>> row[0], row[6:9], row[19], row[23:26] = 7, [10, 20, 30], 3, [1, 2, 3]
    >>> _ = tbl.write_text(" ".join(map(str, row)) + "\\n")
    >>> ds = read_dynamo_table(tbl, origin="corner")
    >>> ds.position.values.tolist(), ds.experiment_id.values.tolist(), int(ds.tag[0])
    ([[0.5, 1.5, 2.5]], ['3'], 7)
    >>> ds.cryo.rotation.as_matrix().round(4)[0].tolist()
    [[0.7713, 0.6337, 0.0594], [-0.6131, 0.7146, 0.3368], [0.171, -0.2962, 0.9397]]
    """
    offset = _origin_offset(origin, "read_dynamo_table")
    path, table = read_numeric_table(
        tbl, names=_column_name, min_columns=MIN_READ_COLUMNS, what="Dynamo table (.tbl)", allow_empty=True
    )
    if table.shape[0] == 0:  # Dynamo writes a set of 0 particles as an empty file
        table = np.zeros((0, MIN_WRITE_COLUMNS))
    n, n_columns = table.shape
    col = {c.name: table[:, c.number - 1] for c in DYNAMO_COLUMNS if c.number <= n_columns}
    tomo = col["tomo"]
    if not _integral(tomo).all():
        row = int(np.argmax(~_integral(tomo)))
        line = data_row_line(path, row)  # the file's line, blank lines counted
        raise FormatError(
            f"{path}, line {line}, column 20 (tomo): expected an integer, found {float(tomo[row])!r}"
        )
    tomo_int = tomo.astype(np.int64)
    if tomogram_map is None:
        ids = tomo_int.astype(str)
    else:
        mapping = tomogram_map if isinstance(tomogram_map, Mapping) else read_tomogram_map(tomogram_map)
        missing = sorted(set(np.unique(tomo_int).tolist()) - set(mapping))
        if missing:
            row = int(np.argmax(np.isin(tomo_int, missing)))
            line = data_row_line(path, row)
            raise FormatError(
                f"{path}, line {line}, column 20 (tomo): expected a tomogram number of the map "
                f"{sorted(mapping)[:10]}, found {missing[0]}"
            )
        ids = np.asarray([mapping[int(t)] for t in tomo_int], dtype=str)
    if pixel_spacing is None:
        apix = col.get("apix")
        uniform = apix is not None and n > 0 and bool((apix == apix[0]).all()) and apix[0] > 0
        pixel_spacing = float(apix[0]) if uniform and apix is not None else 1.0
    extra: dict[str, np.ndarray] = {}
    for index in range(n_columns):
        name = _column_name(index)
        if name in _GEOMETRY:
            continue
        values = table[:, index]
        spec = _BY_NAME.get(name)
        if spec is not None and spec.dtype is int and _integral(values).all():
            extra[name] = values.astype(np.int64)
        else:
            extra[name] = values
    orientation = Rotation.from_euler(
        DYNAMO_EULER_SEQUENCE, np.stack([col["tdrot"], col["tilt"], col["narot"]], -1), degrees=True
    ).inv()
    ds = make_poseset(
        np.stack([col["x"], col["y"], col["z"]], -1) - offset,
        shift=np.stack([col["dx"], col["dy"], col["dz"]], -1),
        orientation=orientation,
        experiment_id=ids,
        pixel_spacing=pixel_spacing,
        source=str(path),
        extra=extra,
        chunks=chunks,
    )
    ds.attrs.update({"format": "dynamo", "origin": origin, "n_columns": int(n_columns)})
    return ds


def _as_dynamo_eulers(orientation: Rotation, n: int) -> np.ndarray:
    """(n, 3) tdrot, tilt, narot; at gimbal lock (tilt 0 or 180) narot = 0, the rotation exact."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Gimbal lock detected", category=UserWarning)
        return np.asarray(orientation.inv().as_euler(DYNAMO_EULER_SEQUENCE, degrees=True)).reshape(n, 3)


def _tomo_numbers(poses: xr.Dataset, where: str) -> tuple[np.ndarray, dict[int, str]]:
    """Per-particle tomo numbers and the number -> experiment id map."""
    n = poses.sizes["particle"]
    if "experiment_id" in poses.coords:
        ids = np.asarray(poses.coords["experiment_id"].values).astype(str)
    else:
        ids = np.full(n, str(poses.attrs["experiment_id"]))
    if "tomo" in poses.data_vars:
        numbers = np.asarray(poses["tomo"].values)
        if not np.array_equal(numbers, np.round(numbers)):
            raise InvalidValueError(f"{where}: data variable tomo must hold integers, found {numbers[:5]}")
        numbers = numbers.astype(np.int64)
    else:
        unique = experiment_ids(poses)
        # ASCII digits only: str.isdigit() also accepts '²', which int() refuses
        if all(re.fullmatch(r"[+-]?[0-9]+", u.strip()) for u in unique):
            numbers = np.asarray([int(i) for i in ids], dtype=np.int64)
        else:
            order = {eid: k + 1 for k, eid in enumerate(unique)}
            numbers = np.asarray([order[i] for i in ids], dtype=np.int64)
    pairs = pd.DataFrame({"tomo": numbers, "id": ids}).drop_duplicates()
    for key, other in (("tomo", "id"), ("id", "tomo")):
        clash = pairs[pairs.duplicated(key, keep=False)]
        if len(clash):
            raise InvalidValueError(
                f"{where}: each tomo number must belong to one experiment_id and back, found "
                f"{key} {clash[key].iloc[0]!r} with {other}s {sorted(map(str, clash[other]))}"
            )
    return numbers, dict(zip(pairs["tomo"].tolist(), pairs["id"].tolist(), strict=True))


def write_dynamo_table(
    poses: xr.Dataset,
    tbl: PathLike,
    *,
    tomogram_map: PathLike | None = None,
    origin: Origin = "none",
    overwrite: bool = False,
) -> None:
    """Write a PoseSet as a Dynamo table (and its tomogram map).

    Geometry is converted back exactly (see the module docstring); every data variable
    named after a Dynamo column is written in its column, the rest take Dynamo's
    defaults (tag 1..N, aligned 1, averaged 1, apix = pixel_spacing, others 0). Data
    variables with no Dynamo column (RELION's extra labels, say) are not written. At least
    36 columns (through ``apix``) are written, more when the PoseSet holds later columns. Numbers are
    written with full float64 precision.

    Parameters
    ----------
    poses
        The PoseSet (dask-backed sets are computed).
    tbl
        Output ``.tbl`` path.
    tomogram_map
        Output ``.doc`` path for the tomo number -> experiment id map. Numbers come
        from data variable ``tomo`` when present, else from experiment ids that are
        integers, else 1, 2, ... in order of first appearance -- then the map is
        required, or the tomogram names would be lost.
    origin
        As in :func:`read_dynamo_table`.
    overwrite
        Replace existing files; otherwise raise
        :class:`~cryoxr.errors.FileExistsNoOverwriteError` before writing anything.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from cryoxr import make_poseset
    >>> tbl = pathlib.Path(tempfile.mkdtemp()) / "p.tbl"
    >>> write_dynamo_table(make_poseset([[1.0, 2, 3]], experiment_id="4", pixel_spacing=2.0), tbl)
    >>> tbl.read_text().split()[19:26]
    ['4', '0', '0', '0', '1.0', '2.0', '3.0']
    """
    offset = _origin_offset(origin, "write_dynamo_table")
    validate_poseset(poses)
    n = poses.sizes["particle"]
    numbers, mapping = _tomo_numbers(poses, "write_dynamo_table")
    if tomogram_map is None and any(str(k) != v for k, v in mapping.items()):
        names = sorted(v for k, v in mapping.items() if str(k) != v)[:5]
        raise InvalidValueError(
            f"write_dynamo_table: experiment ids {names} are not the tomo numbers; pass "
            "tomogram_map=<path.doc> to keep the number -> name map"
        )
    position = np.asarray(poses["position"].values) + offset
    shift = np.asarray(poses["shift"].values)
    eulers = _as_dynamo_eulers(rotation(poses), n)
    geometry = {
        "dx": shift[:, 0],
        "dy": shift[:, 1],
        "dz": shift[:, 2],
        "tdrot": eulers[:, 0],
        "tilt": eulers[:, 1],
        "narot": eulers[:, 2],
        "x": position[:, 0],
        "y": position[:, 1],
        "z": position[:, 2],
        "tomo": numbers,
    }
    later = []
    for var in map(str, poses.data_vars):
        if var in _BY_NAME:
            later.append(_BY_NAME[var].number)
        elif var.startswith("col") and var[3:].isdigit():
            later.append(int(var[3:]))
    n_columns = max([MIN_WRITE_COLUMNS, *later])
    columns: dict[str, np.ndarray] = {}
    for index in range(n_columns):
        name = _column_name(index)
        spec = _BY_NAME.get(name)
        if name in geometry:
            values = np.asarray(geometry[name])
        elif name in poses.data_vars:
            values = np.asarray(poses[name].values)
            if values.dtype.kind not in "biuf":
                raise InvalidValueError(
                    f"write_dynamo_table: data variable {name!r} (column {index + 1}) must be numeric, "
                    f"found dtype {values.dtype}"
                )
            if not np.isfinite(values.astype(np.float64)).all():
                raise InvalidValueError(
                    f"write_dynamo_table: data variable {name!r} (column {index + 1}) must be finite"
                )
        elif name == "tag":
            values = np.arange(1, n + 1, dtype=np.int64)
        elif name == "apix":
            values = np.full(n, float(poses.attrs["pixel_spacing"]))
        else:
            values = np.full(n, spec.default if spec else 0.0)
            if spec is not None and spec.dtype is int:
                values = values.astype(np.int64)
        integral = values.dtype.kind == "f" and np.array_equal(values, np.round(values))
        if integral and spec is not None and spec.dtype is int:
            values = values.astype(np.int64)
        columns[f"c{index + 1}"] = values
    frame = pd.DataFrame(columns)
    map_text = None if tomogram_map is None else _tomogram_map_text(mapping)
    targets: list[PathLike] = [tbl] if tomogram_map is None else [tbl, tomogram_map]
    # the table and its map as a set: neither is replaced unless both could be written
    with atomic_paths(targets, overwrite=overwrite) as temporaries:
        frame.to_csv(
            temporaries[0], sep=" ", header=False, index=False, lineterminator="\n", encoding="utf-8"
        )
        if map_text is not None:
            temporaries[1].write_text(map_text, encoding="utf-8")
