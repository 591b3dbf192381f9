"""The STAR reader: header lines walked in Python, loop bodies parsed by pyarrow.

Only the header lines are walked in Python; each loop body is handed in one piece to
pyarrow's CSV parser with the known column names and types (:data:`LABEL_TYPES`). The
body is read from a memory map in pieces of whole lines that :data:`STAR_THREADS` worker
threads clean and parse. Bodies padded with runs of blanks (RELION's own alignment) are
first squeezed to single spaces with vectorised numpy byte operations (one compress per
chunk), so a RELION file and a file written by cryoxr parse the same way. A piece that
holds a quote character (``"`` or ``'``) is instead split value by value by the STAR rules
(:func:`~cryoxr.io.star._quoting.split_values`: blanks, tabs and quotes inside a quoted
value are kept exactly; slower, a Python loop per line, but only where quotes occur). A
column with a quoted value is text, whatever its values look like. A body the parser
refuses is walked again line by line, only to name the first bad line and column.

Simple blocks (``_label value``) take exactly one value per label, quoted by the same
rules; a quoted value of a label :data:`LABEL_TYPES` does not know is text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cryoxr.errors import FormatError
from cryoxr.io._paths import STAR_LINE_MAX_BYTES, open_file
from cryoxr.io.star._block import LABEL_TYPES, StarBlock
from cryoxr.io.star._body import (
    STAR_THREADS,
    _BodyScanner,
    _parse_body,
    _ParsedBody,
    _trim_heap,
)
from cryoxr.io.star._quoting import split_values

__all__ = ["STAR_THREADS", "read_star"]

_ARROW_TYPES = {"float": pa.float64(), "int": pa.int64(), "str": pa.string()}
_KIND_NAMES = {"float": "a number", "int": "an integer"}
_VERSION = re.compile(r"#\s*version\s+(\d+)")
_CARRIAGE_RETURN = "carriage return (Windows CR+LF line endings); RELION rejects these, convert with dos2unix"


def _fail(path: Path, line: int, message: str) -> FormatError:
    return FormatError(f"{path}, line {line}: {message}")


def _diagnose(path: Path, body: bytes, first_line: int, labels: Sequence[str], kinds: Sequence[str]) -> None:
    """Find the first bad row of a loop body the fast parser refused (slow, errors only)."""
    for offset, raw_line in enumerate(body.split(b"\n")):
        line = first_line + offset
        try:
            raw = raw_line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _fail(path, line, f"not valid UTF-8 ({err.reason})") from None
        tokens, _ = split_values(raw, path=path, line=line)
        if not tokens:
            continue
        if len(tokens) != len(labels):
            raise _fail(
                path,
                line,
                f"expected {len(labels)} values (one per label), found {len(tokens)}: {raw.strip()[:80]!r}",
            )
        for token, label, kind in zip(tokens, labels, kinds, strict=True):
            if kind in _KIND_NAMES:
                try:
                    (float if kind == "float" else int)(token)
                except ValueError:
                    raise FormatError(
                        f"{path}, line {line}, column {label}: expected {_KIND_NAMES[kind]}, found {token!r}"
                    ) from None


def _infer(column: pa.ChunkedArray) -> pa.ChunkedArray:
    for target in (pa.int64(), pa.float64()):
        try:
            return pc.cast(column, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return column


def _to_pandas(column: pa.ChunkedArray) -> Any:
    if not pa.types.is_string(column.type):
        return column.to_numpy()
    return column.to_pandas()


def _empty_table(labels: list[str], kinds: list[str]) -> pd.DataFrame:
    dtypes = {"float": np.float64, "int": np.int64}
    return pd.DataFrame(
        {label: pd.Series(dtype=dtypes.get(kind, object)) for label, kind in zip(labels, kinds, strict=True)}
    )


def _read_loop_body(
    path: Path, handle: IO[bytes], first_line: int, labels: list[str]
) -> tuple[pd.DataFrame, int, int]:
    """Parse the loop body at the handle's position; return (table, stop offset, lines)."""
    kinds = [LABEL_TYPES.get(label, "") for label in labels]
    names = [f"c{i}" for i in range(len(labels))]
    column_types = {
        name: _ARROW_TYPES.get(kind, pa.string()) for name, kind in zip(names, kinds, strict=True)
    }
    scanner = _BodyScanner(handle, handle.tell())
    numeric = {
        i: np.dtype(np.float64 if kind == "float" else np.int64)
        for i, kind in enumerate(kinds)
        if kind in ("float", "int")
    }
    body = _ParsedBody(numeric, remaining_bytes=max(scanner.size - scanner.start, 0))
    try:
        _parse_body(scanner, names, column_types, body)
    finally:
        scanner.close()
    if scanner.nul >= 0:
        handle.seek(scanner.start)
        line = first_line + handle.read(scanner.nul - scanner.start).count(b"\n")
        raise _fail(path, line, "a NUL byte: expected STAR text (a binary or sparse file?)")
    if body.carriage_return:
        raise _fail(path, first_line, _CARRIAGE_RETURN)
    if body.error is None and not body.tables:
        return _empty_table(labels, kinds), scanner.stop, body.lines
    if body.error is not None:
        handle.seek(scanner.start)
        _diagnose(path, handle.read(scanner.stop - scanner.start), first_line, labels, kinds)
        raise _fail(path, first_line, f"cannot parse the loop body of {len(labels)} columns ({body.error})")
    pieces = len(body.tables)
    text = [i in body.quoted_columns for i in range(len(names))]

    def convert(i: int) -> Any:
        column = body.column(i, column_types[names[i]])
        if isinstance(column, np.ndarray):
            return column
        # a column with a quoted value is text, whatever its values look like
        return _to_pandas(column if kinds[i] or text[i] else _infer(column))

    if pieces == 1 or body.rows < 1 << 16:
        converted = [convert(i) for i in range(len(names))]
    else:  # joining the pieces of a text column copies: one column per core
        with ThreadPoolExecutor(max_workers=STAR_THREADS, thread_name_prefix="cryoxr-star") as executor:
            converted = list(executor.map(convert, range(len(names))))
    body.tables.clear()
    if pieces > 1:
        _trim_heap()
    return pd.DataFrame(dict(zip(labels, converted, strict=True)), copy=False), scanner.stop, body.lines


