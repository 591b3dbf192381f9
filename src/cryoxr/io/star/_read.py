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

import contextlib
import ctypes
import io
import mmap
import os
import re
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cryoxr.errors import FormatError
from cryoxr.io._paths import STAR_LINE_MAX_BYTES, open_file
from cryoxr.io.star._block import LABEL_TYPES, StarBlock
from cryoxr.io.star._quoting import split_values

__all__ = ["STAR_THREADS", "read_star"]

#: Worker threads that clean and parse the pieces of a loop body (one per core, at most 4).
STAR_THREADS = max(1, min(4, os.cpu_count() or 1))

_ARROW_TYPES = {"float": pa.float64(), "int": pa.int64(), "str": pa.string()}
_KIND_NAMES = {"float": "a number", "int": "an integer"}
_VERSION = re.compile(r"#\s*version\s+(\d+)")
#: (a table, the parser's error, or None for no rows; newlines; carriage return seen;
#: indices of the columns holding a quoted value)
_PieceResult = tuple[pa.Table | pa.ArrowInvalid | None, int, bool, set[int]]
_CARRIAGE_RETURN = "carriage return (Windows CR+LF line endings); RELION rejects these, convert with dos2unix"


def _trim_heap() -> None:
    """Give the C heap's freed pages back to the system (glibc's ``malloc_trim``; a no-op
    elsewhere): the pieces of a large body, parsed and freed, would otherwise stay
    resident until reused, and the PoseSet built next allocates elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _fail(path: Path, line: int, message: str) -> FormatError:
    return FormatError(f"{path}, line {line}: {message}")


_scratch = threading.local()


def _scratch_masks(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Two reusable boolean buffers of ``size`` for this thread (no fresh pages per piece)."""
    masks: tuple[np.ndarray, np.ndarray] | None = getattr(_scratch, "masks", None)
    if masks is None or masks[0].size < size:
        masks = (np.empty(size, dtype=bool), np.empty(size, dtype=bool))
        _scratch.masks = masks
    return masks[0][:size], masks[1][:size]


def _clean_piece(piece: memoryview, n_columns: int) -> tuple[memoryview, int, bool]:
    """``piece`` (whole body lines) as single-space separated lines; also its newline
    count and whether it holds a carriage return.

    Single-byte scans decide: ``n_columns - 1`` blanks per line and none leading means
    the lines are clean already (returned without a copy; a line that is still ragged
    fails in the parser and is diagnosed there). Otherwise runs of blanks become one
    space (tabs count as blanks) and blanks at either end of a line become newlines,
    i.e. empty lines, which the parser skips: one compress per piece.
    """
    a = np.frombuffer(piece, dtype=np.uint8)
    if not a.size:
        return piece, 0, False
    first, second = _scratch_masks(a.size)
    lines = int(np.count_nonzero(np.equal(a, 10, out=first)))
    carriage_return = bool(np.equal(a, 13, out=first).any())
    tabs = bool(np.equal(a, 9, out=first).any())
    if tabs:
        a = np.where(first, np.uint8(32), a)
    blank = np.equal(a, 32, out=first)
    if a[0] != 32 and np.count_nonzero(blank) == lines * (n_columns - 1):
        return (a.data if tabs else piece), lines, carriage_return
    keep = second
    np.logical_and(blank[:-1], blank[1:], out=keep[:-1])  # a blank followed by a blank goes
    np.logical_not(keep[:-1], out=keep[:-1])
    keep[-1] = True
    out = a[keep]
    # newlines are sparse: look at the bytes on either side of each one only
    newlines = np.flatnonzero(out == 10)
    edges = np.concatenate([newlines - 1, newlines + 1, [0, out.size - 1]])
    edges = edges[(edges >= 0) & (edges < out.size)]
    out[edges[out[edges] == 32]] = 10
    return out.data, lines, carriage_return


