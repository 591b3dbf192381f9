"""Every error cryoxr raises on purpose, in one place.

Each class derives from :class:`CryoxrError` *and* from the builtin a caller would
naturally catch (``ValueError`` for bad values, ``FileNotFoundError`` for missing files,
...), so ``except ValueError`` keeps working for code that does not know cryoxr.

Messages name the object or file, the field, what was expected and what was found, e.g.
``particles.star, line 1043, column rlnAngleTilt: expected a number, found 'nan?'``.

Examples
--------
>>> from cryoxr.errors import CryoxrError, InvalidValueError
>>> try:
...     raise InvalidValueError("PoseSet: pixel_spacing must be > 0, found -1.0")
... except ValueError as err:
...     isinstance(err, CryoxrError)
True
"""

from __future__ import annotations

__all__ = [
    "CryoxrError",
    "CryoxrFileNotFoundError",
    "FileExistsNoOverwriteError",
    "FormatError",
    "InvalidValueError",
    "MissingDependencyError",
    "SchemaError",
    "UnknownFormatError",
    "WriteError",
]


class CryoxrError(Exception):
    """Base of every error cryoxr raises on purpose."""


class InvalidValueError(CryoxrError, ValueError):
    """A value is out of range, non-finite, of the wrong shape or of the wrong type."""


class SchemaError(CryoxrError, ValueError):
    """An object does not follow cryoxr's data model (missing dim, column or attr)."""


class FormatError(CryoxrError, ValueError):
    """A file breaks the rules of its format (bad header, ragged table, ...)."""


class UnknownFormatError(CryoxrError, ValueError):
    """cryoxr does not know how to read or write this kind of file."""


class CryoxrFileNotFoundError(CryoxrError, FileNotFoundError):
    """A file cryoxr was asked to read does not exist."""


class FileExistsNoOverwriteError(CryoxrError, FileExistsError):
    """A writer was asked to write over an existing file without ``overwrite=True``."""


class WriteError(CryoxrError, OSError):
    """Writing failed (disk full, permission, ...); the original file is left untouched."""


class MissingDependencyError(CryoxrError, ImportError):
    """An optional dependency (matplotlib for :mod:`cryoxr.plot`, distributed, ...) is missing."""
