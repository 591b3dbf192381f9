"""A zarr ``LocalStore`` whose every read goes through :mod:`cryoxr.io._paths`: :class:`GuardedStore`.

What the OME-Zarr readers get from it, for stores given as a local path:

- a member (metadata, chunk, shard) whose real path leaves the store (a level folder or a
  chunk linked to ``/etc``, ``/dev/zero`` or another store) is refused, unless the reader
  was called with ``allow_links_outside=True``;
- a member that is not a regular file (a named pipe, a device) is refused before it is
  opened for reading (a folder where a key is expected reads as missing, as in zarr);
- metadata files (``zarr.json``, ``.zarray``, ``.zattrs``, ``.zgroup``, ``.zmetadata``)
  larger than :data:`~cryoxr.io._paths.METADATA_MAX_BYTES` are refused before they are
  read, and JSON nested deeper than Python's parser allows is a FormatError, not a
  ``RecursionError``;
- a chunk or shard file larger than twice the raw bytes it can hold (plus 1 MiB) is refused
  before it is read: a file that lies about its size (a sparse file of terabytes) cannot
  make a read allocate it. The bound is registered per array by the reader
  (:meth:`GuardedStore.bound_array`); files of unregistered arrays are bounded by
  :data:`UNREGISTERED_MAX_BYTES`.

Every refusal is a :class:`~cryoxr.errors.FormatError` naming the member's path.

Stores behind a URL are read through :class:`GuardedFsspecStore`, which keeps the rules that
apply there: metadata documents over :data:`~cryoxr.io._paths.METADATA_MAX_BYTES` and JSON
nested too deep are FormatErrors naming the member's URL.

Examples
--------
>>> import tempfile, pathlib, zarr
>>> store = pathlib.Path(tempfile.mkdtemp()) / "s.zarr"
>>> _ = zarr.open_group(store, mode="w").create_array("0", shape=(4,), chunks=(2,), dtype="f4")
>>> (store / "0" / "c").mkdir()
>>> (store / "0" / "c" / "1").symlink_to("/dev/zero")
>>> z = zarr.open_group(GuardedStore(store), mode="r")["0"]
>>> z[:]
Traceback (most recent call last):
...
cryoxr.errors.FormatError: .../0/c/1: a member of the OME-Zarr store ... is a link to /dev/zero, outside \
the store; cryoxr does not follow links that leave a store (pass allow_links_outside=True to allow it)
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

import numpy as np
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import FsspecStore, LocalStore

from cryoxr.errors import CryoxrFileNotFoundError, FormatError
from cryoxr.io._paths import METADATA_MAX_BYTES, inside_root, open_file

__all__ = ["METADATA_NAMES", "UNREGISTERED_MAX_BYTES", "GuardedFsspecStore", "GuardedStore"]

#: file names that hold zarr metadata (JSON)
METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})
#: largest chunk file read for an array the reader did not register (1 GiB)
UNREGISTERED_MAX_BYTES = 2**30
_WHAT = "OME-Zarr store"


class GuardedStore(LocalStore):
    """A read-only :class:`zarr.storage.LocalStore` that keeps the rules of the module docstring.

    Parameters
    ----------
    root
        The store folder.
    allow_links_outside
        Follow members whose real path is outside the store.
    """

    def __init__(
        self, root: Path | str, *, read_only: bool = True, allow_links_outside: bool = False
    ) -> None:
        super().__init__(root, read_only=True)
        self.allow_links_outside = bool(allow_links_outside)
        #: array path inside the store -> largest chunk / shard file accepted, in bytes
        self.bounds: dict[str, int] = {}

    def with_read_only(self, read_only: bool = False) -> Self:
        store = type(self)(self.root, allow_links_outside=self.allow_links_outside)
        store.bounds = self.bounds
        return store

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GuardedStore) and (self.root, self.allow_links_outside) == (
            other.root,
            other.allow_links_outside,
        )

    def __hash__(self) -> int:
        return hash((str(self.root), self.allow_links_outside))

    def bound_array(self, path: str, array: Any) -> None:
        """Bound the chunk (or shard) files of the array at ``path`` by what they can hold."""
        shape = getattr(array, "shards", None) or array.chunks
        itemsize = int(np.dtype(array.dtype).itemsize) or 8
        self.bounds[path.strip("/")] = 2 * math.prod(shape) * itemsize + 2**20

    def _limit(self, key: str) -> tuple[int, str]:
        if key.rsplit("/", 1)[-1] in METADATA_NAMES:
            return METADATA_MAX_BYTES, "zarr metadata"
        for prefix, bound in self.bounds.items():
            if key.startswith(f"{prefix}/"):
                return bound, "zarr chunk"
        return UNREGISTERED_MAX_BYTES, "zarr chunk"

    def _read(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None) -> Buffer | None:
        path = self.root / key
        inside_root(self.root, path, what=_WHAT, allow_outside=self.allow_links_outside)
        limit, what = self._limit(key)
        try:
            handle, st = open_file(path, what=what)
        except CryoxrFileNotFoundError as err:
            if not os.path.exists(path) or os.path.isdir(path):
                return None  # missing (a fill-value chunk, an absent v2 / v3 document), as in zarr
            raise FormatError(
                str(err)
            ) from None  # a pipe, a device: not FileNotFoundError, zarr would skip it
        with handle:
            data = _read_range(handle, st.st_size, byte_range, limit, path, what)
        if what == "zarr metadata":
            _check_metadata(data, str(path))
        return prototype.buffer.from_bytes(data)

    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        self._ensure_open_sync()
        return self._read(key, prototype or default_buffer_prototype(), byte_range)

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if not self._is_open:
            await self._open()
        return self._read(key, prototype or default_buffer_prototype(), byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [self._read(key, prototype, byte_range) for key, byte_range in key_ranges]


def _check_metadata(data: bytes, where: str) -> None:
    """Refuse metadata larger than :data:`METADATA_MAX_BYTES` or nested deeper than Python parses."""
    if len(data) > METADATA_MAX_BYTES:
        raise FormatError(
            f"{where}: zarr metadata file of {len(data)} bytes; expected at most {METADATA_MAX_BYTES} bytes"
        )
    try:
        json.loads(data)
    except RecursionError:
        raise FormatError(
            f"{where}: zarr metadata: expected JSON, found nesting deeper than Python's parser allows"
        ) from None
    except ValueError:
        pass  # zarr reports broken JSON itself


class GuardedFsspecStore(FsspecStore):
    """A :class:`zarr.storage.FsspecStore` (a store behind a URL) that checks its metadata documents."""

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        buffer = await super().get(key, prototype, byte_range)
        if buffer is not None and key.rsplit("/", 1)[-1] in METADATA_NAMES:
            _check_metadata(buffer.to_bytes(), f"{self.fs.unstrip_protocol(self.path)}/{key}")
        return buffer


def _read_range(
    handle: io.BufferedReader, size: int, byte_range: ByteRequest | None, limit: int, path: Path, what: str
) -> bytes:
    """The requested bytes of an open file, at most ``limit`` of them (else a FormatError)."""
    start, stop = 0, size
    if isinstance(byte_range, RangeByteRequest):
        start, stop = byte_range.start, min(byte_range.end, size)
    elif isinstance(byte_range, OffsetByteRequest):
        start = byte_range.offset
    elif isinstance(byte_range, SuffixByteRequest):
        start = max(0, size - byte_range.suffix)
    elif byte_range is not None:
        raise TypeError(f"unexpected byte range {byte_range!r}")
    if stop - start > limit:
        raise FormatError(
            f"{path}: {what} file of {size} bytes (reading {stop - start}); expected at most {limit} bytes for "
            "what it can hold: refused before it is read"
        )
    handle.seek(start)
    data = handle.read(max(0, stop - start) + 1)
    if len(data) > max(0, stop - start):
        data = data[: max(0, stop - start)]  # grew while read: take what was asked for
    return data