class _BodyScanner:
    """One loop body as pieces of whole lines, up to the next line starting with
    ``data_`` or ``#`` (or the end of the file), over a read-only memory map of the file.

    Only line boundaries are found here (``find``/``rfind`` on the map); counting,
    cleaning and parsing a piece is :func:`_parse_piece`'s job, on a worker thread.
    Nothing is copied out of the page cache before it is cleaned.
    """

    piece_bytes = 1 << 24

    def __init__(self, handle: IO[bytes], start: int) -> None:
        self._map: mmap.mmap | None = None
        try:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._data: mmap.mmap | bytes = self._map
            self._base = 0  # file offset of self._data[0]
        except (OSError, ValueError, io.UnsupportedOperation):  # empty file, pipe, in-memory
            handle.seek(start)
            self._data = handle.read()
            self._base = start
        self._size = len(self._data)
        self.size = self._size + self._base  # file offset of the end of the data
        self._position = start - self._base
        self.start = start  # file offset of the body
        self.stop = start  # file offset just past the body (valid once finished)
        self.nul = -1  # file offset of a NUL byte found in the body
        self.finished = self._position >= self._size
        self._released = 0  # map offset up to which pages were dropped (see release)

    def next_piece(self) -> tuple[memoryview, bool]:
        """The next piece of whole lines (the last line may lack its newline), and
        whether it holds a quote character (then it is parsed value by value)."""
        data, position = self._data, self._position
        end = min(position + self.piece_bytes, self._size)
        nul = data.find(b"\0", position, end)
        if nul >= 0:  # not text (a binary or sparse file): stop here, not after gigabytes
            self.nul, self.finished, self.stop = nul + self._base, True, position + self._base
            return memoryview(data)[position:position], False
        cut = self._size
        if end < self._size:
            cut = data.rfind(b"\n", position, end) + 1
            if cut == 0:  # a line longer than a piece
                cut = data.find(b"\n", end) + 1 or self._size
        ends = [i for i in (self._line_start(b"data_", cut), self._line_start(b"#", cut)) if i >= 0]
        self.finished = cut >= self._size
        if ends:
            cut, self.finished = min(ends), True
        self._position = cut
        self.stop = cut + self._base
        quoted = data.find(b'"', position, cut) >= 0 or data.find(b"'", position, cut) >= 0
        return memoryview(data)[position:cut], quoted

    def _line_start(self, marker: bytes, cut: int) -> int:
        """Offset of the first line in ``[position, cut)`` that starts with ``marker``, or -1."""
        data, position = self._data, self._position
        i = data.find(marker, position, cut)
        while i > position and data[i - 1] != 10:
            i = data.find(marker, i + 1, cut)
        return i

    def release(self, stop: int) -> None:
        """Drop the map's pages before file offset ``stop`` (parsed already) from this
        process: they stay in the page cache, but a 2 GB body no longer counts twice in
        the reader's resident memory (once mapped, once parsed)."""
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        end = (stop - self._base) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > self._released:
            with contextlib.suppress(OSError, ValueError):
                self._map.madvise(mmap.MADV_DONTNEED, self._released, end - self._released)
            self._released = end

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view is still alive: the GC unmaps it
                self._map.close()


def _parse_piece(
    piece: memoryview, quoted: bool, names: list[str], column_types: dict[str, pa.DataType]
) -> _PieceResult:
    """Clean and parse one piece: (a table, the parser's error or None if no rows;
    newlines; carriage return seen; indices of columns with a quoted value)."""
    if quoted:
        return _parse_quoted_piece(piece, names, column_types)
    cleaned, lines, carriage_return = _clean_piece(piece, len(names))
    if not re.search(rb"\S", cleaned):
        return None, lines, carriage_return, set()
    block_size = 1 << 20
    while True:
        try:
            table = pacsv.read_csv(
                pa.py_buffer(cleaned),
                read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=block_size),
                parse_options=pacsv.ParseOptions(delimiter=" ", quote_char=False),
                convert_options=pacsv.ConvertOptions(
                    column_types=column_types,
                    null_values=[],
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                    true_values=[],
                    false_values=[],
                ),
                # malloc reuses the pages freed by earlier pieces; pyarrow's default pool
                # (mimalloc) kept asking the kernel for fresh ones (~2x the system time here)
                memory_pool=pa.system_memory_pool(),
            )
        except pa.ArrowInvalid as err:
            if "straddling" in str(err) and block_size < len(cleaned):  # a line longer than a block
                block_size = len(cleaned) + 1
                continue
            return err, lines, carriage_return, set()
        return table, lines, carriage_return, set()


def _parse_quoted_piece(
    piece: memoryview, names: list[str], column_types: dict[str, pa.DataType]
) -> _PieceResult:
    """A piece holding quote characters, split value by value by the STAR rules
    (:func:`~cryoxr.io.star._quoting.split_values`): exact, but a Python loop per line."""
    data = bytes(piece)
    lines, carriage_return = data.count(b"\n"), b"\r" in data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return pa.ArrowInvalid(f"not valid UTF-8 ({err.reason})"), lines, carriage_return, set()
    rows: list[list[str]] = []
    quoted_columns: set[int] = set()
    for line in text.split("\n"):
        try:
            values, quoted = split_values(line, path="", line=0)
        except FormatError as err:
            return pa.ArrowInvalid(str(err)), lines, carriage_return, set()
        if not values:
            continue
        if len(values) != len(names):
            return pa.ArrowInvalid(f"a row of {len(values)} values"), lines, carriage_return, set()
        rows.append(values)
        quoted_columns.update(i for i, q in enumerate(quoted) if q)
    if not rows:
        return None, lines, carriage_return, set()
    arrays = []
    for name, column in zip(names, zip(*rows, strict=True), strict=True):
        array = pa.array(column, pa.string())
        if column_types[name] != pa.string():
            try:
                array = pc.cast(array, column_types[name])
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                return pa.ArrowInvalid(str(err)), lines, carriage_return, set()
        arrays.append(array)
    return pa.table(dict(zip(names, arrays, strict=True))), lines, carriage_return, quoted_columns


