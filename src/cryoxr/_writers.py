"""Image writers by format name, so that the core layer writes files without importing IO.

:meth:`cryoxr.Image.to_mrc` and :meth:`cryoxr.Image.to_zarr` look their writer up here
(:func:`image_writer`); ``import cryoxr`` registers ``"mrc"`` (:func:`cryoxr.io.write_mrc`)
and ``"ome-zarr"`` (:func:`cryoxr.io.write_ome_zarr`) with :func:`register_image_writer`,
as stand-ins that load :mod:`cryoxr.io` on first use (which then registers itself). The names are those of :func:`cryoxr.io.convert`'s
``to=``. Looking up a name that nothing registered raises
:class:`~cryoxr.errors.UnknownFormatError`.

Examples
--------
>>> import cryoxr
>>> image_writer("mrc").__name__
'write_mrc'
>>> image_writer("tiff")
Traceback (most recent call last):
...
cryoxr.errors.UnknownFormatError: no image writer registered for 'tiff'; registered: 'mrc', 'ome-zarr' \
(cryoxr.io registers its writers when imported)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryoxr.errors import UnknownFormatError

__all__ = ["ImageWriter", "image_writer", "register_image_writer"]

#: ``writer(image, path, **options) -> Path``: writes an Image (or image DataArray) to ``path``
ImageWriter = Callable[..., Path]

#: format name -> writer, filled by :mod:`cryoxr.io` when it is imported
_IMAGE_WRITERS: dict[str, ImageWriter] = {}


def register_image_writer(name: str, writer: ImageWriter) -> None:
    """Make ``writer`` the image writer for the format ``name`` (replacing any earlier one).

    Parameters
    ----------
    name
        Format name, e.g. ``"mrc"`` or ``"ome-zarr"``.
    writer
        Called as ``writer(image, path, **options)``; returns the written path.

    Examples
    --------
    >>> register_image_writer("mrc", image_writer("mrc"))  # what cryoxr.io does at import
    """
    _IMAGE_WRITERS[name] = writer


def image_writer(name: str) -> ImageWriter:
    """The image writer registered for the format ``name``.

    Raises
    ------
    UnknownFormatError
        Nothing is registered under ``name``; the message lists the registered names.

    Examples
    --------
    >>> import cryoxr
    >>> image_writer("ome-zarr").__name__
    'write_ome_zarr'
    """
    try:
        return _IMAGE_WRITERS[name]
    except KeyError:
        known = ", ".join(repr(n) for n in sorted(_IMAGE_WRITERS)) or "none"
        raise UnknownFormatError(
            f"no image writer registered for {name!r}; registered: {known} "
            "(cryoxr.io registers its writers when imported)"
        ) from None
