"""The STAR writer: whole columns formatted at once, never a row loop in Python.

Every column is formatted at once (pyarrow casts; floats in the shortest form that reads
back to the same float64) and the rows are joined in pyarrow, in chunks of
:data:`WRITE_CHUNK_ROWS` rows, so memory stays bounded. Text is quoted by the rules of
:mod:`cryoxr.io.star._quoting` (empty, white space, ``#``, quote characters, label, block
and other reserved lookalikes, numbers in a text column), so that every value written reads
back identically; a value no STAR file can hold (a line break) is refused with
:class:`~cryoxr.errors.InvalidValueError`. Labels and block names must be non-empty runs of
non-blank characters (block names may be empty). Missing text (None, NaN in a text column)
is written as an empty string.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cryoxr.errors import FormatError, InvalidValueError
from cryoxr.io._atomic import atomic_path
from cryoxr.io.star._block import StarBlock
from cryoxr.io.star._quoting import format_text

__all__ = ["WRITE_CHUNK_ROWS", "format_block_header", "format_rows", "write_star", "write_star_blocks"]

#: rows formatted per pyarrow call when writing (bounds the writer's memory)
WRITE_CHUNK_ROWS = 1 << 18


def _as_arrow(values: Any, label: str) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    try:
        if isinstance(values, pd.Series | pd.Index) and not pd.api.types.is_numeric_dtype(values.dtype):
            return pa.array(values, from_pandas=True)  # arrow-backed text: no copy
        arr = np.asarray(values)
        if arr.dtype.kind == "b":
            arr = arr.astype(np.int64)
        try:
            return pa.array(arr)  # NaN stays a float NaN, never a null
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pa.array(arr.astype(str))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as err:
        raise InvalidValueError(
            f"STAR column {label}: expected numbers or text, found values pyarrow cannot convert ({err})"
        ) from None


def _format_column(values: Any, label: str = "") -> pa.Array | pa.ChunkedArray:
    """One column as text, vectorised: shortest round-trip floats, ints, quoted strs."""
    array = _as_arrow(values, label)
    if pa.types.is_floating(array.type):
        array = pc.cast(array, pa.float64())
        text = pc.cast(array, pa.string())
        numbers = np.asarray(array)
        integral = np.isfinite(numbers) & (numbers == np.trunc(numbers))
        if not integral.any():
            return text
        # keep integral floats recognisable as floats ("1000.0", not "1000")
        plain = pc.and_(pa.array(integral), pc.invert(pc.match_substring(text, "e")))
        return pc.if_else(plain, pc.binary_join_element_wise(text, ".0", ""), text)
    if pa.types.is_integer(array.type) or pa.types.is_boolean(array.type):
        try:
            return pc.cast(pc.cast(array, pa.int64()), pa.string())
        except pa.ArrowInvalid as err:
            raise InvalidValueError(f"STAR column {label}: expected 64-bit integers, found {err}") from None
    return format_text(pc.fill_null(pc.cast(array, pa.string()), ""), label)


def format_rows(columns: Mapping[str, Any]) -> bytes:
    """The loop-body lines of ``columns`` (label -> values), formatted without a row loop.

    Floats are written in the shortest form that reads back to the same float64
    (``1.35``, ``1000.0``, ``1e-07``); text with blanks or quotes is double-quoted.

    Examples
    --------
    >>> format_rows({"rlnTomoName": ["a b", "c"], "rlnAngleRot": [1.0, 0.1 + 0.2]})
    b'"a b" 1.0\\nc 0.30000000000000004\\n'
    """
    return bytes(_format_rows_buffer(columns))


def _format_rows_buffer(columns: Mapping[str, Any]) -> memoryview:
    """:func:`format_rows` without the final copy (columns formatted on two threads)."""
    values = list(columns.values())
    if not values:
        return memoryview(b"")
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="cryoxr-star") as pool:
        texts = list(pool.map(_format_column, values, [str(label) for label in columns]))
    if len(texts[0]) == 0:
        return memoryview(b"")
    texts[-1] = pc.binary_join_element_wise(texts[-1], "\n", "")
    lines = pc.binary_join_element_wise(*texts, " ") if len(texts) > 1 else texts[-1]
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    width = np.int64 if pa.types.is_large_string(lines.type) else np.int32
    offsets = np.frombuffer(lines.buffers()[1], dtype=width)[lines.offset : lines.offset + len(lines) + 1]
    return memoryview(lines.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


def format_block_header(block: StarBlock) -> str:
    """The text before the rows: version line, ``data_`` line, ``loop_`` and labels.

    Examples
    --------
    >>> import pandas as pd
    >>> print(format_block_header(StarBlock("optics", pd.DataFrame({"rlnOpticsGroup": [1]}))))
    <BLANKLINE>
    data_optics
    <BLANKLINE>
    loop_
    _rlnOpticsGroup #1
    <BLANKLINE>
    """
    _check_names(block)
    head = f"\n# version {block.version}\n\n" if block.version is not None else "\n"
    head += f"data_{block.name}\n\n"
    if not block.loop:
        return head
    return head + "loop_\n" + "".join(f"_{label} #{i + 1}\n" for i, label in enumerate(block.table.columns))


def _check_names(block: StarBlock) -> None:
    """Block names and labels that read back as written: no white space, labels non-empty and unique."""
    name = str(block.name)
    if any(ch.isspace() for ch in name):
        raise InvalidValueError(
            f"STAR block name {name!r}: expected no white space (it ends at the first blank)"
        )
    labels = [str(label) for label in block.table.columns]
    for label in labels:
        if not label or any(ch.isspace() for ch in label):
            raise InvalidValueError(
                f"STAR block data_{name}: label {label!r}: expected a non-empty label without white space"
            )
    if len(set(labels)) != len(labels):
        twice = sorted({label for label in labels if labels.count(label) > 1})
        raise InvalidValueError(f"STAR block data_{name}: labels {twice} appear more than once")


def _simple_body(block: StarBlock) -> str:
    if len(block.table) != 1:
        raise FormatError(f"simple block data_{block.name}: expected one row, found {len(block.table)}")
    width = max((len(str(c)) for c in block.table.columns), default=0) + 2
    lines = []
    for label in block.table.columns:
        value = format_rows({label: block.table[label]}).decode("utf-8").rstrip("\n")
        lines.append(f"_{label:<{width}}{value}\n")
    return "".join(lines)


def _write_loop_rows(handle: IO[bytes], table: pd.DataFrame) -> None:
    for start in range(0, len(table), WRITE_CHUNK_ROWS):
        part = table.iloc[start : start + WRITE_CHUNK_ROWS]
        handle.write(_format_rows_buffer({str(c): part[c] for c in part.columns}))


def write_star_blocks(handle: IO[bytes], blocks: Iterable[StarBlock]) -> None:
    """Write blocks to an open binary handle (used by :func:`write_star`)."""
    for block in blocks:
        handle.write(format_block_header(block).encode("utf-8"))
        if block.loop:
            _write_loop_rows(handle, block.table)
        else:
            handle.write(_simple_body(block).encode("utf-8"))


def write_star(
    blocks: Sequence[StarBlock] | Mapping[str, StarBlock],
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> None:
    """Write STAR blocks to ``path`` atomically.

    Parameters
    ----------
    blocks
        The blocks, in order (or a mapping name -> block, in its order).
    path
        Destination file.
    overwrite
        Replace an existing file.

    Raises
    ------
    FileExistsNoOverwriteError
        ``path`` exists and ``overwrite`` is false.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import pandas as pd
    >>> from cryoxr.io.star import read_star
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "g.star"
    >>> write_star([StarBlock("general", pd.DataFrame({"rlnTomoSubTomosAre2DStacks": [1]}), loop=False)],
    ...            path)
    >>> read_star(path)["general"].table.to_dict("list")
    {'rlnTomoSubTomosAre2DStacks': [1]}
    """
    items = list(blocks.values()) if isinstance(blocks, Mapping) else list(blocks)
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as handle:
        write_star_blocks(handle, items)
