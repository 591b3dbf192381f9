"""Writing without losing anything: temporary path in the same folder, then rename.

Every cryoxr writer goes through :func:`atomic_path`: the new content is written to a
hidden temporary sibling and renamed over the target only when complete, so a crash, a
``SIGKILL`` or a full disk leaves the original intact and readers never see half a file.
Existing targets are refused unless ``overwrite=True``. Files that belong together
(IMOD ``.xf`` + ``.tlt``, a Dynamo table and its map) go through :func:`atomic_paths`:
all are written before any is renamed.

Temporaries
-----------
The temporary of ``folder/name`` is ``folder/.name.cryoxr-tmp-HOST.PID.XXXXXXXX`` (a
dot-name, so shell globs, file browsers and ``cryoxr info *`` skip it; it never carries the
target's suffix, so no reader takes it for data; ``HOST`` is the host name with
characters other than letters, digits and ``-`` replaced by ``-``, ``PID`` the writing
process). On success it is renamed to ``name``; on any Python-level failure (an
exception, ``KeyboardInterrupt``, a full disk) it is removed. After a hard kill
(``SIGKILL``, power loss) nothing can remove it, so every write to a target first
removes that target's *stale* temporaries:

- those named with this host and the PID of a process that no longer exists;
- those in the pre-PID format (``.name.cryoxr-tmp-XXXXXXXX``) last modified before this
  process imported cryoxr.

Temporaries of other hosts (a shared file system) and of live PIDs are left alone, as
they may belong to a write in progress; a recycled PID keeps its temporary until the
next write after that process ends.

Durability
----------
A file is ``fsync``-ed before the rename and its folder after it (where the platform
allows opening a folder; errors of that last step are ignored: the rename is done), so
after :func:`atomic_path` returns the new content survives a power loss too. Directory
stores (zarr) are not ``fsync``-ed file by file (thousands of chunk files: too slow for
the gain); the rename still makes them appear only complete to every reader, and the
parent folder is ``fsync``-ed after the rename.

Replacing a directory
---------------------
On Linux an existing directory target is swapped with the new one in one step
(``renameat2(RENAME_EXCHANGE)``), then the old content is removed from the temporary
name. Where that call is missing or unsupported by the file system the old directory is
renamed aside (``.name.cryoxr-tmp-HOST.PID.old.XXXXXXXX``) and the new one renamed in:
a kill between those two renames leaves no ``name`` for a moment, and the next write
to ``name`` renames the original back before doing anything else.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from cryoxr.errors import FileExistsNoOverwriteError, WriteError

__all__ = ["TMP_MARKER", "atomic_path", "atomic_paths", "check_overwrite", "remove_stale_temporaries"]

TMP_MARKER = ".cryoxr-tmp-"

#: stale temporaries in the pre-PID format are those older than this (the module import)
_PROCESS_START = time.time()
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_OWNER = re.compile(r"(?P<host>[A-Za-z0-9-]*)\.(?P<pid>\d+)\.(?P<old>old\.)?")

#: ``renameat2`` flag and the "not supported here" errnos that send us to the fallback
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


def check_overwrite(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse to replace an existing ``path`` unless ``overwrite``; return it as a Path."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsNoOverwriteError(
            f"{target}: exists; pass overwrite=True to replace it (nothing was written)"
        )
    if not target.parent.is_dir():
        raise WriteError(f"{target}: the folder {target.parent} does not exist")
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: exists, owned by someone else
        return True
    return True


def _tmp_prefix(target: Path, *, old: bool = False) -> str:
    return f".{target.name}{TMP_MARKER}{_HOST}.{os.getpid()}." + ("old." if old else "")


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries a killed writer left next to ``path``; return them.

    See the module docstring for which temporaries count as stale. When ``path`` itself
    is missing and a stale ``old.`` directory exists (a kill between the two renames of
    the fallback directory swap), that original is renamed back to ``path`` first.
    Errors (a concurrent cleaner, permissions) are ignored: cleanup is best effort.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / ".a.txt.cryoxr-tmp-otherhost.1.abc").write_text("x")  # another host: kept
    >>> remove_stale_temporaries(folder / "a.txt")
    []
    """
    target = Path(path)
    prefix = f".{target.name}{TMP_MARKER}"
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith(prefix)]
    except OSError:
        return removed
    stale: list[tuple[Path, bool]] = []
    for entry in entries:
        owner = _OWNER.match(entry.name, len(prefix))
        if owner is not None:
            if owner["host"] != _HOST or _pid_alive(int(owner["pid"])):
                continue
            stale.append((Path(entry.path), owner["old"] is not None))
        else:
            with suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < _PROCESS_START:
                    stale.append((Path(entry.path), False))
    for tmp, old in sorted(stale, key=lambda item: not item[1]):  # restore an original first
        if old and not os.path.lexists(target):
            with suppress(OSError):  # on failure leave the only copy of the original in place
                os.rename(tmp, target)
            continue
        _remove(tmp)
        removed.append(tmp)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(b))


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (threads may be creating files)."""
    with suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(path: Path) -> None:
    """Persist a rename in ``path`` where the platform can open folders (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace_directory(tmp: Path, target: Path) -> None:
    """Put ``tmp`` at ``target`` whose old content (file or folder) is then removed."""
    if _exchange(tmp, target):
        _remove(tmp)  # now the old content
        return
    aside = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target, old=True), dir=target.parent))
    aside.rmdir()
    os.replace(target, aside)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(aside, target)
        raise
    _remove(aside)


@contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, overwrite: bool = False, directory: bool = False
) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it to ``path``.

    Stale temporaries of ``path`` left by killed writers are removed first (module
    docstring). A file is ``fsync``-ed before the rename, the folder after it.

    Parameters
    ----------
    path
        Final destination (file, or directory for zarr stores with ``directory=True``).
    overwrite
        Replace an existing ``path``; otherwise raise
        :class:`~cryoxr.errors.FileExistsNoOverwriteError` before writing anything.
    directory
        The content is a directory (zarr store), which the caller creates at the yielded
        path; it replaces the old one only once complete (one atomic swap on Linux).

    Raises
    ------
    WriteError
        The write failed (disk full, permission, ...); the original is untouched and
        the temporary is removed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(folder / "a.txt") as tmp:
    ...     _ = tmp.write_text("hello")
    >>> (folder / "a.txt").read_text()
    'hello'
    >>> [p.name for p in folder.iterdir()]
    ['a.txt']
    """
    remove_stale_temporaries(path)
    target = check_overwrite(path, overwrite)
    parent = target.parent
    prefix = _tmp_prefix(target)
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            tmp.rmdir()  # writers create it themselves
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, dir=parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as err:
        raise WriteError(f"{target}: cannot create a temporary in {parent} ({err.strerror or err})") from err
    try:
        yield tmp
        if not directory:
            # keep the permissions a normal open() would give, not mkstemp's 0600
            os.chmod(tmp, 0o666 & ~_umask())
            _fsync_file(tmp)
        if (directory and os.path.lexists(target)) or (target.is_dir() and not target.is_symlink()):
            _replace_directory(tmp, target)
        else:
            os.replace(tmp, target)
    except OSError as err:
        _remove(tmp)
        if isinstance(err, FileExistsError | WriteError):
            raise
        raise WriteError(
            f"{target}: writing failed ({err.strerror or err}); the original is unchanged"
        ) from err
    except BaseException:
        _remove(tmp)
        raise
    _fsync_folder(parent)


@contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike[str]], *, overwrite: bool = False) -> Iterator[list[Path]]:
    """:func:`atomic_path` for a set of files that belong together (``.xf`` + ``.tlt``, ...).

    Every target is checked before anything is written, every temporary is written
    before any is renamed, so a failure while writing any of them (an exception, a full
    disk) leaves every original untouched. Only the renames at the end, one per file,
    are not one step together.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_paths([folder / "a.txt", folder / "b.txt"]) as (a, b):
    ...     _ = a.write_text("1")
    ...     _ = b.write_text("2")
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt', 'b.txt']
    """
    for path in paths:
        check_overwrite(path, overwrite)
    with ExitStack() as stack:
        yield [stack.enter_context(atomic_path(path, overwrite=overwrite)) for path in paths]
