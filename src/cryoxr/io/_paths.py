"""The one place where cryoxr's readers open paths: what they refuse, and why.

Every reader (STAR, MRC, the text formats through :func:`cryoxr.io.tables.read_text_lines`,
and every file of an OME-Zarr store) opens its files through :func:`open_file` (or
:func:`read_bytes`, :func:`read_json`), which keeps these rules:

=========================  ===============================================================
rule                       what happens otherwise
=========================  ===============================================================
a regular file             a folder, named pipe (FIFO), socket or device is refused at
                           once, before it is opened for reading: a pipe with no writer
                           would block forever, ``/dev/zero`` would never end
                           (:class:`~cryoxr.errors.CryoxrFileNotFoundError`, naming the
                           path and what it is)
at most ``max_bytes``      metadata (``zarr.json``, ``.zarray``, ...) larger than the
                           limit (:data:`METADATA_MAX_BYTES` by default) is refused before
                           it is read; the read itself stops at the limit, so a file that
                           grows while it is read cannot exceed it either
                           (:class:`~cryoxr.errors.FormatError`)
inside its root            a member of a store (:func:`inside_root`) whose real path,
                           symlinks resolved, leaves the store is refused unless the
                           caller allows links outside (:class:`~cryoxr.errors.FormatError`)
JSON of bounded depth      nesting deeper than Python's parser allows is a
                           :class:`~cryoxr.errors.FormatError`, not a ``RecursionError``
=========================  ===============================================================

The path the user names is followed as given (a symlink the user chose is the user's
choice); only files a reader finds *by itself* inside a store are held to their root.
``PermissionError`` is left as Python raises it (it names the path; it is a matter of the
machine, not of the file's content).

Examples
--------
>>> import os, tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> os.mkfifo(folder / "pipe.star")
>>> read_bytes(folder / "pipe.star", what="STAR")
Traceback (most recent call last):
...
cryoxr.errors.CryoxrFileNotFoundError: .../pipe.star: is a named pipe (FIFO), not a regular file; \
expected a STAR file (cryoxr reads only regular files: a pipe can block forever)
>>> _ = (folder / "a.json").write_text('{"a": [1, 2]}')
>>> read_json(folder / "a.json", what="zarr metadata")
{'a': [1, 2]}
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
from pathlib import Path
from typing import Any, TypeAlias

from cryoxr.errors import CryoxrFileNotFoundError, FormatError

__all__ = [
    "METADATA_MAX_BYTES",
    "STAR_LINE_MAX_BYTES",
    "TEXT_MAX_BYTES",
    "PathLike",
    "check_regular",
    "inside_root",
    "kind_of",
    "open_file",
    "parse_json",
    "read_bytes",
    "read_head",
    "read_json",
]

#: largest metadata file read (zarr.json, .zarray, .zattrs, .zgroup, .zmetadata): 16 MiB
#: holds the consolidated metadata of thousands of arrays; more is not metadata
#: what every reader accepts as a path (one alias for the whole io layer)
PathLike: TypeAlias = str | os.PathLike[str]

METADATA_MAX_BYTES = 16 * 2**20

#: largest plain-text file read whole (IMOD, AreTomo, Dynamo: :func:`cryoxr.io.tables.read_text_lines`):
#: 2 GiB, some ten million Dynamo particles; a larger (or sparse, size-lying) file is refused unread
TEXT_MAX_BYTES = 2 * 2**30
#: longest line of a STAR file outside loop bodies (a header, a ``_label value`` pair): 64 MiB
STAR_LINE_MAX_BYTES = 64 * 2**20

#: file type -> how messages name it (``stat.S_IFMT`` of the target)
_KINDS: dict[int, str] = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symbolic link",
}
_WHY = {
    stat.S_IFIFO: " (cryoxr reads only regular files: a pipe can block forever)",
    stat.S_IFCHR: " (cryoxr reads only regular files: a device can be endless)",
}
_MISSING = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG}


def kind_of(mode: int) -> str:
    """How a message names a file of ``st_mode`` ``mode`` ("a folder", "a named pipe (FIFO)", ...).

    Examples
    --------
    >>> import os
    >>> kind_of(os.stat("/").st_mode)
    'a folder'
    """
    return _KINDS.get(stat.S_IFMT(mode), "a regular file" if stat.S_ISREG(mode) else "a special file")


def _not_regular(path: Path, mode: int, what: str) -> CryoxrFileNotFoundError:
    fmt = stat.S_IFMT(mode)
    return CryoxrFileNotFoundError(
        f"{path}: is {kind_of(mode)}, not a regular file; expected a {what} file{_WHY.get(fmt, '')}"
    )


def check_regular(path: str | os.PathLike[str], *, what: str) -> os.stat_result:
    """``os.stat`` of ``path`` (links followed), refusing anything but a regular file.

    Nothing is opened, so a named pipe or a device is refused without side effects.

    Raises
    ------
    CryoxrFileNotFoundError
        No such file, or a folder, named pipe, socket or device.

    Examples
    --------
    >>> check_regular("/", what="MRC")
    Traceback (most recent call last):
    ...
    cryoxr.errors.CryoxrFileNotFoundError: /: is a folder, not a regular file; expected a MRC file
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as err:
        if err.errno in _MISSING:
            raise CryoxrFileNotFoundError(f"{p}: no such {what} file") from None
        raise
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(p, st.st_mode, what)
    return st


