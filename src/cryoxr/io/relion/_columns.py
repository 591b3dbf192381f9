"""RELION 5 labels <-> the ProjectionModel's per-tilt columns (the format as data tables).

Labels and their meaning as RELION 5 defines them (``src/metadata_label.h``) and reads
them (``TomogramSet::loadTomogram`` in ``src/jaz/tomography/tomogram_set.cpp``):

- ``tomograms.star`` (``data_global``, one row per tomogram): the volume size
  ``rlnTomoSizeX/Y/Z`` ("of a bin-1 tomogram in pixels", i.e. pixels of
  ``rlnTomoTiltSeriesPixelSize``), ``rlnVoltage`` (kV), ``rlnSphericalAberration`` (mm),
  ``rlnAmplitudeContrast`` (fraction), ``rlnTomoHand`` (the sign of the defocus slope
  over depth). RELION takes the tilt-image size from the images themselves; cryoxr
  stores a known size as ``rlnImageSizeX/Y`` (RELION's "size of an image" labels, which
  RELION keeps and does not use here) so that it round-trips.
- per-tilt-series STAR (one row per tilt): ``rlnDefocusU/V`` (Å, underfocus positive),
  ``rlnDefocusAngle`` (degrees), ``rlnPhaseShift`` (degrees), ``rlnCtfScalefactor``,
  ``rlnCtfBfactor`` (Å²), ``rlnMicrographPreExposure`` (e/Å², cumulative; RELION orders
  the tilts by it) and ``rlnTomoTiltMovieIndex`` ("chronological index of a tilt movie",
  1-based in RELION's own test project, where it counts 1, 2, 3 ... along the
  pre-exposure): cryoxr's 0-based ``acquisition_order`` is that index minus 1.

RELION 5 has no label for excluded tilts (its "exclude tilt images" job removes their
rows) nor for a tilt-image centre (``Tomogram::setProjectionMatrix`` uses
``int(N / 2)`` of the image size): cryoxr writes ``excluded`` (0/1) and, when no image
size is known, ``tilt_image_center_x/_y`` under those names, which RELION keeps and
ignores. Labels named like a per-tilt column are read back as that column.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryoxr.errors import CryoxrError, FormatError, InvalidValueError
from cryoxr.projection_model import PER_TILT_COLUMNS, PMDL, PTC

__all__ = [
    "INTEGER_COLUMNS",
    "OWN_LABEL_COLUMNS",
    "PROJECTION_ROW_LABELS",
    "TILT_ALIGNMENT_LABELS",
    "TILT_LABELS",
    "TOMOGRAM_LABELS",
    "image_size_option",
    "is_star_label",
    "micrograph_image_size",
    "numbers",
    "tilt_columns",
    "tomogram_columns",
]

#: ProjectionModel column -> (per-tilt RELION 5 label, multiply the model value by the pixel size)
TILT_ALIGNMENT_LABELS: dict[str, tuple[str, bool]] = {
    PMDL.ROTATION_X: ("rlnTomoXTilt", False),
    PMDL.ROTATION_Y: ("rlnTomoYTilt", False),
    PMDL.ROTATION_Z: ("rlnTomoZRot", False),
    PMDL.SHIFT_X: ("rlnTomoXShiftAngst", True),
    PMDL.SHIFT_Y: ("rlnTomoYShiftAngst", True),
}
#: RELION 4 / Warp per-tilt projection-matrix rows
PROJECTION_ROW_LABELS = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")

#: per-experiment column -> its ``data_global`` label in ``tomograms.star``
TOMOGRAM_LABELS: dict[str, str] = {
    PTC.TOMOGRAM_SIZE_X: "rlnTomoSizeX",
    PTC.TOMOGRAM_SIZE_Y: "rlnTomoSizeY",
    PTC.TOMOGRAM_SIZE_Z: "rlnTomoSizeZ",
    PTC.IMAGE_SIZE_X: "rlnImageSizeX",
    PTC.IMAGE_SIZE_Y: "rlnImageSizeY",
    PTC.VOLTAGE: "rlnVoltage",
    PTC.SPHERICAL_ABERRATION: "rlnSphericalAberration",
    PTC.AMPLITUDE_CONTRAST: "rlnAmplitudeContrast",
    PTC.DEFOCUS_HANDEDNESS: "rlnTomoHand",
}

#: per-tilt column -> (its label in the per-tilt-series STAR file, offset added on writing)
TILT_LABELS: dict[str, tuple[str, int]] = {
    PTC.DEFOCUS_U: ("rlnDefocusU", 0),
    PTC.DEFOCUS_V: ("rlnDefocusV", 0),
    PTC.DEFOCUS_ANGLE: ("rlnDefocusAngle", 0),
    PTC.PHASE_SHIFT: ("rlnPhaseShift", 0),
    PTC.CTF_SCALE: ("rlnCtfScalefactor", 0),
    PTC.CTF_BFACTOR: ("rlnCtfBfactor", 0),
    PTC.PRE_EXPOSURE: ("rlnMicrographPreExposure", 0),
    PTC.ACQUISITION_ORDER: ("rlnTomoTiltMovieIndex", 1),  # RELION counts from 1
}

#: per-tilt columns without a RELION label: written under their own name
OWN_LABEL_COLUMNS: tuple[str, ...] = (PTC.EXCLUDED, *PTC.TILT_IMAGE_CENTER)

#: columns that are whole numbers in RELION's files
INTEGER_COLUMNS = frozenset([*PTC.TOMOGRAM_SIZE, *PTC.IMAGE_SIZE, PTC.ACQUISITION_ORDER])

_LABEL = re.compile(r"[^\s#\"']+")


def is_star_label(name: object) -> bool:
    """Whether ``name`` can be written as a STAR label (text without blanks, quotes or ``#``)."""
    return isinstance(name, str) and _LABEL.fullmatch(name) is not None and not name.startswith("_")


def numbers(path: Path, block: str, table: pd.DataFrame, label: str) -> np.ndarray:
    """A column as float64, NaN allowed ("not known"), text refused naming file and label."""
    column = table[label]
    if not pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
        raise FormatError(f"{path}, data_{block}, column {label}: expected numbers, found text")
    values = column.to_numpy(dtype=np.float64)
    if np.isinf(values).any():
        row = int(np.argmax(np.isinf(values)))
        raise FormatError(
            f"{path}, data_{block}, row {row + 1}, column {label}: expected a finite number, found {values[row]}"
        )
    return values


def tomogram_columns(path: Path, block: str, table: pd.DataFrame, row: int) -> dict[str, float]:
    """The per-experiment columns one ``data_global`` row holds (absent labels: absent)."""
    return {
        column: float(numbers(path, block, table, label)[row])
        for column, label in TOMOGRAM_LABELS.items()
        if label in table.columns
    }


def tilt_columns(path: Path, block: str, table: pd.DataFrame) -> tuple[dict[str, np.ndarray], set[str]]:
    """The per-tilt columns a per-tilt-series table holds, and the labels they used."""
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for column, (label, offset) in TILT_LABELS.items():
        if label not in table.columns:
            continue
        values = numbers(path, block, table, label) - offset
        if column in INTEGER_COLUMNS:
            known = values[np.isfinite(values)]
            if (known < 0).any() or (known != np.round(known)).any():
                bad = known[(known < 0) | (known != np.round(known))][0] + offset
                raise FormatError(
                    f"{path}, data_{block}, column {label}: expected whole numbers >= {offset}, found {bad}"
                )
        out[column] = (
            values.astype(np.int64) if column in INTEGER_COLUMNS and np.isfinite(values).all() else values
        )
        used.add(label)
    for column in (c for c in PER_TILT_COLUMNS if c in table.columns):  # cryoxr's own labels
        if column in out:
            raise FormatError(
                f"{path}, data_{block}: columns {TILT_LABELS[column][0]} and {column} both give {column}"
            )
        values = numbers(path, block, table, column)
        if column == PTC.EXCLUDED:
            if not np.isin(values, (0.0, 1.0)).all():
                raise FormatError(
                    f"{path}, data_{block}, column {column}: expected 0 or 1, found {values.tolist()}"
                )
            out[column] = values.astype(bool)
        else:
            out[column] = values
        used.add(column)
    return out, used


def micrograph_image_size(
    reference: Path, table: pd.DataFrame, block: str, resolve: Any
) -> tuple[int, int] | None:
    """(nx, ny) of the first tilt image the table names (``rlnMicrographName``), if found.

    RELION 5 reads the tilt-image size from these images (``TomogramSet::loadTomogram``);
    ``N@stack`` names are read as the stack. None when the label or the file is absent, or
    the file is not an MRC file (by its suffix).
    """
    from cryoxr.io.mrc import MRC_SUFFIXES, read_mrc

    if "rlnMicrographName" not in table.columns or len(table) == 0:
        return None
    name = str(table["rlnMicrographName"].iloc[0])
    file_name = name.split("@", 1)[1] if re.match(r"^\d+@", name) else name
    if not file_name or Path(file_name).suffix.lower() not in MRC_SUFFIXES:
        return None
    candidate = resolve(reference, file_name)
    if not (isinstance(candidate, Path) and _is_file(candidate)):
        return None

    try:  # the size is all that is needed: any pixel spacing in the header will do
        image = read_mrc(candidate, pixel_spacing=1.0, chunks=None)
    except CryoxrError as err:
        raise FormatError(
            f"{reference}, data_{block}, rlnMicrographName {name!r}: reading the tilt-image size from "
            f"{candidate}: {err} (pass tilt_image_size=(nx, ny) to skip this)"
        ) from None
    return int(image.data.sizes["x"]), int(image.data.sizes["y"])


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def image_size_option(
    value: Sequence[int] | Mapping[str, Sequence[int]] | str | None, name: str, where: str
) -> np.ndarray | str | None:
    """``tilt_image_size=`` for one tomogram: (nx, ny), ``"tomogram"`` or None."""
    if isinstance(value, Mapping):
        value = value.get(name)
    if value is None or isinstance(value, str):
        if isinstance(value, str) and value != "tomogram":
            raise InvalidValueError(
                f"{where}: tilt_image_size must be (nx, ny), a mapping or 'tomogram', found {value!r}"
            )
        return value
    size = np.asarray(value, dtype=np.float64).reshape(-1)
    if size.shape != (2,) or not (np.isfinite(size).all() and (size > 0).all()):
        raise InvalidValueError(
            f"{where}: tilt_image_size must be two positive numbers (nx, ny), found {value!r}"
        )
    return size
