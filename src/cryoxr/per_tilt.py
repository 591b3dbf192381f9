"""The per-tilt columns of a ProjectionModel: names, units, and the values each may hold.

Beyond cryotypes' seven columns, what a file knows about a tilt (tomogram and image size,
centres, defocus, dose, optics, exclusion) lives in ordinary DataFrame columns with the
fixed names and units of :data:`PER_TILT_COLUMNS` (DESIGN.md "Per-tilt columns"), so it
survives ``pd.concat``, filters and parquet, which drop ``DataFrame.attrs``. The rules
each column follows are data (:data:`COLUMN_RULES`); :func:`check_per_tilt_columns`
applies them, and :func:`cryoxr.validate_projection_model` calls it.

Examples
--------
>>> import pandas as pd
>>> from cryoxr.per_tilt import check_per_tilt_columns
>>> check_per_tilt_columns(pd.DataFrame({"defocus_u": [3.5]}), "TS_01.star")
Traceback (most recent call last):
...
cryoxr.errors.InvalidValueError: TS_01.star: column 'defocus_u' (Å) must be in [-1000000.0, 1000000.0] \
and not within 100 Å of 0, found 3.5 at row 0: this is almost certainly µm (1 µm = 10,000 Å): multiply by 10,000
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from cryoxr.errors import InvalidValueError, SchemaError

__all__ = [
    "COLUMN_RULES",
    "PER_TILT_COLUMNS",
    "PTC",
    "ColumnRule",
    "PerTiltColumns",
    "check_per_tilt_columns",
]


class PerTiltColumns:
    """Optional per-tilt columns beyond cryotypes' seven: what a file knows about a tilt.

    They are ordinary columns (``DataFrame.attrs`` is lost by ``pd.concat``, filters and
    parquet); per-experiment constants (voltage, tomogram size) repeat on each row of
    their experiment. Units are fixed; :data:`PER_TILT_COLUMNS` lists them. Readers fill
    what their file holds and nothing else: a value a file lacks is absent (or NaN).
    """

    TOMOGRAM_SIZE_X = "tomogram_size_x"
    TOMOGRAM_SIZE_Y = "tomogram_size_y"
    TOMOGRAM_SIZE_Z = "tomogram_size_z"
    TOMOGRAM_SIZE: ClassVar[list[str]] = [TOMOGRAM_SIZE_X, TOMOGRAM_SIZE_Y, TOMOGRAM_SIZE_Z]
    SPECIMEN_CENTER_X = "specimen_center_x"
    SPECIMEN_CENTER_Y = "specimen_center_y"
    SPECIMEN_CENTER_Z = "specimen_center_z"
    SPECIMEN_CENTER: ClassVar[list[str]] = [SPECIMEN_CENTER_X, SPECIMEN_CENTER_Y, SPECIMEN_CENTER_Z]
    IMAGE_SIZE_X = "image_size_x"
    IMAGE_SIZE_Y = "image_size_y"
    IMAGE_SIZE: ClassVar[list[str]] = [IMAGE_SIZE_X, IMAGE_SIZE_Y]
    TILT_IMAGE_CENTER_X = "tilt_image_center_x"
    TILT_IMAGE_CENTER_Y = "tilt_image_center_y"
    TILT_IMAGE_CENTER: ClassVar[list[str]] = [TILT_IMAGE_CENTER_X, TILT_IMAGE_CENTER_Y]
    DEFOCUS_U = "defocus_u"
    DEFOCUS_V = "defocus_v"
    DEFOCUS_ANGLE = "defocus_angle"
    PHASE_SHIFT = "phase_shift"
    VOLTAGE = "voltage"
    SPHERICAL_ABERRATION = "spherical_aberration"
    AMPLITUDE_CONTRAST = "amplitude_contrast"
    CTF_SCALE = "ctf_scale"
    CTF_BFACTOR = "ctf_bfactor"
    PRE_EXPOSURE = "pre_exposure"
    ACQUISITION_ORDER = "acquisition_order"
    EXCLUDED = "excluded"
    DEFOCUS_HANDEDNESS = "defocus_handedness"


PTC = PerTiltColumns

#: column -> (unit, meaning); the units are fixed, readers convert to them
PER_TILT_COLUMNS: dict[str, tuple[str, str]] = {
    PTC.TOMOGRAM_SIZE_X: ("px", "reconstructed volume size along x, in pixels of the row's pixel_spacing"),
    PTC.TOMOGRAM_SIZE_Y: ("px", "reconstructed volume size along y"),
    PTC.TOMOGRAM_SIZE_Z: ("px", "reconstructed volume size along z"),
    PTC.SPECIMEN_CENTER_X: (
        "px",
        "rotation centre of the tomogram along x, when the tool's rule is not size // 2 (IMOD: (n - 1) / 2)",
    ),
    PTC.SPECIMEN_CENTER_Y: ("px", "rotation centre of the tomogram along y"),
    PTC.SPECIMEN_CENTER_Z: ("px", "rotation centre of the tomogram along z"),
    PTC.IMAGE_SIZE_X: ("px", "tilt-image width"),
    PTC.IMAGE_SIZE_Y: ("px", "tilt-image height"),
    PTC.TILT_IMAGE_CENTER_X: ("px", "rotation centre in the tilt image, x"),
    PTC.TILT_IMAGE_CENTER_Y: ("px", "rotation centre in the tilt image, y"),
    PTC.DEFOCUS_U: ("Å", "defocus along the major axis, underfocus positive"),
    PTC.DEFOCUS_V: ("Å", "defocus along the minor axis, underfocus positive"),
    PTC.DEFOCUS_ANGLE: ("degree", "astigmatism angle"),
    PTC.PHASE_SHIFT: ("degree", "phase-plate shift"),
    PTC.VOLTAGE: ("kV", "acceleration voltage"),
    PTC.SPHERICAL_ABERRATION: ("mm", "spherical aberration Cs"),
    PTC.AMPLITUDE_CONTRAST: ("fraction", "amplitude contrast, 0..1"),
    PTC.CTF_SCALE: ("1", "CTF scale factor"),
    PTC.CTF_BFACTOR: ("Å²", "CTF B-factor"),
    PTC.PRE_EXPOSURE: ("e/Å²", "cumulative dose before this tilt"),
    PTC.ACQUISITION_ORDER: ("index", "0-based order in which the tilt was recorded"),
    PTC.EXCLUDED: ("bool", "tilt not to be used"),
    PTC.DEFOCUS_HANDEDNESS: ("+1/-1", "sign of the depth term in per-particle defocus"),
}


@dataclass(frozen=True)
class ColumnRule:
    """What one per-tilt column may hold.

    Finite values must lie in ``[low, high]``, be whole numbers when ``integral``, one of
    ``allowed`` when given, and not have a magnitude in ``(0, gap)`` (a defocus of 3.5 Å is
    µm in disguise). NaN means "not known" and passes; infinities never do. ``hints`` name
    the likely unit mistake of a value whose magnitude lies in ``[a, b)``.
    """

    low: float = -np.inf
    high: float = np.inf
    integral: bool = False
    allowed: tuple[float, ...] | None = None
    gap: float = 0.0
    hints: tuple[tuple[float, float, str], ...] = ()

    def describe(self) -> str:
        """The rule in words, for error messages."""
        if self.allowed is not None:
            return f"one of {list(self.allowed)}"
        words = []
        if np.isfinite(self.low) or np.isfinite(self.high):
            words.append(f"in [{self.low}, {self.high}]")
        else:
            words.append("finite")
        if self.integral:
            words.append("a whole number")
        if self.gap:
            words.append(f"not within {self.gap:g} {{unit}} of 0")
        return " and ".join(words)

    def broken(self, values: np.ndarray) -> np.ndarray:
        """Mask of the values (float64, NaN = unknown) that break the rule."""
        known = ~np.isnan(values)
        with np.errstate(invalid="ignore"):
            bad = known & (np.isinf(values) | (values < self.low) | (values > self.high))
            if self.integral:
                bad |= known & np.isfinite(values) & (values != np.round(values))
            if self.allowed is not None:
                bad |= known & ~np.isin(values, self.allowed)
            if self.gap:
                bad |= known & (np.abs(values) > 0) & (np.abs(values) < self.gap)
        return bad

    def hint(self, value: float) -> str:
        """Advice for one bad value: the unit mistake it most likely is, else nothing."""
        magnitude = abs(value)
        for low, high, text in self.hints:
            if low <= magnitude < high:
                return f": {text}"
        return ""


_SIZE = ColumnRule(low=1, high=1e7, integral=True)
_ANGLE = ColumnRule(low=-360.0, high=360.0)

#: per-tilt column -> the values it may hold (``excluded`` is checked as bool)
COLUMN_RULES: dict[str, ColumnRule] = {
    **dict.fromkeys(PTC.TOMOGRAM_SIZE, _SIZE),
    **dict.fromkeys(PTC.IMAGE_SIZE, _SIZE),
    **dict.fromkeys(PTC.TILT_IMAGE_CENTER, ColumnRule()),
    **dict.fromkeys(PTC.SPECIMEN_CENTER, ColumnRule()),
    **dict.fromkeys(
        [PTC.DEFOCUS_U, PTC.DEFOCUS_V],
        ColumnRule(
            low=-1e6,
            high=1e6,
            gap=100.0,
            hints=(
                (0.0, 100.0, "this is almost certainly µm (1 µm = 10,000 Å): multiply by 10,000"),
                (1e6, np.inf, "this is more than 100 µm: expected Å"),
            ),
        ),
    ),
    PTC.DEFOCUS_ANGLE: _ANGLE,
    PTC.PHASE_SHIFT: _ANGLE,
    PTC.VOLTAGE: ColumnRule(
        low=60.0, high=1000.0, hints=((1e4, np.inf, "this looks like volts: divide by 1,000 for kV"),)
    ),
    PTC.SPHERICAL_ABERRATION: ColumnRule(
        low=-20.0, high=20.0, hints=((20.0, 2e4, "this looks like µm: divide by 1,000 for mm"),)
    ),
    PTC.AMPLITUDE_CONTRAST: ColumnRule(
        low=0.0, high=1.0, hints=((1.0, 100.0, "this looks like a percentage: divide by 100"),)
    ),
    PTC.CTF_SCALE: ColumnRule(low=0.0),
    PTC.CTF_BFACTOR: ColumnRule(),
    PTC.PRE_EXPOSURE: ColumnRule(low=0.0),
    PTC.ACQUISITION_ORDER: ColumnRule(low=0.0, integral=True),
    PTC.DEFOCUS_HANDEDNESS: ColumnRule(allowed=(-1.0, 1.0)),
}

#: per-tilt columns that hold one value per experiment (the specimen's own size)
PER_EXPERIMENT: tuple[str, ...] = (*PTC.TOMOGRAM_SIZE, *PTC.SPECIMEN_CENTER)


def _check_bool(df: pd.DataFrame, column: str, name: str) -> None:
    """``excluded``: bool, nullable boolean, or objects that are all bool or missing."""
    series = df[column]
    if pd.api.types.is_bool_dtype(series.dtype):
        return
    if series.dtype == object:
        odd = [v for v in series if not (isinstance(v, bool | np.bool_) or v is None or v is pd.NA or v != v)]
        if not odd:
            return
        raise SchemaError(
            f"{name}: column {column!r} must hold True/False (missing allowed), found {odd[0]!r}"
        )
    raise SchemaError(
        f"{name}: column {column!r} must be bool (True/False), found dtype {series.dtype} "
        f"(use df[{column!r}].astype(bool) for 0/1 flags)"
    )


def check_per_tilt_columns(df: pd.DataFrame, name: str = "ProjectionModel") -> None:
    """Check the per-tilt columns present in ``df`` (numbers, ranges, units).

    Parameters
    ----------
    df
        A ProjectionModel (only its per-tilt columns are looked at).
    name
        How to call it in messages (e.g. the file it came from).

    Raises
    ------
    SchemaError
        Text where numbers belong; ``excluded`` that is not bool.
    InvalidValueError
        A value outside :data:`COLUMN_RULES` (the message gives row, value, expectation
        and, where it is plain, the unit mistake); a tomogram size that varies within an
        experiment.

    Examples
    --------
    >>> import pandas as pd
    >>> check_per_tilt_columns(pd.DataFrame({"voltage": [300000.0]}), "a.star")
    Traceback (most recent call last):
    ...
    cryoxr.errors.InvalidValueError: a.star: column 'voltage' (kV) must be in [60.0, 1000.0], found \
