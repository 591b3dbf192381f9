"""Writing without losing anything: temporary path in the same folder, then rename.

Every cryoxr writer goes through :func:`atomic_path`: the new content is written to a
hidden temporary sibling and renamed over the target only when complete, so a crash, a
``SIGKILL`` or a full disk leaves the original intact and readers never see half a file.
Existing targets are refused unless ``overwrite=True``, and even then only a target of
the same kind is replaced (:func:`check_overwrite`: a regular file by a file, a zarr store
or an empty folder by a store; never a folder of anything else, a pipe or a device).
Files that belong together
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

Publishing without replacing
----------------------------
Without ``overwrite`` the check before writing is not enough: two processes can both
find no target and both write. The rename that publishes is therefore itself
no-replace: ``renameat2(RENAME_NOREPLACE)`` on Linux (files and folders), ``os.rename``
on Windows (which never replaces), else ``os.link`` for a file (fails on an existing
name) and, for a folder or where hard links are missing, a rename under a ``mkdir`` lock
(``.name.cryoxr-lock``, broken after 30 s as left by a killed writer). Of racing
writers exactly one wins; the others get
:class:`~cryoxr.errors.FileExistsNoOverwriteError` and leave nothing behind. With
``overwrite=True`` racing writers each publish a complete result and the last one stays.

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

import errno
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path

from cryoxr.errors import FileExistsNoOverwriteError, WriteError
from cryoxr.io._paths import kind_of
from cryoxr.io._publish import LOCK_MARKER, _exchange, _publish_lock, _rename_noreplace

__all__ = [
    "LOCK_MARKER",
    "STORE_MARKERS",
    "TMP_MARKER",
    "atomic_path",
    "atomic_paths",
    "check_overwrite",
    "remove_stale_temporaries",
]

TMP_MARKER = ".cryoxr-tmp-"
#: rounds of publish / swap against concurrent writers before giving up
_PUBLISH_ATTEMPTS = 100

#: stale temporaries in the pre-PID format are those older than this (the module import)
_PROCESS_START = time.time()
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_OWNER = re.compile(r"(?P<host>[A-Za-z0-9-]*)\.(?P<pid>\d+)\.(?P<old>old\.)?")


#: names whose presence at the top of a folder makes it a zarr store (v3, v2, consolidated)
#: files that make a folder one cryoxr writes as a whole, so that overwrite may replace it:
#: a zarr store, or a RELION job folder of subtilt stacks (``cryoxr extract``)
STORE_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata", "optimisation_set.star")


def _other_kind(target: Path, *, directory: bool) -> str | None:
    """What ``target`` is when a write of this kind must not replace it, else None.

    A file write replaces a regular file; a directory write a zarr store or an empty
    folder; either replaces a symbolic link (the link itself, never what it points to).
    """
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return None
    if not directory:
        return None if stat.S_ISREG(st.st_mode) else kind_of(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        return kind_of(st.st_mode)
    try:
        names = set(os.listdir(target))
    except OSError:
        return "a folder that cannot be listed"
    if not names or names & set(STORE_MARKERS):
        return None
    return "a folder that is not a zarr store or a RELION job folder cryoxr wrote"


def check_overwrite(path: str | os.PathLike[str], overwrite: bool, *, directory: bool = False) -> Path:
    """Refuse to replace an existing ``path`` unless ``overwrite``, and never one of another kind.

    With ``overwrite``, a file write may replace only a regular file (or a symbolic link,
    which is replaced itself); a directory write (``directory=True``, a zarr store) only a
    zarr store or an empty folder. A folder of anything else, a named pipe, a device are
    refused whatever ``overwrite`` says: the issue-22 rule "overwrite replaces a file of the
    same kind, never a folder of anything else".

    Raises
    ------
    FileExistsNoOverwriteError
        ``path`` exists and ``overwrite`` is False, or it is of another kind.
    WriteError
        The folder of ``path`` does not exist.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> (folder / "t.mrc").mkdir()
    >>> (folder / "t.mrc" / "notes.txt").write_text("keep me")
    7
    >>> check_overwrite(folder / "t.mrc", True)
    Traceback (most recent call last):
    ...
    cryoxr.errors.FileExistsNoOverwriteError: .../t.mrc: is a folder; overwrite=True replaces only a \
