"""Dynamo particle tables (``.tbl``) and tomogram maps (``.doc``) <-> PoseSet.

A ``.tbl`` is whitespace-separated numbers, one particle per row, at least 35 columns by
Dynamo's convention (cryoxr reads any row of 26 or more: enough for the geometry). Every
column is kept: geometry goes into the PoseSet's schema, every other column becomes a
data variable on ``particle`` named as in :data:`DYNAMO_COLUMNS` (unknown columns
``col<n>``), so writing back loses nothing.

Geometry (docs/CONVENTIONS.md §9 and §3)::

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
from cryoxr.io._paths import PathLike
from cryoxr.io.plaintext import PIXEL_SPACING_ADVICE, data_row_line, read_numeric_table, read_text_lines
from cryoxr.poseset import experiment_ids, make_poseset, rotation, validate_poseset

__all__ = [
    "DYNAMO_COLUMNS",
    "DYNAMO_EULER_SEQUENCE",
    "ORIGIN_OFFSETS",
    "USER_COLUMNS_FROM",
    "DynamoColumn",
    "read_dynamo_table",
    "read_tomogram_map",
    "write_dynamo_table",
    "write_tomogram_map",
]

Origin = Literal["none", "corner", "one_based"]


class DynamoColumn(NamedTuple):
    """One column of a Dynamo table."""

    number: int  #: 1-based column number
    name: str  #: Dynamo's name, and the data variable's when not geometry
    dtype: type  #: int or float
    field: str  #: where it goes in a PoseSet
    default: float  #: value written when the PoseSet has nothing for it


def _words(text: str) -> list[str]:
    return text.split()


#: Dynamo's column names in column order (wiki "Table convention"; names as teamtomo
#: dynamotable, its undefined 33, 38-40 as ``col<n>``)
_NAMES = _words(
    "tag aligned averaged dx dy dz tdrot tilt narot cc cc2 cpu ftype ymintilt ymaxtilt xmintilt "
    "xmaxtilt fs1 fs2 tomo reg class annotation x y z dshift daxis dnarot dcc otag npar col33 ref "
    "sref apix def col38 col39 col40 eig1 eig2"
)
_INTEGER = set(_words("tag aligned averaged cpu ftype tomo reg class annotation otag npar ref sref"))
_FIELDS = {
    "tag": "data variable (default 1..N)",
    **{f"d{a}": f"shift {a}" for a in "xyz"},
    **dict.fromkeys(("tdrot", "tilt", "narot"), "orientation (zxz extrinsic, inverted)"),
    "tomo": "experiment_id (through the tomogram map) and data variable tomo",
    **{a: f"position {a} (+ origin offset)" for a in "xyz"},
    "apix": "data variable; pixel_spacing when uniform and > 0",
}
#: Dynamo's table convention, one row per column
DYNAMO_COLUMNS: tuple[DynamoColumn, ...] = tuple(
    DynamoColumn(
        number,
        name,
        int if name in _INTEGER else float,
        _FIELDS.get(name, "data variable"),
        1.0 if name in ("aligned", "averaged") else 0.0,
    )
    for number, name in enumerate(_NAMES, 1)
)
_BY_NAME = {c.name: c for c in DYNAMO_COLUMNS}
#: fewest columns cryoxr reads (through z) and writes (Dynamo's standard table)
MIN_READ_COLUMNS = 26
MIN_WRITE_COLUMNS = 36  # through apix (36), so the pixel size survives a round trip
#: first column of data variables that have no Dynamo column (after Dynamo's 42)
USER_COLUMNS_FROM = len(_NAMES) + 1
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
        if number < 1:
            raise FormatError(
                f"{p}, line {line_no}, column 1 (tomogram number): expected a number >= 1 (Dynamo counts "
                f"tomograms from 1), found {number}"
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
    low = [k for k in mapping if int(k) < 1]
    if low:
        raise InvalidValueError(f"write_tomogram_map: Dynamo numbers tomograms from 1, found {low[:5]}")
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
        same for every particle; a table without one needs ``pixel_spacing=`` (an
        InvalidValueError says so).
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
        non-UTF-8 file, a ``tomo`` number below 1 or missing from the map.
    InvalidValueError
        No usable ``apix`` column and no ``pixel_spacing``.

    Notes
    -----
    MATLAB complex cells (``0+1.2074e-06i``, written by Dynamo's ``dwrite`` where an
    ``acos`` of a cosine a rounding error above 1 became complex) read as their real
    part; an imaginary part above 1e-3 is refused.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tbl = pathlib.Path(tempfile.mkdtemp()) / "p.tbl"
    >>> row = [0.0] * 35
    >>> row[0], row[6:9], row[19], row[23:26] = 7, [10, 20, 30], 3, [1, 2, 3]
    >>> _ = tbl.write_text(" ".join(map(str, row)) + "\\n")
    >>> ds = read_dynamo_table(tbl, origin="corner", pixel_spacing=1.35)
    >>> ds.position.values.tolist(), ds.experiment_id.values.tolist(), int(ds.tag[0])
    ([[0.5, 1.5, 2.5]], ['3'], 7)
    >>> ds.cryo.rotation.as_matrix().round(4)[0].tolist()
    [[0.7713, 0.6337, 0.0594], [-0.6131, 0.7146, 0.3368], [0.171, -0.2962, 0.9397]]
    """
    offset = _origin_offset(origin, "read_dynamo_table")
    path, table = read_numeric_table(
        tbl,
        names=_column_name,
        min_columns=MIN_READ_COLUMNS,
        what="Dynamo table (.tbl)",
        allow_empty=True,
        complex_cells=True,
    )
    if table.shape[0] == 0:  # Dynamo writes a set of 0 particles as an empty file
        table = np.zeros((0, MIN_WRITE_COLUMNS))
    n, n_columns = table.shape
    col = {c.name: table[:, c.number - 1] for c in DYNAMO_COLUMNS if c.number <= n_columns}
    tomo = col["tomo"]
    bad = ~(_integral(tomo) & (tomo >= 1))
    if bad.any():
        row = int(np.argmax(bad))
        line = data_row_line(path, row)  # the file's line, blank lines counted
        raise FormatError(
            f"{path}, line {line}, column 20 (tomo): expected an integer >= 1 (Dynamo counts tomograms "
            f"from 1), found {float(tomo[row])!r}"
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
        if apix is not None and n > 0 and bool((apix == apix[0]).all()) and apix[0] > 0:
            pixel_spacing = float(apix[0])
        else:
            found = (
                "no apix column"
                if apix is None
                else ("no rows" if n == 0 else f"apix values {sorted(set(apix.tolist()))[:5]}")
            )
            advice = PIXEL_SPACING_ADVICE.format(of="the tomograms")
            raise InvalidValueError(f"{path}: a Dynamo table with {found} holds no pixel size; {advice}")
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
        if not (np.array_equal(numbers, np.round(numbers)) and (numbers >= 1).all()):
            raise InvalidValueError(
                f"{where}: data variable tomo must hold integers >= 1 (Dynamo counts tomograms from 1), "
                f"found {numbers[:5]}"
            )
        numbers = numbers.astype(np.int64)
    else:
        unique = experiment_ids(poses)
        # ASCII digits only: str.isdigit() also accepts '²', which int() refuses; 0 and
        # negative ids are no Dynamo numbers: they are numbered 1, 2, ... and need the map
        if all(re.fullmatch(r"[+-]?[0-9]+", u.strip()) and int(u) >= 1 for u in unique):
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


def _data_columns(poses: xr.Dataset, geometry: set[str]) -> dict[int, str]:
    """Column number -> data variable: Dynamo's names, ``col<n>``, then user columns after 42."""
    by_number: dict[int, str] = {}
    user: list[str] = []
    lost: list[str] = []
    for var in map(str, poses.data_vars):
        if var in geometry or var in {"position", "shift", "orientation"}:
            continue
        if var in _BY_NAME:
            by_number[_BY_NAME[var].number] = var
        elif re.fullmatch(r"col[0-9]+", var) and int(var[3:]) >= 1:
            by_number[int(var[3:])] = var
        elif poses[var].dims == ("particle",) and poses[var].dtype.kind in "biuf":
            user.append(var)
        else:
            lost.append(var)
    first = max([USER_COLUMNS_FROM - 1, *by_number]) + 1
    by_number.update({first + k: var for k, var in enumerate(user)})
    if lost:
        warnings.warn(
            f"write_dynamo_table: a Dynamo table holds one number per particle and column; data "
            f"variable(s) {lost} are not written",
            stacklevel=3,
        )
    return by_number


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
    named after a Dynamo column (or ``col<n>``) is written in its column, the rest of
    Dynamo's columns take its defaults (tag 1..N, aligned 1, averaged 1, apix =
    pixel_spacing, others 0). At least 36 columns (through ``apix``) are written. A
    numeric data variable with no Dynamo column (RELION's class number, a score) is kept
    as a column after Dynamo's 42, in the order of the data variables, and reads back as
    ``col<n>`` (:data:`USER_COLUMNS_FROM` says where they start); one a table cannot hold
    (text, more than one value per particle) is named in a warning. Numbers are written
    with full float64 precision.

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
    by_number = _data_columns(poses, set(geometry))
    n_columns = max([MIN_WRITE_COLUMNS, *by_number])
    columns: dict[str, np.ndarray] = {}
    for index in range(n_columns):
        name = by_number.get(index + 1, _column_name(index))
        spec = _BY_NAME.get(name)
        if name in geometry:
            values = np.asarray(geometry[name])
        elif index + 1 in by_number:
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