300000.0 at row 0: this looks like volts: divide by 1,000 for kV
    """
    for column, rule in COLUMN_RULES.items():
        if column not in df.columns:
            continue
        series = df[column]
        unit = PER_TILT_COLUMNS[column][0]
        if not pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
            raise SchemaError(
                f"{name}: column {column!r} ({unit}) must be numeric, found dtype {series.dtype}"
            )
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = rule.broken(values)
        if bad.any():
            row = int(np.argmax(bad))
            raise InvalidValueError(
                f"{name}: column {column!r} ({unit}) must be {rule.describe().format(unit=unit)}, "
                f"found {values[row]} at row {row}{rule.hint(float(values[row]))}"
            )
    if PTC.EXCLUDED in df.columns:
        _check_bool(df, PTC.EXCLUDED, name)
    present = [c for c in PER_EXPERIMENT if c in df.columns]
    if present and "experiment_id" in df.columns:
        counts = df.groupby("experiment_id", sort=False)[present].nunique(dropna=False)
        varying = counts[(counts > 1).any(axis=1)]
        if len(varying):
            eid = varying.index[0]
            column = next(c for c in present if varying.loc[eid, c] > 1)
            found = sorted(df.loc[df["experiment_id"] == eid, column].unique().tolist())
            raise InvalidValueError(f"{name}: experiment {eid!r} must have one {column}, found {found}")
