"""SerialEM ``.mdoc`` files -> a per-tilt table and the nominal ProjectionModel.

Layout (SerialEM help, "About formats: Autodoc files")::

    PixelSpacing = 1.35                  <- global key = value lines
    Voltage = 300
    ImageFile = TS_01.mrc
    ImageSize = 4096 4096
    [T = SerialEM: Digitized on Krios          ]
    [T =     Tilt axis angle = 85.3, binning = 1  spot = 8  camera = 0]
    [ZValue = 0]                         <- one section per image of the stack
    TiltAngle = 0.0
    ExposureDose = 3.0                   <- e/Å² of this image
    PriorRecordDose = 0.0                <- e/Å² of the earlier Record images of the series
    TargetDefocus = -3.0                 <- µm, negative = underfocus
    Defocus = -2.8                       <- µm, the lens defocus when the image was taken
    PixelSpacing = 1.35
    DateTime = 14-Nov-23  15:29:45

Sections are in stack order (``ZValue``); :data:`MDOC_FIELDS` says how each key becomes a
column of :func:`read_mdoc`'s table: ``tilt_angle`` (degrees), ``exposure_dose`` and
``pre_exposure`` (e/Å²), ``acquisition_order`` (0-based, by ``DateTime``, ties and missing
times by ``ZValue``), ``nominal_defocus`` (Å, underfocus positive: ``-TargetDefocus``,
else ``-Defocus``, times 10,000) and ``pixel_spacing`` (Å). ``pre_exposure`` is
``PriorRecordDose`` when every section has it, else the sum of the ``ExposureDose`` of the
tilts recorded before; it is NaN when the file has no dose (all ``ExposureDose`` zero or
absent) unless ``dose_per_tilt=`` is given. Nothing else is guessed: a file without a pixel
size needs ``pixel_spacing=``, one without a ``Tilt axis angle`` title needs
``tilt_axis=``.

:func:`read_mdoc_alignment` gives the nominal geometry as a ProjectionModel
(``rotation_y`` = tilt angle, ``rotation_z`` = tilt-axis angle, no shifts) with the
``pre_exposure`` and ``acquisition_order`` columns; :func:`merge_mdoc` adds the table's
columns to an existing model, matching rows by tilt angle.

Examples
--------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> text = '''PixelSpacing = 1.35
... [T =     Tilt axis angle = 85.3, binning = 1]
... [ZValue = 0]
... TiltAngle = 0.02
... ExposureDose = 3.0
... TargetDefocus = -3.0
... DateTime = 14-Nov-23  15:29:45
... [ZValue = 1]
... TiltAngle = 3.01
... ExposureDose = 3.0
... TargetDefocus = -3.0
... DateTime = 14-Nov-23  15:30:10
... '''
>>> _ = (folder / "TS_01.mrc.mdoc").write_text(text)
>>> table = read_mdoc(folder / "TS_01.mrc.mdoc")
>>> table[["tilt_angle", "pre_exposure", "acquisition_order", "nominal_defocus"]].values.tolist()
[[0.02, 0.0, 0.0, 30000.0], [3.01, 3.0, 1.0, 30000.0]]
>>> model = read_mdoc_alignment(folder / "TS_01.mrc.mdoc")
>>> model[["rotation_y", "rotation_z", "dx", "experiment_id"]].values.tolist()
[[0.02, 85.3, 0.0, 'TS_01'], [3.01, 85.3, 0.0, 'TS_01']]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryoxr.errors import FormatError, InvalidValueError, SchemaError
from cryoxr.io._paths import PathLike
from cryoxr.io.plaintext import file_model, read_text_lines, require_pixel_spacing
from cryoxr.projection_model import PMDL, PTC

__all__ = [
    "MDOC_FIELDS",
    "MDOC_SUFFIXES",
    "MdocField",
    "merge_mdoc",
    "read_mdoc",
    "read_mdoc_alignment",
]

#: suffixes of mdoc files (``TS_01.mrc.mdoc`` ends in ``.mdoc``)
MDOC_SUFFIXES = (".mdoc",)

#: the column of the table where the nominal defocus goes (Å, underfocus positive)
NOMINAL_DEFOCUS = "nominal_defocus"


@dataclass(frozen=True)
class MdocField:
    """One mdoc key and the table column it becomes: ``column = value * scale``."""

    key: str
    column: str
    scale: float = 1.0


#: mdoc section key -> table column; µm defocus (negative = underfocus) -> Å underfocus positive
MDOC_FIELDS: tuple[MdocField, ...] = (
    MdocField("TiltAngle", "tilt_angle"),
    MdocField("ExposureDose", "exposure_dose"),
    MdocField("PriorRecordDose", "prior_record_dose"),
    MdocField("TargetDefocus", "target_defocus", -1e4),
    MdocField("Defocus", "defocus", -1e4),
    MdocField("PixelSpacing", "pixel_spacing"),
    MdocField("ExposureTime", "exposure_time"),
    MdocField("Magnification", "magnification"),
)

_SECTION = re.compile(r"^\[\s*ZValue\s*=\s*(-?\d+)\s*\]$")
_TITLE = re.compile(r"^\[\s*T\s*=(.*)\]$")
_TILT_AXIS = re.compile(r"Tilt\s*axis\s*angle\s*=\s*([-+0-9.eE]+)")
_DATETIME_FORMATS = ("%d-%b-%y  %H:%M:%S", "%d-%b-%Y  %H:%M:%S", "%d-%b-%y %H:%M:%S", "%d-%b-%Y %H:%M:%S")


def _parse(path: Path) -> tuple[dict[str, str], list[str], list[tuple[int, dict[str, str]]]]:
    """Global keys, title texts and ``(ZValue, keys)`` sections of an mdoc file."""
    p, lines = read_text_lines(path, what="SerialEM .mdoc")
    header: dict[str, str] = {}
    titles: list[str] = []
    sections: list[tuple[int, dict[str, str]]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("["):
            if m := _SECTION.match(line):
                sections.append((int(m.group(1)), {}))
            elif m := _TITLE.match(line):
                titles.append(m.group(1).strip())
            elif line.startswith(("[MontSection", "[FrameSet")):
                raise FormatError(
                    f"{p}, line {number}: expected a tilt-series mdoc ([ZValue = n] sections), "
                    f"found {line!r} (a montage or frame-set mdoc)"
                )
            else:
                raise FormatError(
                    f"{p}, line {number}: expected '[ZValue = n]' or '[T = ...]', found {line!r}"
                )
            continue
        key, eq, value = line.partition("=")
        if not eq or not key.strip():
            raise FormatError(f"{p}, line {number}: expected 'key = value', found {line!r}")
        (sections[-1][1] if sections else header)[key.strip()] = value.strip()
    if not sections:
        raise FormatError(f"{p}: expected at least one '[ZValue = n]' section, found none")
    zs = [z for z, _ in sections]
    if sorted(zs) != list(range(len(zs))):
        raise FormatError(f"{p}: expected ZValue 0..{len(zs) - 1} once each, found {zs}")
    return header, titles, sorted(sections)


def _number(path: Path, z: int, key: str, text: str) -> float:
    try:
        value = float(text.split()[0]) if text.split() else float("nan")
    except ValueError:
        raise FormatError(f"{path}, section ZValue {z}, {key}: expected a number, found {text!r}") from None
    if not np.isfinite(value):
        raise FormatError(f"{path}, section ZValue {z}, {key}: expected a finite number, found {text!r}")
    return value


def _time(text: str | None) -> float:
    if text is None:
        return np.nan
    for fmt in _DATETIME_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).timestamp()
        except ValueError:
            continue
    return np.nan


def _experiment_id(path: Path) -> str:
    """``TS_01.mrc.mdoc`` -> ``TS_01``; ``TS_01.mdoc`` -> ``TS_01``."""
    stem = path.name[: -len(".mdoc")] if path.name.lower().endswith(".mdoc") else path.stem
    for image in (".mrc", ".st", ".tif", ".tiff", ".eer"):
        if stem.lower().endswith(image):
            return stem[: -len(image)]
    return stem


def read_mdoc(
    path: PathLike, *, pixel_spacing: float | None = None, dose_per_tilt: float | None = None
) -> pd.DataFrame:
    """Read a SerialEM tilt-series ``.mdoc`` into a per-tilt table, one row per section.

    Parameters
    ----------
    path
        The ``.mdoc`` file.
    pixel_spacing
        Å per pixel, only for a file that stores no ``PixelSpacing``; refused when it
        differs from the stored one.
    dose_per_tilt
        e/Å² per tilt, only for a file without ``ExposureDose`` values (all zero or absent).

    Returns
    -------
    pandas.DataFrame
        Columns ``z_value``, the columns of :data:`MDOC_FIELDS` the file has,
        ``acquisition_order``, ``pre_exposure``, ``nominal_defocus``, ``experiment_id``;
        ``df.attrs`` holds ``tilt_axis`` (degrees or None), ``titles`` and the global keys.

    Raises
    ------
    FormatError
        Not a tilt-series mdoc, a value that is not a number, ZValues not 0..n-1.
    InvalidValueError
        No pixel size anywhere and no ``pixel_spacing=``, or one that contradicts the file.
    """
    p = Path(path)
    header, titles, sections = _parse(p)
    columns: dict[str, Any] = {"z_value": np.array([z for z, _ in sections], np.int64)}
    for field in MDOC_FIELDS:
        if any(field.key in keys for _, keys in sections):
            columns[field.column] = np.array(
                [
                    _number(p, z, field.key, keys[field.key]) * field.scale if field.key in keys else np.nan
                    for z, keys in sections
                ]
            )
    table = pd.DataFrame(columns)
    if "tilt_angle" not in table or table["tilt_angle"].isna().any():
        raise FormatError(f"{p}: expected TiltAngle in every [ZValue] section, found it missing")
    # pixel size: the sections', else the header's, else the caller's
    stored = table["pixel_spacing"] if "pixel_spacing" in table else pd.Series(np.nan, index=table.index)
    if "PixelSpacing" in header:
        stored = stored.fillna(_number(p, -1, "PixelSpacing", header["PixelSpacing"]))
    if stored.isna().any():
        stored = stored.fillna(require_pixel_spacing(pixel_spacing, p, "SerialEM .mdoc without PixelSpacing"))
    elif pixel_spacing is not None and not np.allclose(stored, float(pixel_spacing), rtol=1e-6):
        raise InvalidValueError(
            f"{p}: pixel_spacing={pixel_spacing} contradicts the file's PixelSpacing {sorted(set(stored))}"
        )
    if not (stored > 0).all():
        raise InvalidValueError(f"{p}: PixelSpacing must be > 0 Å, found {sorted(set(stored))}")
    table["pixel_spacing"] = stored.to_numpy(float)
    # acquisition order: by DateTime, ties and missing times by ZValue
    times = np.array([_time(keys.get("DateTime")) for _, keys in sections])
    keyed = np.where(np.isnan(times), np.inf, times) if not np.isnan(times).all() else np.zeros(len(times))
    order = np.lexsort((table["z_value"].to_numpy(), keyed))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    table[PTC.ACQUISITION_ORDER] = rank
    table[PTC.PRE_EXPOSURE] = _pre_exposure(p, table, order, dose_per_tilt)
    for column in ("target_defocus", "defocus"):
        if column in table:
            nominal = (
                table[column]
                if NOMINAL_DEFOCUS not in table
                else table[NOMINAL_DEFOCUS].fillna(table[column])
            )
            table[NOMINAL_DEFOCUS] = nominal
    table["experiment_id"] = _experiment_id(p)
    axis = [float(m.group(1)) for t in titles if (m := _TILT_AXIS.search(t))]
    table.attrs.update(
        {"tilt_axis": axis[0] if axis else None, "titles": titles, "header": header, "source": str(p)}
    )
    return table


def _pre_exposure(
    path: Path, table: pd.DataFrame, order: np.ndarray, dose_per_tilt: float | None
) -> np.ndarray:
    if "prior_record_dose" in table and table["prior_record_dose"].notna().all() and dose_per_tilt is None:
        return table["prior_record_dose"].to_numpy(float)
    dose = table["exposure_dose"].to_numpy(float) if "exposure_dose" in table else np.full(len(table), np.nan)
    if dose_per_tilt is not None:
        if not (np.isfinite(dose_per_tilt) and dose_per_tilt >= 0):
            raise InvalidValueError(
                f"{path}: dose_per_tilt must be a finite number of e/Å² >= 0, found {dose_per_tilt}"
            )
        dose = np.full(len(table), float(dose_per_tilt))
    elif np.isnan(dose).any() or not (dose > 0).any():
        return np.full(len(table), np.nan)  # no dose recorded: unknown, never zero
    before = np.empty(len(table))
    before[order] = np.concatenate([[0.0], np.cumsum(dose[order])[:-1]])
    return before


def read_mdoc_alignment(
    path: PathLike,
    *,
    pixel_spacing: float | None = None,
    tilt_axis: float | None = None,
    dose_per_tilt: float | None = None,
    experiment_id: str | None = None,
) -> pd.DataFrame:
    """The nominal geometry of an ``.mdoc`` as a ProjectionModel: tilt angles, tilt axis, no shifts.

    Parameters
    ----------
    path
        The ``.mdoc`` file.
    pixel_spacing, dose_per_tilt
        As in :func:`read_mdoc`.
    tilt_axis
        Degrees; overrides (or, for a file without a ``Tilt axis angle`` title, supplies)
        the tilt-axis angle.
    experiment_id
        Default: the file name without ``.mdoc`` and image suffix (``TS_01.mrc.mdoc`` -> ``TS_01``).

    Returns
    -------
    pandas.DataFrame
        One row per section in stack order, with ``pre_exposure``, ``acquisition_order``,
        ``nominal_defocus`` (when the file has a defocus), ``z_value`` and ``tilt_angle``.
    """
    table = read_mdoc(path, pixel_spacing=pixel_spacing, dose_per_tilt=dose_per_tilt)
    p = Path(path)
    axis = tilt_axis if tilt_axis is not None else table.attrs["tilt_axis"]
    if axis is None:
        raise InvalidValueError(
            f"{p}: the file has no 'Tilt axis angle' title; pass tilt_axis= (degrees, as SerialEM reports it)"
        )
    if len(set(table["pixel_spacing"])) != 1:
        raise InvalidValueError(
            f"{p}: sections differ in PixelSpacing ({sorted(set(table['pixel_spacing']))})"
        )
    extra = {
        c: table[c].to_numpy()
        for c in ("z_value", PTC.PRE_EXPOSURE, PTC.ACQUISITION_ORDER, NOMINAL_DEFOCUS)
        if c in table
    }
    return file_model(
        p,
        {PMDL.ROTATION_Y: table["tilt_angle"].to_numpy(), PMDL.ROTATION_Z: float(axis)},
        experiment_id=experiment_id if experiment_id is not None else str(table["experiment_id"].iloc[0]),
        pixel_spacing=float(table["pixel_spacing"].iloc[0]),
        extra=extra,
        attrs={"format": "serialem-mdoc", "tilt_axis": float(axis), "titles": table.attrs["titles"]},
    )


def merge_mdoc(
    model: pd.DataFrame,
    table: pd.DataFrame,
    *,
    columns: tuple[str, ...] = (PTC.PRE_EXPOSURE, PTC.ACQUISITION_ORDER, NOMINAL_DEFOCUS),
    tolerance: float = 0.5,
    angle_offset: float = 0.0,
    replace: bool = False,
) -> pd.DataFrame:
    """Add an mdoc table's per-tilt columns to a ProjectionModel, matching rows by tilt angle.

    Each model row takes the values of the mdoc row whose ``tilt_angle + angle_offset`` is
    nearest its ``rotation_y``, within ``tolerance`` degrees; no two rows take the same
    mdoc row. Mdoc rows without a match (tilts the alignment excluded) are left out. With
    several experiments in ``model``, only the rows of the table's experiment id are merged.

    Raises
    ------
    SchemaError
        A column already in ``model`` (without ``replace=True``), or not in the table.
    InvalidValueError
        A model row with no mdoc tilt within ``tolerance``, or two rows matching one tilt.

    Examples
    --------
    >>> import pandas as pd
    >>> from cryoxr import make_projection_model
    >>> model = make_projection_model(rotation_y=[3.5, 0.5], experiment_id="TS_01", pixel_spacing=1.35)
    >>> table = pd.DataFrame({"tilt_angle": [0.0, 3.0, 6.0], "pre_exposure": [0.0, 3.0, 6.0],
    ...                       "experiment_id": "TS_01"})
    >>> merge_mdoc(model, table, columns=("pre_exposure",), angle_offset=0.5)["pre_exposure"].tolist()
    [3.0, 0.0]
    """
    missing = [c for c in columns if c not in table]
    if missing:
        raise SchemaError(f"mdoc table: expected columns {missing}, found {list(table.columns)}")
    clash = [c for c in columns if c in model and not replace]
    if clash:
        raise SchemaError(f"ProjectionModel already has {clash}; pass replace=True to overwrite them")
    out = model.copy()
    rows = np.arange(len(out))
    if out[PMDL.EXPERIMENT_ID].nunique() > 1:
        rows = np.flatnonzero(out[PMDL.EXPERIMENT_ID].to_numpy() == table["experiment_id"].iloc[0])
        if not len(rows):
            raise InvalidValueError(
                f"ProjectionModel has no rows of experiment {table['experiment_id'].iloc[0]!r}"
            )
    angles = table["tilt_angle"].to_numpy(float) + angle_offset
    wanted = out[PMDL.ROTATION_Y].to_numpy(float)[rows]
    distance = np.abs(wanted[:, None] - angles[None, :])
    nearest = distance.argmin(axis=1)
    far = np.flatnonzero(distance[np.arange(len(rows)), nearest] > tolerance)
    if len(far):
        raise InvalidValueError(
            f"mdoc merge: rotation_y {wanted[far].tolist()} has no mdoc tilt within {tolerance}° "
            f"(angle_offset={angle_offset}); mdoc tilts: {np.round(angles, 3).tolist()}"
        )
    if len(set(nearest.tolist())) != len(nearest):
        raise InvalidValueError(
            f"mdoc merge: two model rows match one mdoc tilt within {tolerance}°: lower tolerance"
        )
    for column in columns:
        if column not in out:
            out[column] = np.nan
        out.loc[out.index[rows], column] = table[column].to_numpy()[nearest]
    return out