def open_file(
    path: str | os.PathLike[str], *, what: str, max_bytes: int | None = None
) -> tuple[io.BufferedReader, os.stat_result]:
    """Open a regular file for binary reading; return the handle and its ``fstat``.

    The path is checked before it is opened (:func:`check_regular`) and the opened file
    again (the path may have been swapped in between), without ever blocking: the open
    is non-blocking.

    Parameters
    ----------
    path
        The file.
    what
        What the file should be, for messages ("STAR", "MRC", "zarr metadata", ...).
    max_bytes
        Refuse a larger file (:class:`~cryoxr.errors.FormatError`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = p.write_text("hello")
    >>> handle, st = open_file(p, what="text")
    >>> with handle:
    ...     handle.read(), st.st_size
    (b'hello', 5)
    """
    p = Path(path)
    check_regular(p, what=what)
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    )
    try:
        fd = os.open(p, flags | getattr(os, "O_BINARY", 0))
    except OSError as err:
        if err.errno in _MISSING:
            raise CryoxrFileNotFoundError(f"{p}: no such {what} file") from None
        if err.errno == errno.EISDIR:
            raise CryoxrFileNotFoundError(
                f"{p}: is a folder, not a regular file; expected a {what} file"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(p, st.st_mode, what)
        if max_bytes is not None and st.st_size > max_bytes:
            raise FormatError(
                f"{p}: {what} file of {st.st_size} bytes; expected at most {max_bytes} bytes "
                "(metadata, not data: refused before it is read)"
            )
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return handle, st


def read_head(path: str | os.PathLike[str], *, what: str, size: int = 1 << 16) -> bytes:
    """The first ``size`` bytes of a regular file, for sniffing its format (a folder or a
    FIFO is refused at once, as by :func:`open_file`)."""
    handle, _ = open_file(path, what=what)
    with handle:
        return handle.read(size)


def read_bytes(path: str | os.PathLike[str], *, what: str, max_bytes: int | None = None) -> bytes:
    """The whole content of a regular file (:func:`open_file`), at most ``max_bytes``.

    The read stops one byte past ``max_bytes``, so a file that grows after it was checked
    is refused too, with its memory bounded.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = p.write_text("hello")
    >>> read_bytes(p, what="text", max_bytes=3)
    Traceback (most recent call last):
    ...
    cryoxr.errors.FormatError: .../a.txt: text file of 5 bytes; expected at most 3 bytes (metadata, \
not data: refused before it is read)
    """
    handle, _ = open_file(path, what=what, max_bytes=max_bytes)
    with handle:
        data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise FormatError(
            f"{path}: {what} file grew past {max_bytes} bytes while it was read; expected at most "
            f"{max_bytes} bytes"
        )
    return data


def read_json(path: str | os.PathLike[str], *, what: str, max_bytes: int = METADATA_MAX_BYTES) -> Any:
    """Parse a JSON metadata file of at most ``max_bytes``; broken or too deep JSON is a FormatError.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "zarr.json"
    >>> _ = p.write_text("[" * 100_000 + "]" * 100_000)
    >>> read_json(p, what="zarr metadata")
    Traceback (most recent call last):
    ...
    cryoxr.errors.FormatError: .../zarr.json: zarr metadata: expected JSON, found nesting deeper than \
Python's parser allows
    """
    data = read_bytes(path, what=what, max_bytes=max_bytes)
    return parse_json(data, path, what=what)


def parse_json(data: bytes, where: str | os.PathLike[str], *, what: str) -> Any:
    """``json.loads`` with every failure a :class:`~cryoxr.errors.FormatError` naming ``where``."""
    try:
        return json.loads(data)
    except RecursionError:
        raise FormatError(
            f"{where}: {what}: expected JSON, found nesting deeper than Python's parser allows"
        ) from None
    except (UnicodeDecodeError, ValueError) as err:
        raise FormatError(f"{where}: {what}: expected JSON, found {type(err).__name__}: {err}") from None


def inside_root(
    root: str | os.PathLike[str], member: str | os.PathLike[str], *, what: str, allow_outside: bool = False
) -> Path:
    """The real path of ``member`` (a path under ``root``), refused if it leaves ``root``.

    Symlinks are resolved component by component (:func:`os.path.realpath`); a member
    whose real path is not inside the real path of ``root`` (a level folder or a chunk
    linked elsewhere: ``/dev/zero``, ``/etc``, another store) is refused unless
    ``allow_outside``.

    Raises
    ------
    FormatError
        The member's real path is outside the root (the message names both).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> store = pathlib.Path(tempfile.mkdtemp())
    >>> (store / "0").symlink_to("/etc")
    >>> inside_root(store, store / "0" / "passwd", what="OME-Zarr store")
    Traceback (most recent call last):
    ...
    cryoxr.errors.FormatError: .../0/passwd: a member of the OME-Zarr store ... is a link to /etc/passwd, \
outside the store; cryoxr does not follow links that leave a store (pass allow_links_outside=True to allow it)
    """
    real_root = os.path.realpath(root)
    real = os.path.realpath(member)
    if allow_outside or real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
        return Path(real)
    raise FormatError(
        f"{member}: a member of the {what} {root} is a link to {real}, outside the store; cryoxr does not "
        "follow links that leave a store (pass allow_links_outside=True to allow it)"
    )