def _typed_value(path: Path, line: int, label: str, text: str, quoted: bool) -> Any:
    """A simple block's value: typed by its label, else (unquoted) by content as in loops."""
    kind = LABEL_TYPES.get(label, "")
    if kind == "str" or (quoted and not kind):
        return text
    if kind:
        try:
            return {"int": int, "float": float}[kind](text)
        except ValueError:
            raise FormatError(
                f"{path}, line {line}, column {label}: expected {_KIND_NAMES[kind]}, found {text!r}"
            ) from None
    inferred = _infer(pa.chunked_array([pa.array([text], pa.string())]))
    return inferred.to_pylist()[0]


def read_star(path: str | os.PathLike[str]) -> dict[str, StarBlock]:
    """Read every data block of a STAR file, in file order.

    Parameters
    ----------
    path
        The STAR file.

    Returns
    -------
    dict of str to StarBlock
        Block name -> block. Known labels (:data:`LABEL_TYPES`) get their type
        (float64, int64, str); other columns are typed by content.

    Raises
    ------
    CryoxrFileNotFoundError
        No such file, or not a regular file (a folder, a named pipe, a device: refused at
        once, see :mod:`cryoxr.io._paths`).
    FormatError
        A malformed file; the message names the file, the line (and column) and what was
        expected.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "bad.star"
    >>> _ = path.write_text("data_particles\\n_rlnAngleRot #1\\n_rlnAngleTilt #2\\n 1.0 2.0\\n")
    >>> read_star(path)
    Traceback (most recent call last):
    ...
    cryoxr.errors.FormatError: .../bad.star, line 2: _rlnAngleRot #1 in block data_particles is a loop \
column (missing loop_?)
    """
    path = Path(path)
    handle, _ = open_file(path, what="STAR")  # regular files only: a FIFO is refused, never waited on
    with handle:
        return _read_blocks(path, handle)


