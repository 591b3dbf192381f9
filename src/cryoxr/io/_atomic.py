"""Writing without losing anything: temporary path in the same folder, then rename.

Every cryoxr writer goes through :func:`atomic_path`: the new content is written to a
hidden temporary sibling (``.name.cryoxr-tmp-XXXX``) and renamed over the target only
when complete, so a crash or a full disk leaves the original intact and readers never
see half a file. Existing targets are refused unless ``overwrite=True``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryoxr.errors import FileExistsNoOverwriteError, WriteError

__all__ = ["TMP_MARKER", "atomic_path", "check_overwrite"]

TMP_MARKER = ".cryoxr-tmp-"


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
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, overwrite: bool = False, directory: bool = False
) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it to ``path``.

    Parameters
    ----------
    path
        Final destination (file, or directory for zarr stores with ``directory=True``).
    overwrite
        Replace an existing ``path``; otherwise raise
        :class:`~cryoxr.errors.FileExistsNoOverwriteError` before writing anything.
    directory
        The content is a directory (zarr store): it replaces the old one only once
        complete (old moved aside, new renamed in, old removed).

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
    """
    target = check_overwrite(path, overwrite)
    parent = target.parent
    prefix = f".{target.name}{TMP_MARKER}"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        tmp.rmdir()  # writers create it themselves
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory and target.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}{TMP_MARKER}old-", dir=parent))
            aside.rmdir()
            os.replace(target, aside)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(aside, target)
                raise
            _remove(aside)
        else:
            if not directory:
                # keep the permissions a normal open() would give, not mkstemp's 0600
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)
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