regular file, so nothing was written
    """
    target = Path(path)
    if os.path.lexists(target):
        if not overwrite:
            raise FileExistsNoOverwriteError(
                f"{target}: exists; pass overwrite=True to replace it (nothing was written)"
            )
        other = _other_kind(target, directory=directory)
        if other is not None:
            written = (
                "a zarr store, a RELION job folder or an empty folder" if directory else "a regular file"
            )
            raise FileExistsNoOverwriteError(
                f"{target}: is {other}; overwrite=True replaces only {written}, so nothing was written"
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
    """Put the folder ``tmp`` at ``target``, whose old content (a zarr store) is then removed.

    Racing writers each publish a complete store; the last one stays (never a mix).
    The old content is checked again once it is swapped out: had another process put a
    folder of another kind at ``target`` since :func:`check_overwrite`, it is swapped back
    and the write refused.
    """
    for _ in range(_PUBLISH_ATTEMPTS):
        try:
            _rename_noreplace(tmp, target, directory=True)
            return
        except FileExistsNoOverwriteError:
            pass
        check_overwrite(target, True, directory=True)
        try:
            swapped = _exchange(tmp, target)
        except FileNotFoundError:
            continue  # the target went away meanwhile: publish again
        if swapped:
            other = _other_kind(tmp, directory=True)
            if other is not None:
                _exchange(tmp, target)
                raise FileExistsNoOverwriteError(
                    f"{target}: became {other} while this writer wrote; nothing was written"
                )
            _remove(tmp)  # now the old content
            return
        # no exchange on this platform or file system: the old store aside, the new one in
        aside = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target, old=True), dir=target.parent))
        aside.rmdir()
        try:
            os.replace(target, aside)
        except FileNotFoundError:
            continue
        try:
            os.rename(tmp, target)
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                os.replace(aside, target)
                raise
            _remove(aside)  # another writer's store is in place: ours goes in over it next round
            continue
        _remove(aside)
        return
    raise WriteError(f"{target}: gave up after {_PUBLISH_ATTEMPTS} attempts against concurrent writers")


class _Pending:
    """One output being written: its target, its temporary, and how to publish or drop it."""

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool, directory: bool) -> None:
        remove_stale_temporaries(path)
        self.target = check_overwrite(path, overwrite, directory=directory)
        self.overwrite, self.directory = overwrite, directory
        self.created: tuple[int, int] | None = None  # (st_dev, st_ino) of a new file published here
        prefix = _tmp_prefix(self.target)
        parent = self.target.parent
        try:
            if directory:
                self.tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
                self.tmp.rmdir()  # writers create it themselves
            else:
                fd, name = tempfile.mkstemp(prefix=prefix, dir=parent)
                os.close(fd)
                self.tmp = Path(name)
        except OSError as err:
            raise WriteError(
                f"{self.target}: cannot create a temporary in {parent} ({err.strerror or err})"
            ) from err

    def publish(self) -> None:
        """Rename the complete temporary to the target (module docstring: no-replace, kind check)."""
        target, tmp = self.target, self.tmp
        if not self.directory:
            # keep the permissions a normal open() would give, not mkstemp's 0600
            os.chmod(tmp, 0o666 & ~_umask())
            _fsync_file(tmp)
            identity = os.stat(tmp)
            if self.overwrite:
                check_overwrite(target, True)
                os.replace(tmp, target)
            else:
                _rename_noreplace(tmp, target, directory=False)
                self.created = (identity.st_dev, identity.st_ino)
        elif self.overwrite:
            _replace_directory(tmp, target)
        else:
            _rename_noreplace(tmp, target, directory=True)
        _fsync_folder(target.parent)

    def discard(self) -> None:
        _remove(self.tmp)

    def undo(self) -> None:
        """Remove a new file this writer published, if it is still the one it published."""
        if self.created is None:
            return
        with suppress(OSError):
            st = os.lstat(self.target)
            if (st.st_dev, st.st_ino) == self.created:
                self.target.unlink()


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
        Replace an existing ``path`` of the same kind (a regular file; a zarr store or an
        empty folder with ``directory=True``); otherwise raise
        :class:`~cryoxr.errors.FileExistsNoOverwriteError` before writing anything. Without
        it, the new content is published only if nothing appeared at ``path`` meanwhile:
        of two processes writing the same new target, exactly one succeeds.
    directory
        The content is a directory (zarr store), which the caller creates at the yielded
        path; it replaces the old one only once complete (one atomic swap on Linux).

    Raises
    ------
    FileExistsNoOverwriteError
        ``path`` exists (or appeared while writing) and ``overwrite`` is False; or it is
        of another kind (a folder for a file write, a folder that is not a zarr store for
        a directory write), whatever ``overwrite``.
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
    with atomic_paths([path], overwrite=overwrite, directory=directory) as (tmp,):
        yield tmp


@contextmanager
def atomic_paths(
    paths: Sequence[str | os.PathLike[str]], *, overwrite: bool = False, directory: bool = False
) -> Iterator[list[Path]]:
    """:func:`atomic_path` for a set of files that belong together (``.xf`` + ``.tlt``, ...).

    Every target is checked before anything is written, every temporary is written
    before any is renamed, so a failure while writing any of them (an exception, a full
    disk) leaves every original untouched. The renames at the end, one per file, are not
    one step together, but they are done under one lock (``.first.cryoxr-lock-set``), so
    racing writers of the same set publish one whole set after the other. If a later one
    fails (another writer created that target
    meanwhile), the new files published just before it are removed again while they are
    still this writer's own (files replaced with ``overwrite=True`` cannot be restored).

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
        remove_stale_temporaries(path)
        check_overwrite(path, overwrite, directory=directory)
    pending: list[_Pending] = []
    published: list[_Pending] = []
    current = Path(paths[0]) if paths else Path()
    try:
        for path in paths:
            current = Path(path)
            pending.append(_Pending(path, overwrite=overwrite, directory=directory))
        yield [p.tmp for p in pending]
        # a set is published under a lock, so that racing writers of the same set never
        # leave a mix of their files (one writer's .xf with another's .tlt)
        with _publish_lock(pending[0].target, "-set") if len(pending) > 1 else nullcontext():
            for p in pending:
                current = p.target
                p.publish()
                published.append(p)
    except BaseException as err:
        for p in reversed(published):
            p.undo()
        for p in pending:
            p.discard()
        if not isinstance(err, OSError) or isinstance(err, FileExistsError | WriteError):
            raise
        raise WriteError(
            f"{current}: writing failed ({err.strerror or err}); the original is unchanged"
        ) from err