@dataclass
class _ParsedBody:
    """The parsed pieces of a body, in order.

    Columns of a known numeric type (``numeric``: index -> numpy dtype) are copied piece
    by piece into one growing array each, and the piece's own buffers are dropped at once,
    so a 10^7-row body is never held twice (parsed pieces, then joined columns); the other
    columns (text, or typed by content later) stay as the pieces' arrow chunks.
    """

    numeric: dict[int, np.dtype[Any]]
    remaining_bytes: int = 0  # bytes from the body to the end of the file: sizes the buffers
    tables: list[pa.Table] = field(default_factory=list)
    buffers: dict[int, np.ndarray] = field(default_factory=dict)
    rows: int = 0
    error: pa.ArrowInvalid | None = None
    lines: int = 0
    carriage_return: bool = False
    quoted_columns: set[int] = field(default_factory=set)

    def add(self, result: _PieceResult, piece_bytes: int) -> None:
        parsed, lines, carriage_return, quoted_columns = result
        self.lines += lines
        self.carriage_return |= carriage_return
        self.quoted_columns |= quoted_columns
        if isinstance(parsed, pa.ArrowInvalid):
            self.error = self.error or parsed
        elif parsed is not None and self.error is None:
            self._keep(parsed, piece_bytes)

    def _keep(self, table: pa.Table, piece_bytes: int) -> None:
        n = table.num_rows
        numeric = list(self.numeric)  # known numeric labels: parsed as numbers, quoted or not
        if self.rows + n > min((b.size for b in self.buffers.values()), default=0):
            # rows per byte of this piece, times the bytes left (pages never written stay virtual)
            estimate = int(n / max(piece_bytes, 1) * self.remaining_bytes * 1.1) + n + 1024
            capacity = max(estimate, int(1.5 * (self.rows + n)))
            for i in self.numeric:
                grown = np.empty(capacity, dtype=self.numeric[i])
                if i in self.buffers:
                    grown[: self.rows] = self.buffers[i][: self.rows]
                self.buffers[i] = grown
        for i in numeric:
            column = table.column(i)
            out, at = self.buffers[i], self.rows
            for chunk in column.chunks:
                out[at : at + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
                at += len(chunk)
        self.rows += n
        self.remaining_bytes = max(self.remaining_bytes - piece_bytes, 0)
        others = [i for i in range(table.num_columns) if i not in numeric]
        self.tables.append(table.select(others).rename_columns([str(i) for i in others]))

    def column(self, i: int, arrow_type: pa.DataType) -> np.ndarray | pa.ChunkedArray:
        """Column ``i`` of every piece: a numpy array (numeric) or a chunked arrow array."""
        name = str(i)
        if self.tables and name in self.tables[0].column_names:
            return pa.chunked_array(
                [chunk for t in self.tables for chunk in t.column(name).chunks], type=arrow_type
            )
        return self.buffers[i][: self.rows]


def _parse_body(
    scanner: _BodyScanner, names: list[str], column_types: dict[str, pa.DataType], body: _ParsedBody
) -> _ParsedBody:
    """Parse every piece of a body, in order, :data:`STAR_THREADS` pieces at a time.

    The calling thread only finds line boundaries and keeps the results in order;
    workers count, clean and parse (numpy and pyarrow release the GIL), so every core
    works and memory holds a few cleaned pieces plus the parsed columns, never a copy of
    the file.
    """
    if scanner.finished:
        return body
    first = scanner.next_piece()
    if scanner.finished:  # one piece: no threads, and buffers of its own size
        body.remaining_bytes = len(first[0])
        body.add(_parse_piece(*first, names, column_types), len(first[0]))
        return body
    pending: deque[tuple[Future[_PieceResult], int, int]] = deque()

    def collect() -> None:
        future, size, stop = pending.popleft()
        body.add(future.result(), size)
        scanner.release(stop)

    with ThreadPoolExecutor(max_workers=STAR_THREADS, thread_name_prefix="cryoxr-star") as executor:
        piece: tuple[memoryview, bool] | None = first
        while piece is not None:
            future = executor.submit(_parse_piece, *piece, names, column_types)
            pending.append((future, len(piece[0]), scanner.stop))
            while len(pending) > STAR_THREADS or (pending and pending[0][0].done()):
                collect()
            piece = None if scanner.finished else scanner.next_piece()
        while pending:
            collect()
    return body


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
