"""One door to every pose and alignment format: dispatch by suffix, then by content.

================  ==========================  ==========================================
suffix            reader                      module
================  ==========================  ==========================================
``.star``         particles / tilt series     :mod:`cryoxr.io.relion` (RELION)
``.tbl``          particles                   :mod:`cryoxr.io.dynamo` (Dynamo table)
``.xf`` + ``.tlt``  alignment                 :mod:`cryoxr.io.imod` (IMOD; sibling ``.tlt``)
``.aln``          alignment                   :mod:`cryoxr.io.aretomo` (AreTomo)
================  ==========================  ==========================================

A file with another suffix is recognised by its first lines (``data_`` / ``loop_`` ->
STAR, ``# AreTomo Alignment`` -> AreTomo, 6 numbers a line -> IMOD ``.xf``, 26 or more
numbers a line -> Dynamo table). Readers are imported when first needed, so this module
works whichever format modules are installed.

The module also holds the small text-parsing helpers the plain-text readers share: they
turn every broken file into a :class:`~cryoxr.errors.FormatError` naming the file, the
line, the column and what was expected, never a bare numpy or pandas traceback.

Examples
--------
>>> import tempfile, pathlib
>>> from cryoxr.io.tables import read_alignment
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "TS_01.xf").write_text("0.0871557 0.9961947 -0.9961947 0.0871557 9.526 5.853\\n")
>>> _ = (folder / "TS_01.tlt").write_text("30.0\\n")
>>> read_alignment(folder / "TS_01.xf")[["rotation_y", "rotation_z"]].round(4).values.tolist()
[[30.0, 85.0]]
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from cryoxr.errors import CryoxrFileNotFoundError, FormatError, UnknownFormatError
from cryoxr.io._paths import TEXT_MAX_BYTES, read_bytes

__all__ = ["KNOWN_ALIGNMENT_FORMATS", "KNOWN_POSE_FORMATS", "read_alignment", "read_poses"]

PathLike = str | os.PathLike[str]


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


def read_numeric_table(
    path: PathLike,
    *,
    names: Sequence[str] | Callable[[int], str],
    n_columns: int | None = None,
    min_columns: int | None = None,
    what: str,
    allow_empty: bool = False,
) -> tuple[Path, np.ndarray]:
    """Read a whole-file numeric table: a fast pandas pass, and a checking pass on trouble.

    Returns the path and a (rows, columns) float64 array; any defect raises the
    :class:`~cryoxr.errors.FormatError` of :func:`parse_numeric_rows`. With
    ``allow_empty``, a file of blank lines is a table of 0 rows (shape ``(0, 0)``).
    """
    p, lines = read_text_lines(path, what=what, allow_empty=allow_empty)
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
# dispatch
# --------------------------------------------------------------------------------------
#: suffix -> (module, reader) for particle poses
KNOWN_POSE_FORMATS: dict[str, tuple[str, str]] = {
    ".star": ("cryoxr.io.relion", "read_relion_particles"),
    ".tbl": ("cryoxr.io.dynamo", "read_dynamo_table"),
}
#: suffix -> (module, reader) for tilt-series alignments
KNOWN_ALIGNMENT_FORMATS: dict[str, tuple[str, str]] = {
    ".star": ("cryoxr.io.relion", "read_relion_tilt_series"),
    ".xf": ("cryoxr.io.imod", "read_imod_alignment"),
    ".aln": ("cryoxr.io.aretomo", "read_aretomo_alignment"),
}


def _sniff(path: Path) -> str | None:
    """Guess a suffix from the first non-blank, non-comment lines of ``path``."""
    try:
        with path.open("rb") as fh:
            head = fh.read(65536).decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = [ln.strip() for ln in head.splitlines() if ln.strip()]
    if not lines:
        return None
    if lines[0].startswith("# AreTomo Alignment"):
        return ".aln"
    for ln in lines[:50]:
        if ln.startswith(("data_", "loop_", "_rln")):
            return ".star"
    numeric = [ln for ln in lines[:5] if not ln.startswith("#")]
    if not numeric:
        return None
    try:
        widths = {len([float(t) for t in ln.split()]) for ln in numeric[:-1] or numeric}
    except ValueError:
        return None
    if widths == {6}:
        return ".xf"
    if len(widths) == 1 and min(widths) >= 26:
        return ".tbl"
    return None


def _reader(path: PathLike, table: dict[str, tuple[str, str]], kind: str) -> tuple[Path, Callable[..., Any]]:
    import importlib

    p = Path(path)
    if not p.exists():
        raise CryoxrFileNotFoundError(f"{p}: no such file")
    known = ", ".join(f"{suffix} ({module.rsplit('.', 1)[1]})" for suffix, (module, _) in table.items())
    suffix = p.suffix.lower()
    if suffix not in table:
        sniffed = _sniff(p) if p.is_file() else None
        if sniffed is None or sniffed not in table:
            found = f"content that looks like {sniffed}" if sniffed else "content cryoxr does not recognise"
            raise UnknownFormatError(
                f"{p}: cannot tell the {kind} format from suffix {p.suffix!r} or {found}; known: {known}"
            )
        suffix = sniffed
    module_name, function_name = table[suffix]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UnknownFormatError(
            f"{p}: the {suffix} reader ({module_name}) is not available here ({err}); known: {known}"
        ) from None
    return p, getattr(module, function_name)


def read_poses(path: PathLike, **kwargs: Any) -> xr.Dataset:
    """Read particle poses from any known format into a PoseSet.

    Parameters
    ----------
    path
        A RELION ``.star`` particle file or a Dynamo ``.tbl``; other suffixes are
        recognised by content. A RELION 5 file (centred coordinates) takes the tomogram
        sizes from ``tomograms=`` or, when not given, from a ``tomograms.star`` beside it.
    **kwargs
        Passed on to the format's reader (e.g. ``tomogram_map=`` for Dynamo).

    Returns
    -------
    xarray.Dataset
        The PoseSet.

    Raises
    ------
    UnknownFormatError
        The format is not recognised; the message lists the known ones.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "p.tbl").write_text(" ".join(["1"] * 35) + "\\n")
    >>> read_poses(folder / "p.tbl").sizes["particle"]
    1
    """
    p, reader = _reader(path, KNOWN_POSE_FORMATS, "pose")
    if reader.__name__ == "read_relion_particles" and kwargs.get("tomograms") is None:
        sibling = p.with_name("tomograms.star")
        if _needs_tomogram_sizes(p) and sibling.is_file():
            # RELION 5 keeps sizes in tomograms.star: use the one beside the particles
            kwargs["tomograms"] = sibling
    result: xr.Dataset = reader(p, **kwargs)
    return result


def _needs_tomogram_sizes(path: Path) -> bool:
    """A RELION 5 particle file: centred coordinates, which need the tomogram sizes."""
    with path.open("rb") as handle:
        return b"_rlnCenteredCoordinateXAngst" in handle.read(1 << 16)


def read_alignment(path: PathLike, **kwargs: Any) -> pd.DataFrame:
    """Read a tilt-series alignment from any known format into a ProjectionModel.

    Parameters
    ----------
    path
        An IMOD ``.xf`` (its sibling ``.tlt`` is read too, and ``.xtilt`` if present and
        no ``xtilt=`` is given), an AreTomo ``.aln``, or a RELION ``tomograms.star``.
    **kwargs
        Passed on to the format's reader.

    Returns
    -------
    pandas.DataFrame
        The ProjectionModel; ``df.attrs`` holds the centres the tool uses.

    Raises
    ------
    UnknownFormatError
        The format is not recognised; the message lists the known ones.
    CryoxrFileNotFoundError
        An IMOD ``.xf`` without its sibling ``.tlt``.
    """
    p, reader = _reader(path, KNOWN_ALIGNMENT_FORMATS, "alignment")
    if reader.__name__ == "read_imod_alignment":
        tlt = p.with_suffix(".tlt")
        if not tlt.is_file():
            raise CryoxrFileNotFoundError(
                f"{p}: an IMOD .xf needs its tilt angles; expected the sibling {tlt.name}, found none"
            )
        xtilt = p.with_suffix(".xtilt")
        if "xtilt" not in kwargs and xtilt.is_file():
            kwargs["xtilt"] = xtilt
        result: pd.DataFrame = reader(p, tlt, **kwargs)
        return result
    result = reader(p, **kwargs)
    return result
