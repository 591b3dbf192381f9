"""AreTomo3's per-tilt side files: CTF estimates (``_CTF.txt``) and the tilt table (``_TLT.txt``).

Both lie beside the ``.aln`` (``TS_01.aln``, ``TS_01_CTF.txt``, ``TS_01_TLT.txt``); the
layouts are those AreTomo3 writes (``AreTomo/FindCtf/CSaveCtfResults.cpp``,
``DataUtil/CTsPackage.cpp``)::

    # Columns: #1 micrograph number; #2 - defocus 1 [A]; #3 - defocus 2; #4 - azimuth of ...
       1   35000.00  34000.00     40.00      0.00    0.0312    8.2000          <- _CTF.txt
      -60.00     1     3.10                                                  <- _TLT.txt

``_CTF.txt`` follows CTFFIND4's layout (:data:`CTF_COLUMNS`): defocus 1 (the larger) and
2 in Å, the azimuth of defocus 1 in degrees, the phase shift in radians. AreTomo3 fits
the CTF before it drops dark frames, in its tilt-sorted order, and may save again after:
the file has a row per tilt of the series (dark frames included) or per aligned tilt.
``_TLT.txt`` has a row per section of AreTomo3's stack: the nominal tilt, the
acquisition index (AreTomo3 writes it 1-based) and the dose of that image (e/Å²).

Examples
--------
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "TS_01_CTF.txt"
>>> _ = path.write_text("# Columns: #1 micrograph number; ...\\n"
...                     "   1   35000.00  34000.00     40.00   0.00   0.0312   8.2000\\n")
>>> read_aretomo_ctf(path)[["defocus_u", "defocus_v", "defocus_angle", "phase_shift"]].values.tolist()
[[35000.0, 34000.0, 40.0, 0.0]]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryoxr.errors import FormatError
from cryoxr.io._paths import PathLike
from cryoxr.io.plaintext import parse_numeric_rows, read_text_lines
from cryoxr.projection_model import PTC

__all__ = [
    "CTF_COLUMNS",
    "TILT_COLUMNS",
    "pre_exposure",
    "read_aretomo_ctf",
    "read_aretomo_tilts",
    "side_file_columns",
]

#: ``_CTF.txt`` columns in file order: (name, ProjectionModel column, factor to cryoxr's unit)
CTF_COLUMNS: tuple[tuple[str, str, float], ...] = (
    ("micrograph number", "micrograph", 1.0),
    ("defocus 1 (Å)", PTC.DEFOCUS_U, 1.0),
    ("defocus 2 (Å)", PTC.DEFOCUS_V, 1.0),
    ("azimuth of astigmatism (deg)", PTC.DEFOCUS_ANGLE, 1.0),
    ("additional phase shift (rad)", PTC.PHASE_SHIFT, float(np.rad2deg(1.0))),
    ("cross correlation", "aretomo_ctf_cross_correlation", 1.0),
    ("resolution of the fit (Å)", "aretomo_ctf_resolution", 1.0),
)
#: ``_TLT.txt`` columns in file order (the last one or two may be absent)
TILT_COLUMNS: tuple[str, ...] = ("tilt (deg)", "acquisition index", "dose (e/Å²)")


def _rows(path: PathLike, what: str, names: list[str], **width: int) -> tuple[str, np.ndarray]:
    p, lines = read_text_lines(path, what=what)
    numbered = [
        (k, text) for k, text in enumerate(lines, 1) if text.strip() and not text.lstrip().startswith("#")
    ]
    return str(p), parse_numeric_rows(p, numbered, names=names, what=what, **width)


def read_aretomo_ctf(path: PathLike) -> pd.DataFrame:
    """Read an AreTomo3 ``_CTF.txt`` into per-tilt CTF columns, one row per line.

    Returns
    -------
    pandas.DataFrame
        ``micrograph`` (1-based, as in the file), ``defocus_u``, ``defocus_v`` (Å),
        ``defocus_angle``, ``phase_shift`` (degrees), ``aretomo_ctf_cross_correlation``,
        ``aretomo_ctf_resolution`` (Å).

    Raises
    ------
    FormatError
        Rows of other than 7 numbers, micrograph numbers other than 1, 2, 3, ...
    """
    p, table = _rows(path, "AreTomo _CTF.txt", [c[0] for c in CTF_COLUMNS], n_columns=len(CTF_COLUMNS))
    numbers = table[:, 0]
    expected = np.arange(1, len(numbers) + 1)
    if not np.array_equal(numbers, expected):
        row = int(np.argmax(numbers != expected))
        raise FormatError(
            f"{p}: expected micrograph numbers 1, 2, 3, ... in order, found {numbers[row]:g} in row {row + 1}"
        )
    frame = pd.DataFrame({column: table[:, k] * factor for k, (_, column, factor) in enumerate(CTF_COLUMNS)})
    frame["micrograph"] = frame["micrograph"].astype(np.int64)
    return frame


def read_aretomo_tilts(path: PathLike) -> pd.DataFrame:
    """Read an AreTomo3 ``_TLT.txt``: per stack section the tilt, acquisition order and dose.

    Returns
    -------
    pandas.DataFrame
        One row per section: ``tilt`` (deg) and, as the file holds them,
        ``acquisition_order`` (0-based: AreTomo3's 1-based index minus 1; a file already
        0-based is kept) and ``dose`` (e/Å² of that image).

    Raises
    ------
    FormatError
        Rows of different widths or of more than 3 numbers; acquisition indices that are
        not each of 1..N (or 0..N-1) once.
    """
    p, table = _rows(path, "AreTomo _TLT.txt", list(TILT_COLUMNS))
    if table.shape[1] > len(TILT_COLUMNS):
        raise FormatError(
            f"{p}: expected at most {len(TILT_COLUMNS)} columns {list(TILT_COLUMNS)}, found {table.shape[1]}"
        )
    frame = pd.DataFrame({"tilt": table[:, 0]})
    if table.shape[1] >= 2:
        order = table[:, 1]
        n = len(order)
        first = 0.0 if order.min() == 0 else 1.0
        if not np.array_equal(np.sort(order), np.arange(first, first + n)):
            raise FormatError(
                f"{p}, column 2 (acquisition index): expected each of 1..{n} once, found "
                f"{sorted(set(order.tolist()))[:10]}"
            )
        frame[PTC.ACQUISITION_ORDER] = (order - first).astype(np.int64)
    if table.shape[1] == 3:
        frame["dose"] = table[:, 2]
    return frame


def pre_exposure(order: np.ndarray, dose: np.ndarray) -> np.ndarray:
    """Dose each image received before it: the sum of the doses of earlier acquisitions.

    Examples
    --------
    >>> pre_exposure(np.array([2, 0, 1]), np.array([3.0, 3.0, 4.0])).tolist()
    [7.0, 0.0, 3.0]
    """
    by_order = np.argsort(order, kind="stable")
    before = np.concatenate([[0.0], np.cumsum(dose[by_order])[:-1]])
    out = np.empty_like(before)
    out[by_order] = before
    return out


def side_file_columns(
    path: Path, header: dict[str, Any], sections: np.ndarray, ctf: PathLike | None, tilts: PathLike | None
) -> dict[str, np.ndarray]:
    """Per-tilt columns of AreTomo3's ``_CTF.txt`` and ``_TLT.txt`` for the ``.aln`` rows.

    ``header`` is the ``.aln``'s (``raw_size``, ``dark_frames``), ``sections`` its SEC
    column. CTF rows match the aligned tilts in order, after dropping the dark frames (by
    their index in the tilt-sorted series) when there is a row for every tilt; tilt-table
    rows are sections of the stack.
    """
    out: dict[str, np.ndarray] = {}
    nz = header["raw_size"][2]
    if ctf is not None:
        table = read_aretomo_ctf(ctf)
        dark = sorted(int(d[0]) for d in header["dark_frames"])
        if len(table) == nz and dark:
            if max(dark) >= nz:
                raise FormatError(f"{path}: DarkFrame index {max(dark)} is beyond the {nz} tilts of {ctf}")
            table = table.drop(index=dark).reset_index(drop=True)
        if len(table) != len(sections):
            raise FormatError(
                f"{ctf}: expected a CTF row per aligned tilt of {path.name} ({len(sections)}) or per tilt "
                f"({nz}), found {len(table)} (another run's file? pass ctf=None to leave it out)"
            )
        out.update({str(c): table[c].to_numpy() for c in table.columns if c != "micrograph"})
    if tilts is not None:
        table = read_aretomo_tilts(tilts)
        if len(table) != nz:
            raise FormatError(
                f"{tilts}: expected a row per section of {path.name}'s stack ({nz}), found {len(table)} "
                "(another run's file? pass tilts=None to leave it out)"
            )
        if PTC.ACQUISITION_ORDER in table.columns:
            out[PTC.ACQUISITION_ORDER] = table[PTC.ACQUISITION_ORDER].to_numpy()[sections]
            if "dose" in table.columns:
                dose = table["dose"].to_numpy()
                out[PTC.PRE_EXPOSURE] = pre_exposure(table[PTC.ACQUISITION_ORDER].to_numpy(), dose)[sections]
                out["aretomo_dose"] = dose[sections]
    return out
