"""Plain-text tables and the helpers every text-format reader and writer shares.

The parsers turn every broken file into a :class:`~cryoxr.errors.FormatError` naming the
file, the line, the column and what was expected, never a bare numpy or pandas
traceback; MATLAB complex cells (Dynamo) read as their real part when asked. The
readers of files that store no pixel size share :func:`require_pixel_spacing` (and so one
message, which the CLI turns into ``--pixel-spacing``); writers name the columns their
format cannot store with :func:`warn_unstored_columns`.

Examples
--------
>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "t.txt"
>>> _ = p.write_text("1 2\\n3 4\\n")
>>> read_numeric_table(p, names=["a", "b"], what="pairs")[1].tolist()
[[1.0, 2.0], [3.0, 4.0]]
"""

from __future__ import annotations

import functools
import io
import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryoxr.errors import CryoxrError, FormatError, InvalidValueError
from cryoxr.io._paths import TEXT_MAX_BYTES, PathLike, read_bytes
from cryoxr.projection_model import PMDL, make_projection_model

__all__ = [
    "MAX_IMAGINARY_PART",
    "PIXEL_SPACING_ADVICE",
    "data_row_line",
    "file_model",
    "parse_numeric_rows",
    "read_numeric_table",
    "read_text_lines",
    "require_pixel_spacing",
    "warn_unstored_columns",
]


