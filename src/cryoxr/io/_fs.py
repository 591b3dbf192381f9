"""Files and folders on the local disk or behind a URL, for the catalogue readers: :class:`Location`.

A :class:`Location` is a path in a filesystem: the local disk (read through
:mod:`cryoxr.io._paths`, as every reader does) or any `fsspec
<https://filesystem-spec.readthedocs.io>`_ protocol (``https://``, ``http://``,
``s3://``, ...), so that copick projects and Portal folders are read by the same functions
wherever they are. fsspec is an optional dependency (``pip install 'cryoxr[remote]'``);
a URL without it is a :class:`~cryoxr.errors.MissingDependencyError` naming the URL.

What a remote filesystem can list depends on it: S3 lists natively; over plain HTTP,
fsspec reads the HTML index page a server may send for a folder (Python's
``http.server``, nginx ``autoindex``, Apache); a server that sends none cannot be listed,
and a listing that finds nothing reads as an empty folder. Files named in a document (a
copick config's roots, a store's ``zarr.json``) need no listing.

Errors of a remote filesystem are :class:`~cryoxr.errors.CryoxrFileNotFoundError` naming
the URL: a 404 ("no such ..."), an unreachable host or a refused connection ("could not be
read"), never the HTTP client's own traceback.

Examples
--------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "a.json").write_text("{}")
>>> (folder / "sub").mkdir()
>>> root = Location.of(folder)
>>> [(c.name, c.is_dir()) for c in root.children()]
[('a.json', False), ('sub', True)]
>>> (root / "a.json").read_bytes(what="JSON")
b'{}'
>>> is_url("https://example.org/t.zarr"), is_url(folder), is_url("local:///data")
(True, False, False)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryoxr.errors import (
    CryoxrError,
    CryoxrFileNotFoundError,
    FormatError,
    MissingDependencyError,
    UnknownFormatError,
)
from cryoxr.io._paths import read_bytes

__all__ = [
    "INSTALL_HINT",
    "Location",
    "client_errors",
    "is_url",
    "local_path",
    "remote_errors",
    "remote_filesystem",
    "zarr_store",
]

#: how a message says what to install for URLs
INSTALL_HINT = "pip install 'cryoxr[remote]'"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: URL schemes that name the local disk (copick writes ``local://``)
_LOCAL_SCHEMES = ("local://", "file://")


def is_url(target: Any) -> bool:
    """Whether ``target`` is a URL of a remote filesystem (``local://`` and ``file://`` are paths)."""
    return isinstance(target, str) and bool(_URL.match(target)) and not target.startswith(_LOCAL_SCHEMES)


def local_path(target: str | os.PathLike[str]) -> Path:
    """A local path, with a ``local://`` or ``file://`` scheme dropped."""
    text = os.fspath(target)
    for scheme in _LOCAL_SCHEMES:
        if text.startswith(scheme):
            return Path(text[len(scheme) :])
    return Path(text)


def client_errors() -> tuple[type[BaseException], ...]:
    """What HTTP / S3 clients raise for a failed request (each only if installed)."""
    found: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        import aiohttp

        found.append(aiohttp.ClientError)
    except ImportError:  # pragma: no cover - aiohttp is in the remote extra
        pass
    try:
        import requests

        found.append(requests.RequestException)
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


@contextmanager
def remote_errors(url: str, what: str) -> Iterator[None]:
    """Turn a remote filesystem's failures into :class:`CryoxrFileNotFoundError` naming ``url``."""
    try:
        yield
    except CryoxrError:
        raise
    except FileNotFoundError:
        raise CryoxrFileNotFoundError(f"{url}: no such {what} (the server answered: not found)") from None
    except client_errors() as err:
        raise CryoxrFileNotFoundError(
            f"{url}: the {what} could not be read: {type(err).__name__}: {err}"
        ) from None


def _fsspec_error(url: str, err: Exception) -> CryoxrError:
    if isinstance(err, ImportError):
        return MissingDependencyError(
            f"{url}: reading this URL needs a package that is not installed ({err}); {INSTALL_HINT}"
            + (" and s3fs for s3:// URLs" if url.startswith("s3") else "")
        )
    return UnknownFormatError(f"{url}: fsspec does not know this URL's protocol ({err})")


def remote_filesystem(url: str, **options: Any) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path in it (``fsspec.core.url_to_fs``).

    Raises
    ------
    MissingDependencyError
        fsspec (or the protocol's package, s3fs for ``s3://``) is not installed.
    UnknownFormatError
        A protocol fsspec does not know.
    """
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise MissingDependencyError(f"{url}: reading a URL needs fsspec; {INSTALL_HINT}") from None
    try:
        return url_to_fs(url, **options)
    except (ImportError, ValueError) as err:
        raise _fsspec_error(url, err) from None


def zarr_store(url: str) -> Any:
    """A read-only ``zarr.storage.FsspecStore`` for the store at ``url`` (chunks read one by one;
    metadata checked: :class:`~cryoxr.io.ome_zarr._store.GuardedFsspecStore`)."""
    from cryoxr.io.ome_zarr._store import GuardedFsspecStore

    remote_filesystem(url)  # the clear errors for a missing fsspec / protocol package
    try:
        return GuardedFsspecStore.from_url(url, read_only=True)
    except (ImportError, ValueError) as err:
        raise _fsspec_error(url, err) from None


class Location:
    """A file or folder on the local disk (``fs`` None) or in an fsspec filesystem.

    Parameters
    ----------
    fs
        The fsspec filesystem, or None for the local disk.
    path
        The path in ``fs`` (for HTTP: the URL).
    kind
        ``"directory"`` or ``"file"`` when a listing told it, else None (asked when needed).
    """

    __slots__ = ("fs", "kind", "path")

    def __init__(self, fs: Any, path: str, kind: str | None = None) -> None:
        self.fs, self.path, self.kind = fs, path.rstrip("/") or "/", kind

    @classmethod
    def of(cls, target: str | os.PathLike[str]) -> Location:
        """The location of a local path (``local://`` / ``file://`` allowed) or a URL."""
        if is_url(target):
            fs, path = remote_filesystem(str(target))
            return cls(fs, path)
        return cls(None, str(local_path(target)))

    def __str__(self) -> str:
        if self.fs is None:
            return self.path
        return str(self.fs.unstrip_protocol(self.path))

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and (self.fs, self.path) == (other.fs, other.path)

    def __hash__(self) -> int:
        return hash(self.path)

    def __truediv__(self, name: str) -> Location:
        if self.fs is None:
            return Location(None, os.path.join(self.path, name))
        return Location(self.fs, f"{self.path}/{name}")

    @property
    def remote(self) -> bool:
        """Whether the location is behind a URL."""
        return self.fs is not None

    @property
    def target(self) -> Path | str:
        """What a reader opens: the local path, or the URL."""
        return Path(self.path) if self.fs is None else str(self)

    @property
    def name(self) -> str:
        """The last component."""
        return self.path.rsplit("/", 1)[-1] if self.fs is not None else Path(self.path).name

    @property
    def stem(self) -> str:
        """The name without its last suffix."""
        return Path(self.name).stem

    @property
    def parent(self) -> Location:
        """The folder holding it."""
        if self.fs is None:
            return Location(None, str(Path(self.path).parent), "directory")
        return Location(self.fs, self.path.rsplit("/", 1)[0], "directory")

    def relative_parts(self, ancestor: Location) -> tuple[str, ...]:
        """The components below ``ancestor`` (a folder holding this location)."""
        rest = self.path[len(ancestor.path) :].strip("/").strip(os.sep)
        return tuple(p for p in re.split(r"[/\\]" if self.fs is None else "/", rest) if p)

    def children(self) -> list[Location]:
        """The members of a folder, sorted by name, each with its kind; none for a missing folder."""
        if self.fs is None:
            try:
                with os.scandir(self.path) as entries:
                    found = [Location(None, e.path, "directory" if e.is_dir() else "file") for e in entries]
            except (FileNotFoundError, NotADirectoryError):
                return []
        else:
            try:
                with remote_errors(str(self), "folder"):
                    listed = self.fs.ls(self.path, detail=True)
            except CryoxrFileNotFoundError:
                return []
            found = [
                Location(self.fs, str(e["name"]), "directory" if e.get("type") == "directory" else "file")
                for e in listed
                if str(e["name"]).rstrip("/") != self.path
            ]
        return sorted(found, key=lambda loc: loc.name)

    def is_dir(self) -> bool:
        """Whether it is a folder (asked of the filesystem unless a listing told it)."""
        if self.kind is not None:
            return self.kind == "directory"
        if self.fs is None:
            return os.path.isdir(self.path)
        with remote_errors(str(self), "folder"):
            return bool(self.fs.isdir(self.path))

    def is_file(self) -> bool:
        """Whether it is a file."""
        if self.kind is not None:
            return self.kind == "file"
        if self.fs is None:
            return os.path.isfile(self.path)
        with remote_errors(str(self), "file"):
            return bool(self.fs.isfile(self.path))

    def read_bytes(self, *, what: str, max_bytes: int | None = None) -> bytes:
        """The whole file; a local one through :func:`cryoxr.io._paths.read_bytes`.

        Raises
        ------
        CryoxrFileNotFoundError
            No such file, or the server could not be reached.
        FormatError
            Larger than ``max_bytes``.
        """
        if self.fs is None:
            return read_bytes(self.path, what=what, max_bytes=max_bytes)
        with remote_errors(str(self), f"{what} file"):
            data = bytes(self.fs.cat_file(self.path))
        if max_bytes is not None and len(data) > max_bytes:
            raise FormatError(f"{self}: {what} file of {len(data)} bytes; expected at most {max_bytes} bytes")
        return data

    def walk(self, prune: Callable[[Location], bool]) -> Iterator[Location]:
        """Every member below this folder, depth first; folders for which ``prune`` is true are
        yielded but not entered (an OME-Zarr store's chunks are never listed)."""
        for child in self.children():
            yield child
            if child.is_dir() and not prune(child):
                yield from child.walk(prune)
