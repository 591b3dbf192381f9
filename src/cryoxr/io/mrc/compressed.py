"""gzip- and bzip2-compressed MRC files (``.mrc.gz``, ``.mrc.bz2``, as mrcfile opens them).

A compressed stream cannot be read at an offset, so :func:`cryoxr.io.mrc.read_mrc`
decompresses such a file **eagerly into memory** when it is opened: the header first, then
exactly the bytes the header says the extended header and the data block hold (a stream
that ends early is a truncated file; the buffer grows with what actually arrives, never
with what the header claims). The image is then backed by that in-memory array, chunked
by dask as usual; only uncompressed files are read lazily from disk. A data block larger
than :data:`DECOMPRESS_LIMIT_BYTES` is refused with a message that says to decompress the
file first (``gunzip``, ``bunzip2``), after which it is read lazily.

Examples
--------
>>> compression_of(b"\\x1f\\x8b\\x08"), compression_of(b"BZh9"), compression_of(b"\\x00\\x00")
('gzip', 'bzip2', None)
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
import zlib
from pathlib import Path
from typing import IO

from cryoxr.errors import FormatError

__all__ = ["COMPRESSED_SUFFIXES", "DECOMPRESS_LIMIT_BYTES", "compression_of", "read_compressed"]

#: suffixes of the compressed files :func:`cryoxr.io.images.open_image` sends to read_mrc
COMPRESSED_SUFFIXES: dict[str, str] = {".gz": "gzip", ".bz2": "bzip2"}


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return 8 * 2**30


#: largest decompressed MRC held in memory: half of this machine's memory
DECOMPRESS_LIMIT_BYTES = _physical_memory() // 2

#: magic bytes -> compression
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2"}
_STREAM_ERRORS = (OSError, EOFError, zlib.error, ValueError)
_PIECE = 1 << 24


def compression_of(head: bytes) -> str | None:
    """The compression whose magic bytes start ``head``, or None."""
    return next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)


def _read_exactly(stream: io.BufferedIOBase, n: int, path: Path, compression: str, what: str) -> bytearray:
    out = bytearray()
    try:
        while len(out) < n:
            piece = stream.read(min(_PIECE, n - len(out)))
            if not piece:
                break
            out += piece
    except _STREAM_ERRORS as err:
        raise FormatError(f"{path}: {compression} stream broken while reading the {what} ({err})") from None
    return out


def read_compressed(handle: IO[bytes], path: Path, compression: str) -> tuple[io.BufferedIOBase, bytes]:
    """A decompressing stream over ``handle`` and the first 1024 decompressed bytes (the header)."""
    stream: io.BufferedIOBase = (
        gzip.GzipFile(fileobj=handle, mode="rb") if compression == "gzip" else bz2.BZ2File(handle, "rb")
    )
    return stream, bytes(_read_exactly(stream, 1024, path, compression, "header"))


def read_block(stream: io.BufferedIOBase, path: Path, compression: str, nbytes: int, what: str) -> bytearray:
    """Exactly ``nbytes`` more decompressed bytes (refused above :data:`DECOMPRESS_LIMIT_BYTES`)."""
    if nbytes > DECOMPRESS_LIMIT_BYTES:
        raise FormatError(
            f"{path}: {compression}-compressed MRC whose header fields ask for {nbytes} bytes of {what}; "
            f"cryoxr decompresses into memory at most {DECOMPRESS_LIMIT_BYTES} bytes: decompress the file "
            "first (it is then read lazily)"
        )
    block = _read_exactly(stream, nbytes, path, compression, what)
    if len(block) < nbytes:
        raise FormatError(
            f"{path}: {what} truncated: the header fields need {nbytes} bytes, the {compression} stream "
            f"holds {len(block)}"
        )
    return block