# --------------------------------------------------------------------------------------
# shared text parsing
# --------------------------------------------------------------------------------------
def read_text_lines(path: PathLike, *, what: str, allow_empty: bool = False) -> tuple[Path, list[str]]:
    """Decode a UTF-8 text file into lines, or raise a FormatError naming the bad byte.

    Parameters
    ----------
    path
        The file.
    what
        What the file should be, for messages ("IMOD .xf", ...).

    Raises
    ------
    CryoxrFileNotFoundError
        ``path`` does not exist, or is not a regular file (a folder, a named pipe, a
        device): :func:`cryoxr.io._paths.read_bytes`.
    FormatError
        The file is empty or not UTF-8 text.
    """
    p = Path(path)
    # regular files only (a FIFO or a folder is refused at once), at most TEXT_MAX_BYTES
    data = read_bytes(p, what=what, max_bytes=TEXT_MAX_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise FormatError(
            f"{p}, line {line}: expected UTF-8 text ({what}), found byte 0x{data[err.start]:02x} "
            f"at byte offset {err.start}"
        ) from None
    if not text.strip() and not allow_empty:
        raise FormatError(f"{p}: expected a {what} file, found an empty file")
    return p, text.splitlines()


def data_row_line(path: Path, row: int) -> int:
    r"""1-based line number in ``path`` of data row ``row`` (0-based; blank lines skipped).

    The fast table reader drops blank lines, so a row index is not a line number; this
    re-reads the file, which only an error message needs.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.txt"
    >>> _ = p.write_text("1 2\n\n   \n3 4\n")
    >>> data_row_line(p, 0), data_row_line(p, 1)
    (1, 4)
    """
    # lines and blanks as read_numeric_table and parse_numeric_rows see them
    _, lines = read_text_lines(path, what="table", allow_empty=True)
    seen = -1
    for line_no, text in enumerate(lines, 1):
        if text.split():
            seen += 1
            if seen == row:
                return line_no
    raise ValueError(f"{path} has no data row {row}")


def _number(token: str, path: Path, line: int, column: int, name: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise FormatError(
            f"{path}, line {line}, column {column} ({name}): expected a number, found {token!r}"
        ) from None
    if not math.isfinite(value):
        raise FormatError(
            f"{path}, line {line}, column {column} ({name}): expected a finite number, found {token!r}"
        )
    return value


def parse_numeric_rows(
    path: Path,
    numbered_lines: Iterable[tuple[int, str]],
    *,
    names: Sequence[str] | Callable[[int], str],
    n_columns: int | None = None,
    min_columns: int | None = None,
    what: str,
) -> np.ndarray:
    """Parse whitespace-separated rows of finite numbers, checking every field.

    Parameters
    ----------
    path
        The file (for messages).
    numbered_lines
        ``(1-based line number, text)`` pairs; blank lines are skipped.
    names
        Column names (by 0-based index) for messages, or a function of the index.
    n_columns
        Exact number of columns every row must have; None: as many as the first row.
    min_columns
        Fewest columns allowed (with ``n_columns`` None).
    what
        What the file should be, for messages.

    Returns
    -------
    numpy.ndarray
        (rows, columns) float64.
    """

    def name_of(i: int) -> str:
        return names(i) if callable(names) else (names[i] if i < len(names) else f"column {i + 1}")

    rows: list[list[float]] = []
    expected = n_columns
    for line_no, text in numbered_lines:
        tokens = text.split()
        if not tokens:
            continue
        if expected is None:
            if min_columns is not None and len(tokens) < min_columns:
                raise FormatError(
                    f"{path}, line {line_no}: expected at least {min_columns} columns ({what}), "
                    f"found {len(tokens)}"
                )
            expected = len(tokens)
        if len(tokens) != expected:
            raise FormatError(
                f"{path}, line {line_no}: expected {expected} columns ({what}), found {len(tokens)}"
            )
        rows.append([_number(t, path, line_no, i + 1, name_of(i)) for i, t in enumerate(tokens)])
    if not rows:
        raise FormatError(f"{path}: expected rows of numbers ({what}), found none")
    return np.asarray(rows, dtype=np.float64)


_NUMBER = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
#: a MATLAB complex cell as ``num2str`` writes it: ``0+1.2074e-06i``, ``-3.5-2e-07i``, ``1e-06i``
_COMPLEX = re.compile(rf"(?<!\S)(?:([+-]?{_NUMBER})([+-]{_NUMBER})|([+-]?{_NUMBER}))[ij](?!\S)")
#: largest imaginary part read as rounding noise: MATLAB's ``acos`` of a cosine a few ulp
#: above 1 gives ``1.2074e-06i`` degrees (sqrt(2 eps) rad), which ``dwrite`` then writes
MAX_IMAGINARY_PART = 1e-3


def _real_parts(path: Path, lines: list[str], what: str) -> list[str]:
    """``lines`` with MATLAB complex cells replaced by their real part (imaginary part <= 1e-3)."""

    def real(match: re.Match[str], line_no: int, text: str) -> str:
        if match.group(1) is not None:
            real_part, imaginary = match.group(1), match.group(2)
        else:
            real_part, imaginary = "0", match.group(3)
        if abs(float(imaginary)) > MAX_IMAGINARY_PART:
            column = len(text[: match.start()].split()) + 1
            raise FormatError(
                f"{path}, line {line_no}, column {column}: expected a real number ({what}; a complex "
                f"cell's imaginary part up to {MAX_IMAGINARY_PART:g} is MATLAB rounding noise), found "
                f"{match.group(0)!r}"
            )
        return real_part

    out = list(lines)
    for k, text in enumerate(lines):
        if "i" in text or "j" in text:
            out[k] = _COMPLEX.sub(functools.partial(real, line_no=k + 1, text=text), text)
    return out


def read_numeric_table(
    path: PathLike,
    *,
    names: Sequence[str] | Callable[[int], str],
    n_columns: int | None = None,
    min_columns: int | None = None,
    what: str,
    allow_empty: bool = False,
    complex_cells: bool = False,
) -> tuple[Path, np.ndarray]:
    """Read a whole-file numeric table: a fast pandas pass, and a checking pass on trouble.

    Returns the path and a (rows, columns) float64 array; any defect raises the
    :class:`~cryoxr.errors.FormatError` of :func:`parse_numeric_rows`. With
    ``allow_empty``, a file of blank lines is a table of 0 rows (shape ``(0, 0)``). With
    ``complex_cells``, MATLAB complex cells (``0+1.2074e-06i``) read as their real part
    when the imaginary part is at most :data:`MAX_IMAGINARY_PART` (rounding noise), and
    are refused otherwise.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.tbl"
    >>> _ = p.write_text("1 0+1.2074e-06i 3\\n")
    >>> read_numeric_table(p, names=["a", "b", "c"], what="table", complex_cells=True)[1].tolist()
    [[1.0, 0.0, 3.0]]
    """
    p, lines = read_text_lines(path, what=what, allow_empty=allow_empty)
    if complex_cells:
        lines = _real_parts(p, lines, what)
    if allow_empty and not any(line.strip() for line in lines):
        return p, np.zeros((0, 0))
    text = "\n".join(lines)
    array: np.ndarray | None = None
    try:
        frame = pd.read_csv(io.StringIO(text), sep=r"\s+", header=None, dtype=np.float64, engine="c")
        array = frame.to_numpy(dtype=np.float64)
    except (ValueError, OverflowError, pd.errors.ParserError, pd.errors.EmptyDataError):
        # (OverflowError: pandas' C parser on a 400-digit integer) the slow pass says what is wrong
        array = None
    ok = (
        array is not None
        and array.ndim == 2
        and array.shape[0] > 0
        and (n_columns is None or array.shape[1] == n_columns)
        and (min_columns is None or array.shape[1] >= min_columns)
        and bool(np.isfinite(array).all())
    )
    if ok and array is not None:
        return p, array
    # slow pass: find the first bad line and say what is wrong with it
    return p, parse_numeric_rows(
        p, enumerate(lines, 1), names=names, n_columns=n_columns, min_columns=min_columns, what=what
    )


# --------------------------------------------------------------------------------------
# pixel size and models of files that store none
# --------------------------------------------------------------------------------------
#: the pixel-size advice of the readers of files that store none (``{of}``: of what)
PIXEL_SPACING_ADVICE = "pass pixel_spacing= (Å per pixel of {of})"


def require_pixel_spacing(
    pixel_spacing: float | None, path: PathLike, what: str, *, of: str = "the tilt images"
) -> float:
    """``pixel_spacing`` as a float, or the InvalidValueError of a file that stores none.

    ``what`` names the format (``"IMOD .xf"``), ``of`` what the pixels are of.

    Examples
    --------
    >>> require_pixel_spacing(1.35, "a.xf", "IMOD .xf")
    1.35
    >>> require_pixel_spacing(None, "a.xf", "IMOD .xf")
    Traceback (most recent call last):
    ...
    cryoxr.errors.InvalidValueError: a.xf: IMOD .xf files store no pixel size; pass pixel_spacing= \
(Å per pixel of the tilt images)
    """
    if pixel_spacing is None:
        advice = PIXEL_SPACING_ADVICE.format(of=of)
        raise InvalidValueError(f"{path}: {what} files store no pixel size; {advice}")
    try:
        value = float(pixel_spacing)
    except (TypeError, ValueError):
        raise InvalidValueError(
            f"{path}: pixel_spacing must be a number of Å, found {pixel_spacing!r}"
        ) from None
    if not (np.isfinite(value) and value > 0):
        raise InvalidValueError(
            f"{path}: pixel_spacing must be a finite number of Å > 0, found {pixel_spacing!r}"
        )
    return value


def file_model(
    path: Path,
    geometry: dict[str, Any],
    *,
    experiment_id: str | None,
    pixel_spacing: float,
    extra: dict[str, Any],
    attrs: dict[str, Any],
) -> pd.DataFrame:
    """The ProjectionModel of an alignment file: experiment id = the file's stem unless given.

    ``geometry`` holds the ``rotation_*``, ``dx``, ``dy`` values; ``attrs`` go to ``df.attrs``.
    """
    try:
        df = make_projection_model(
            **geometry,
            experiment_id=experiment_id if experiment_id is not None else path.stem,
            pixel_spacing=pixel_spacing,
            source=str(path),
            extra=extra,
        )
    except CryoxrError as err:  # a value of the file the model refuses: say which file
        if str(path) in str(err):
            raise
        raise type(err)(f"{path}: {err}") from None
    df.attrs.update(attrs)
    return df


# --------------------------------------------------------------------------------------
# writers: what a format cannot store
# --------------------------------------------------------------------------------------
def warn_unstored_columns(
    model: pd.DataFrame, stored: Iterable[str], where: str, *, stacklevel: int = 2
) -> list[str]:
    """Warn, naming them, about ``model``'s columns a writer cannot store; returns them.

    Parameters
    ----------
    model
        The table being written.
    stored
        Columns the format keeps (cryotypes' seven need not be listed).
    where
        The output and format, for the message (``"ts.xf (IMOD .xf/.tlt)"``).

    Examples
    --------
    >>> import warnings, pandas as pd
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_unstored_columns(pd.DataFrame({"dx": [0.0], "dose": [3.0]}), ["dx"], "a.xf")
    ['dose']
    >>> print(caught[0].message)
    a.xf cannot store column(s) ['dose']: they are not written
    """
    keep = {*PMDL.ALL, *stored}
    lost = [str(c) for c in model.columns if c not in keep]
    if lost:
        warnings.warn(
            f"{where} cannot store column(s) {lost}: they are not written", stacklevel=stacklevel + 1
        )
    return lost