def _readline(path: Path, handle: IO[bytes], line_no: int) -> bytes:
    """One line outside a loop body, at most :data:`STAR_LINE_MAX_BYTES` (a file of NUL bytes,
    sparse and of any size, has one endless first line: its memory stays bounded)."""
    raw_line = handle.readline(STAR_LINE_MAX_BYTES + 1)
    if len(raw_line) > STAR_LINE_MAX_BYTES:
        raise _fail(path, line_no, f"longer than {STAR_LINE_MAX_BYTES} bytes: not a STAR header line")
    return raw_line


def _read_blocks(path: Path, handle: IO[bytes]) -> dict[str, StarBlock]:
    blocks: dict[str, StarBlock] = {}
    line_no = 0
    version: int | None = None
    name = ""
    pairs: dict[str, Any] | None = None  # the simple block being filled
    block_version: int | None = None

    def finish_simple() -> None:
        if pairs is not None:
            blocks[name] = StarBlock(
                name, pd.DataFrame({k: [v] for k, v in pairs.items()}), False, block_version
            )

    while True:
        start = handle.tell()
        raw_line = _readline(path, handle, line_no + 1)
        if not raw_line:
            break
        line_no += 1
        if raw_line.find(b"\r") >= 0:
            raise _fail(path, line_no, _CARRIAGE_RETURN)
        try:
            text = raw_line.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise _fail(path, line_no, f"not valid UTF-8 ({err.reason})") from None
        if not text:
            continue
        if text.startswith("#"):
            match = _VERSION.match(text)
            if match:
                version = int(match.group(1))
        elif text.startswith("data_"):
            finish_simple()
            name = text[5:].split()[0] if len(text) > 5 else ""
            if name in blocks:
                raise _fail(path, line_no, f"block data_{name} appears twice")
            pairs, block_version, version = {}, version, None
        elif pairs is None:
            raise _fail(path, line_no, f"expected 'data_<name>' or a comment, found {text[:80]!r}")
        elif text == "loop_":
            if pairs:
                raise _fail(path, line_no, f"loop_ after '_label value' pairs in block data_{name}")
            labels: list[str] = []
            while True:  # the labels
                start = handle.tell()
                raw_line = _readline(path, handle, line_no + 1)
                stripped = raw_line.strip()
                if not stripped.startswith(b"_"):
                    break
                line_no += 1
                label = stripped.split()[0][1:].decode("utf-8", errors="replace")
                if label in labels:
                    raise _fail(path, line_no, f"label _{label} appears twice in block data_{name}")
                labels.append(label)
            if not labels:
                raise _fail(path, line_no, f"loop_ in block data_{name} has no _labels")
            handle.seek(start)
            table, stop, lines = _read_loop_body(path, handle, line_no + 1, labels)
            blocks[name] = StarBlock(name, table, True, block_version)
            handle.seek(stop)
            line_no += lines
            pairs = None
        elif text.startswith("_"):
            line_text = raw_line.decode("utf-8").rstrip("\n")
            label = line_text.split(None, 1)[0][1:]
            if label in pairs:
                raise _fail(path, line_no, f"label _{label} appears twice in block data_{name}")
            after = line_text.lstrip()[len(label) + 1 :]
            if after.strip().startswith("#"):
                raise _fail(
                    path,
                    line_no,
                    f"_{label} {after.strip()} in block data_{name} is a loop column (missing loop_?)",
                )
            values, quoted = split_values(after, path=path, line=line_no)
            if not values:
                raise _fail(path, line_no, f"_{label} in block data_{name} has no value (missing loop_?)")
            if len(values) > 1:
                raise _fail(
                    path,
                    line_no,
                    f"_{label} in block data_{name}: expected one value, found {len(values)}: {after.strip()[:80]!r} "
                    "(quote a value that holds blanks)",
                )
            pairs[label] = _typed_value(path, line_no, label, values[0], quoted[0])
        else:
            raise _fail(
                path,
                line_no,
                f"expected '_label value' or 'loop_' in block data_{name}, found {text[:80]!r} (missing loop_?)",
            )
    finish_simple()
    return blocks
