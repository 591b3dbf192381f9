"""IMOD ctfplotter defocus files (``.defocus``) <-> per-tilt CTF columns of a ProjectionModel.

ctfplotter writes, and ctfphaseflip reads, one line per fitted range of views (IMOD's
``ctfplotter/ctfutils.cpp``, ``readDefocusFile``; the flag bits are those of the
ctfphaseflip man page). Two layouts are in use:

=========  ===============================================================================
version    layout
=========  ===============================================================================
2          every line ``start_view end_view start_angle end_angle defocus``; the first line
           carries a sixth field, the version ``2``
3          a first line ``flags 0 0.0 0.0 0.0 3``, then per line the four range fields,
           ``defocus1`` and, as the flags say, ``defocus2 astigmatism_angle`` (1),
           ``phase_shift`` (4), ``cut_on_frequency`` (32)
=========  ===============================================================================

Views count from 1; defoci are in nm, underfocus positive; the astigmatism angle is in
degrees (radians with flag 2), the phase shift in degrees (radians with flag 8); flag 16
says the range angles are of inverted sign (they are not used here). A file without a
version number comes from a ctfplotter older than IMOD's fix of its off-by-one view
numbers, which ctfphaseflip can only guess at: it is refused.

Conversion (:data:`DEFOCUS_COLUMNS`): ``defocus_u = 10 * defocus1``, ``defocus_v = 10 *
defocus2`` (Å; a file without astigmatism gives ``defocus_v = defocus_u``), and
``defocus_angle`` = the astigmatism angle, the direction of ``defocus1``: ctfphaseflip
evaluates ``0.5 (d1 + d2 + (d1 - d2) cos 2(phi - angle))`` as CTFFIND4 and RELION do. (The
Dynamo wiki states a 90 degree offset between IMOD's and CTFFIND4's angles; IMOD's own
formula shows none, so none is applied.) The angle is in the frame of the images
ctfplotter fitted (normally the raw stack). Like ctfphaseflip, a line's values belong to
the middle view of its range, ``(start + end) // 2``; a later line with the same range
replaces an earlier one (ctfplotter appends when a fit is saved again). Views with no
line of their own get NaN: ctfphaseflip interpolates between fitted views, cryoxr does
not guess.

Examples
--------
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "TS_01.defocus"
>>> _ = path.write_text("1 0 0.0 0.0 0.0 3\\n1 1 -3.0 -3.0 3500 3400 40.0\\n2 2 0.0 0.0 3510 3390 41.0\\n")
>>> read_imod_defocus(path, n_views=3).round(1).values.tolist()
[[35000.0, 34000.0, 40.0], [35100.0, 33900.0, 41.0], [nan, nan, nan]]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cryoxr.errors import FormatError, InvalidValueError
from cryoxr.io._paths import PathLike
from cryoxr.io.plaintext import parse_numeric_rows, read_text_lines
from cryoxr.projection_model import PMDL, PTC

__all__ = ["DEFOCUS_COLUMNS", "DEFOCUS_FLAGS", "defocus_file_lines", "read_imod_defocus"]

#: version-3 flag bit -> meaning
DEFOCUS_FLAGS: dict[int, str] = {
    1: "astigmatism: defocus2 and astigmatism angle columns",
    2: "astigmatism angle in radians",
    4: "phase shift column",
    8: "phase shift in radians",
    16: "range angles of inverted sign",
    32: "cut-on frequency column (1/nm)",
}
#: (flag bit that adds the field, file field, ProjectionModel column, factor to cryoxr's unit)
DEFOCUS_COLUMNS: tuple[tuple[int, str, str, float], ...] = (
    (0, "defocus1 (nm)", PTC.DEFOCUS_U, 10.0),
    (1, "defocus2 (nm)", PTC.DEFOCUS_V, 10.0),
    (1, "astigmatism angle", PTC.DEFOCUS_ANGLE, 1.0),
    (4, "phase shift", PTC.PHASE_SHIFT, 1.0),
    (32, "cut-on frequency (1/nm)", "imod_cut_on_frequency", 1.0),
)
_RANGE = ("start view", "end view", "start angle", "end angle")
_RADIANS = {PTC.DEFOCUS_ANGLE: 2, PTC.PHASE_SHIFT: 8}


def _version_and_flags(path: Path, first: list[str]) -> tuple[int, int]:
    if len(first) < 6:
        raise FormatError(
            f"{path}, line 1: expected a version number as sixth field (2, or a version-3 header "
            f"'flags 0 0.0 0.0 0.0 3'), found {len(first)} fields; a defocus file without one comes "
            "from a ctfplotter whose view numbers may be off by one: save it again with a current IMOD"
        )
    try:
        version, flags = float(first[5]), float(first[0])
    except ValueError:
        raise FormatError(
            f"{path}, line 1: expected numbers (version {first[5]!r}, flags {first[0]!r})"
        ) from None
    if version not in (2.0, 3.0):
        raise FormatError(f"{path}, line 1, field 6 (version): expected 2 or 3, found {first[5]!r}")
    if version == 3.0 and not (flags == int(flags) and 0 <= flags < 64):
        raise FormatError(f"{path}, line 1, field 1 (flags): expected an integer 0..63, found {first[0]!r}")
    return int(version), int(flags) if version == 3.0 else 0


def read_imod_defocus(path: PathLike, *, n_views: int | None = None) -> pd.DataFrame:
    """Read a ctfplotter ``.defocus`` file into per-view CTF columns.

    Parameters
    ----------
    path
        The defocus file (version 2 or 3).
    n_views
        Views in the stack; rows beyond the last view with a value are NaN up to it, and a
        view number beyond it is an error. Default: up to the last view in the file.

    Returns
    -------
    pandas.DataFrame
        One row per view (0-based index ``view``), columns ``defocus_u``, ``defocus_v``
        (Å), and as the file holds them ``defocus_angle``, ``phase_shift`` (degrees),
        ``imod_cut_on_frequency`` (1/nm); NaN for views without a value of their own.

    Raises
    ------
    FormatError
        No version number, unknown flags, rows of the wrong width, view numbers below 1,
        reversed or beyond ``n_views``, two ranges whose middle is the same view.
    """
    p, lines = read_text_lines(path, what="IMOD defocus file")
    numbered = [(k, text) for k, text in enumerate(lines, 1) if text.split()]
    version, flags = _version_and_flags(p, numbered[0][1].split())
    fields = [f for f in DEFOCUS_COLUMNS if f[0] == 0 or flags & f[0]]
    names = [*_RANGE, *(f[1] for f in fields)]
    if version == 3:
        numbered = numbered[1:]
    else:  # version 2: the first data line carries the version as an extra field
        numbered[0] = (numbered[0][0], " ".join(numbered[0][1].split()[:5]))
    table = parse_numeric_rows(p, numbered, names=names, n_columns=len(names), what="IMOD defocus")
    line_of = [k for k, text in numbered if text.split()]
    views = table[:, :2]
    bad = ~((views == np.round(views)) & (views >= 1) & (views < 2**31) & (views[:, :1] <= views[:, 1:]))
    if n_views is not None:
        bad |= views > n_views
    if bad.any():
        row = int(np.argmax(bad.any(axis=1)))
        limit = f" <= {n_views}" if n_views is not None else ""
        raise FormatError(
            f"{p}, line {line_of[row]}: expected view numbers 1 <= start <= end{limit}, found "
            f"{views[row].tolist()}"
        )
    middle = ((views[:, 0] - 1 + views[:, 1] - 1) // 2).astype(np.int64)
    n = int(n_views if n_views is not None else views.max())
    out = {f[2]: np.full(n, np.nan) for f in fields}
    if not flags & 1:
        out[PTC.DEFOCUS_V] = np.full(n, np.nan)
    owner: dict[int, tuple[float, float]] = {}
    for row, view in enumerate(middle.tolist()):
        span = (float(views[row, 0]), float(views[row, 1]))
        if owner.setdefault(view, span) != span:
            raise FormatError(
                f"{p}, line {line_of[row]}: expected one range per middle view, found views "
                f"{span} and {owner[view]} both centred on view {view + 1}"
            )
        for k, (_, _, column, factor) in enumerate(fields):
            value = table[row, 4 + k] * factor
            if flags & _RADIANS.get(column, 0):
                value = float(np.rad2deg(value))
            out[column][view] = value
    if not flags & 1:
        out[PTC.DEFOCUS_V] = out[PTC.DEFOCUS_U].copy()
    order = [PTC.DEFOCUS_U, PTC.DEFOCUS_V, *(f[2] for f in fields[1:] if f[2] != PTC.DEFOCUS_V)]
    frame = pd.DataFrame({c: out[c] for c in order})
    frame.index.name = "view"
    return frame


def _text(value: float) -> str:
    text = repr(float(value))
    return "0.0" if text == "-0.0" else text


def defocus_file_lines(model: pd.DataFrame, where: str) -> list[str]:
    """A version-3 ``.defocus`` file for ``model``'s defocus columns, one line per view.

    Flags 1 (astigmatism) and, with those columns, 4 (``phase_shift``, degrees) and 32
    (``imod_cut_on_frequency``); views without a defocus (NaN) get no line. The range
    angles are the views' ``rotation_y``.

    Examples
    --------
    >>> from cryoxr import make_projection_model
    >>> m = make_projection_model(rotation_y=[0.0, 3.0], experiment_id="a", pixel_spacing=1.0,
    ...     extra={"defocus_u": [35000.0, 35100.0], "defocus_v": [34000.0, 34100.0],
    ...            "defocus_angle": [40.0, 41.0]})
    >>> defocus_file_lines(m, "a.defocus")
    ['1 0 0.0 0.0 0.0 3', '1 1 0.0 0.0 3500.0 3400.0 40.0', '2 2 3.0 3.0 3510.0 3410.0 41.0']
    """
    missing = [c for c in (PTC.DEFOCUS_U, PTC.DEFOCUS_V) if c not in model.columns]
    if missing:
        raise InvalidValueError(f"{where}: a defocus file needs column(s) {missing}; found none")
    columns = [PTC.DEFOCUS_U, PTC.DEFOCUS_V, PTC.DEFOCUS_ANGLE]
    astigmatic = ~np.isclose(model[PTC.DEFOCUS_U], model[PTC.DEFOCUS_V], rtol=0, atol=1e-9)
    if PTC.DEFOCUS_ANGLE not in model.columns and astigmatic.any():
        raise InvalidValueError(
            f"{where}: defocus_u and defocus_v differ (astigmatism) but there is no defocus_angle column"
        )
    flags = 1
    for flag, _, column, _ in DEFOCUS_COLUMNS[3:]:
        if column in model.columns:
            columns.append(column)
            flags |= flag
    values = {
        c: model[c].to_numpy(dtype=np.float64) if c in model.columns else np.zeros(len(model))
        for c in columns
    }
    angles = model[PMDL.ROTATION_Y].to_numpy(dtype=np.float64)
    lines = [f"{flags} 0 0.0 0.0 0.0 3"]
    for view in range(len(model)):
        row = [values[c][view] / (10.0 if c in (PTC.DEFOCUS_U, PTC.DEFOCUS_V) else 1.0) for c in columns]
        if np.isnan(row[0]):
            continue
        if not np.isfinite(row).all():
            raise InvalidValueError(
                f"{where}: view {view + 1} has a defocus but non-finite {dict(zip(columns, row, strict=True))}"
            )
        tilt = _text(angles[view])
        lines.append(" ".join([str(view + 1), str(view + 1), tilt, tilt, *map(_text, row)]))
    return lines
