"""Loop bodies of STAR files: split into pieces of whole lines, cleaned and parsed by pyarrow on
worker threads, kept in order (:func:`_parse_body`; :mod:`cryoxr.io.star._read` walks the rest).

Columns of a known numeric type are copied piece by piece into one growing array each
(the pieces' own buffers are dropped at once), and the pages of the memory-mapped file
are released as soon as their pieces are parsed: a 10^7-row body (2 GB) is never held
twice.
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cryoxr.errors import FormatError
from cryoxr.io.star._quoting import split_values

__all__ = ["STAR_THREADS"]

#: Worker threads that clean and parse the pieces of a loop body (one per core, at most 4).
STAR_THREADS = max(1, min(4, os.cpu_count() or 1))

#: (a table, the parser's error, or None for no rows; newlines; carriage return seen;
#: indices of the columns holding a quoted value)
_PieceResult = tuple[pa.Table | pa.ArrowInvalid | None, int, bool, set[int]]


def _trim_heap() -> None:
    """Give the C heap's freed pages back to the system (glibc's ``malloc_trim``; a no-op
    elsewhere): the pieces of a large body, parsed and freed, would otherwise stay
    resident until reused, and the PoseSet built next allocates elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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

    The calling thread only finds line boundaries; workers count, clean and parse (numpy
    and pyarrow release the GIL), and one more thread keeps the results in order (copies
    the numeric columns into their arrays), so every core works and memory holds a few
    cleaned pieces plus the parsed columns, never a copy of the file.
    """
    if scanner.finished:
        return body
    first = scanner.next_piece()
    if scanner.finished:  # one piece: no threads, and buffers of its own size
        body.remaining_bytes = len(first[0])
        body.add(_parse_piece(*first, names, column_types), len(first[0]))
        return body
    pending: deque[tuple[Future[_PieceResult], int, int]] = deque()
    kept: deque[Future[None]] = deque()  # body.add runs on `keeper` only: one at a time, in order

    with (
        ThreadPoolExecutor(max_workers=STAR_THREADS, thread_name_prefix="cryoxr-star") as executor,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="cryoxr-star-keep") as keeper,
    ):

        def collect() -> None:
            future, size, stop = pending.popleft()
            kept.append(keeper.submit(body.add, future.result(), size))
            scanner.release(stop)  # parsed: the piece's pages are no longer needed
            while len(kept) > STAR_THREADS or (kept and kept[0].done()):
                kept.popleft().result()

        piece: tuple[memoryview, bool] | None = first
        while piece is not None:
            future = executor.submit(_parse_piece, *piece, names, column_types)
            pending.append((future, len(piece[0]), scanner.stop))
            while len(pending) > STAR_THREADS or (pending and pending[0][0].done()):
                collect()
            piece = None if scanner.finished else scanner.next_piece()
        while pending:
            collect()
        while kept:
            kept.popleft().result()
    return body
