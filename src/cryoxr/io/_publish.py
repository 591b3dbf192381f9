"""Publishing a finished temporary under its final name without replacing anything: the
primitives :mod:`cryoxr.io._atomic` builds on.

- :func:`_rename_noreplace`: rename only if the target does not exist, so that of racing
  writers exactly one wins (Linux ``renameat2(RENAME_NOREPLACE)``; Windows ``os.rename``;
  elsewhere ``os.link`` for a file, a ``mkdir`` lock for a folder or where links are missing);
- :func:`_exchange`: swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``);
- :func:`_publish_lock`: the ``mkdir`` lock (``.name.cryoxr-lock``), broken after
  :data:`_LOCK_STALE_SECONDS` as left by a killed writer.

Examples
--------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "a").write_text("1"), (folder / "b").write_text("2"), (folder / "c").write_text("3")
>>> _rename_noreplace(folder / "a", folder / "new", directory=False)
>>> _rename_noreplace(folder / "b", folder / "new", directory=False)
Traceback (most recent call last):
...
cryoxr.errors.FileExistsNoOverwriteError: .../new: was created by another writer while this one wrote; \
pass overwrite=True to replace it (nothing was written)
>>> (folder / "new").read_text()
'1'
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from cryoxr.errors import FileExistsNoOverwriteError, WriteError

__all__ = ["LOCK_MARKER"]

#: the ``mkdir`` lock of the no-replace fallback and of file sets: ``.name.cryoxr-lock``
LOCK_MARKER = ".cryoxr-lock"
_LOCK_STALE_SECONDS = 30.0

#: ``renameat2`` flags and the "not supported here" errnos that send us to the fallback
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}
#: ``os.link`` errnos of file systems without hard links (FAT, some FUSE and SMB mounts)
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


def _renameat2(a: Path, b: Path, flags: int) -> bool:
    """Linux ``renameat2``: True when done, False where unsupported; other errors raise OSError."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(b))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where unsupported."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


@contextmanager
def _publish_lock(target: Path, role: str = "") -> Iterator[None]:
    """A ``mkdir`` lock beside ``target`` (``.name.cryoxr-lock`` + ``role``).

    Two uses: the no-replace rename where neither renameat2 nor hard links exist, and
    the publication of a set of files (``role="-set"``). Held only around a few renames
    (milliseconds): a lock older than :data:`_LOCK_STALE_SECONDS` was left by a killed
    writer and is broken.
    """
    lock = target.parent / f".{target.name}{LOCK_MARKER}{role}"
    deadline = time.monotonic() + 2 * _LOCK_STALE_SECONDS
    while True:
        try:
            os.mkdir(lock)
            break
        except FileExistsError:
            with suppress(OSError):
                if time.time() - os.lstat(lock).st_mtime > _LOCK_STALE_SECONDS:
                    os.rmdir(lock)
                    continue
            if time.monotonic() > deadline:
                raise WriteError(f"{target}: the lock {lock} is held by another writer") from None
            time.sleep(0.001)
    try:
        yield
    finally:
        with suppress(OSError):
            os.rmdir(lock)


def _exists_error(target: Path) -> FileExistsNoOverwriteError:
    return FileExistsNoOverwriteError(
        f"{target}: was created by another writer while this one wrote; pass overwrite=True to replace "
        "it (nothing was written)"
    )


def _rename_noreplace(tmp: Path, target: Path, *, directory: bool) -> None:
    """Rename ``tmp`` to ``target`` only if ``target`` does not exist: one winner among racing writers.

    Linux: ``renameat2(RENAME_NOREPLACE)``; Windows: ``os.rename`` (which never replaces);
    elsewhere a file is hard-linked (``os.link`` fails on an existing name) and a folder,
    or a file where links are unsupported, is renamed under a ``mkdir`` lock.

    Raises
    ------
    FileExistsNoOverwriteError
        ``target`` appeared meanwhile; ``tmp`` is left for the caller to remove.
    """
    try:
        if _renameat2(tmp, target, _RENAME_NOREPLACE):
            return
        if sys.platform == "win32":
            os.rename(tmp, target)
            return
        if not directory:
            try:
                os.link(tmp, target)
            except OSError as err:
                if err.errno == errno.EEXIST or err.errno not in _NO_LINKS:
                    raise
            else:
                os.unlink(tmp)
                return
        with _publish_lock(target):
            if os.path.lexists(target):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
            os.rename(tmp, target)
    except OSError as err:
        if isinstance(err, FileExistsError) or err.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise _exists_error(target) from None
        raise
