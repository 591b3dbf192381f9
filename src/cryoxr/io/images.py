"""Open any image file cryoxr knows, choosing the reader by suffix.

The suffix table :data:`IMAGE_READERS` is the whole dispatch: MRC for ``.mrc .mrcs .st
.ali .rec .map``, each also gzip- or bzip2-compressed (``.mrc.gz``, ``.rec.bz2``, ...;
:func:`cryoxr.io.mrc.read_mrc`), OME-Zarr for ``.zarr`` and
``.ome.zarr`` (:func:`cryoxr.io.ome_zarr.read_ome_zarr`, level 0), TOM/Dynamo ``.em``
(:func:`cryoxr.io.em.read_em`, which needs ``pixel_spacing=``). Suffixes are matched
case-insensitively, longest first.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> from cryoxr import Tomogram
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> tomo = Tomogram.from_array(np.zeros((4, 4, 4), np.float32), pixel_spacing=2.0, experiment_id="t")
>>> for name in ("t.rec", "t.ome.zarr"):
...     path = tomo.to_mrc(folder / name) if name.endswith(".rec") else tomo.to_zarr(folder / name)
...     print(name, open_image(path).shape)
t.rec (4, 4, 4)
t.ome.zarr (4, 4, 4)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Unpack

from cryoxr.errors import UnknownFormatError
from cryoxr.image import Image
from cryoxr.io._fs import is_url
from cryoxr.io._image_read import ImageReadOptions
from cryoxr.io.em import EM_SUFFIXES, read_em
from cryoxr.io.mrc import MRC_SUFFIXES, read_mrc
from cryoxr.io.mrc.compressed import COMPRESSED_SUFFIXES
from cryoxr.io.ome_zarr import OME_ZARR_SUFFIXES, read_ome_zarr

__all__ = ["IMAGE_READERS", "image_reader", "open_image"]

#: suffix -> reader; each reader takes ``(path, *, chunks, experiment_id, pixel_spacing,
#: allow_anisotropic)``
IMAGE_READERS: dict[str, Callable[..., Image]] = {
    **dict.fromkeys(MRC_SUFFIXES, read_mrc),
    **dict.fromkeys((f"{s}{c}" for s in MRC_SUFFIXES for c in COMPRESSED_SUFFIXES), read_mrc),
    **dict.fromkeys(OME_ZARR_SUFFIXES, read_ome_zarr),
    **dict.fromkeys(EM_SUFFIXES, read_em),  # TOM/Dynamo .em: pixel_spacing= required
}


def image_reader(path: str | os.PathLike[str]) -> Callable[..., Image]:
    """The reader :func:`open_image` would use for ``path``.

    Raises
    ------
    UnknownFormatError
        The suffix is not in :data:`IMAGE_READERS`; the message lists the known ones.

    Examples
    --------
    >>> image_reader("TS_01.ALI").__name__
    'read_mrc'
    >>> image_reader("TS_01.tif")
    Traceback (most recent call last):
    ...
    cryoxr.errors.UnknownFormatError: TS_01.tif: unknown image suffix '.tif'; cryoxr reads \
.ali, .em, .map, .mrc, .mrcs, .ome.zarr, .rec, .st, .zarr (the MRC ones also compressed: .gz, .bz2)
    """
    name = Path(path).name.lower()
    for suffix in sorted(IMAGE_READERS, key=len, reverse=True):
        if name.endswith(suffix):
            return IMAGE_READERS[suffix]
    found = Path(path).suffix or "(none)"
    plain = sorted(s for s in IMAGE_READERS if not s.endswith(tuple(COMPRESSED_SUFFIXES)))
    raise UnknownFormatError(
        f"{path}: unknown image suffix {found!r}; cryoxr reads {', '.join(plain)} "
        f"(the MRC ones also compressed: {', '.join(COMPRESSED_SUFFIXES)})"
    )


def open_image(path: str | os.PathLike[str], **options: Unpack[ImageReadOptions]) -> Image:
    """Open an image file lazily, choosing the reader by suffix.

    Parameters
    ----------
    path
        An MRC file or an OME-Zarr store (see :data:`IMAGE_READERS`); an OME-Zarr store
        may be a URL (:func:`~cryoxr.io.ome_zarr.read_ome_zarr`).
    **options
        The options every image reader takes (:class:`ImageReadOptions`: ``chunks``,
        ``experiment_id``, ``pixel_spacing``, ``allow_anisotropic``), passed to the reader
        (:func:`~cryoxr.io.mrc.read_mrc`, :func:`~cryoxr.io.em.read_em` or
        :func:`~cryoxr.io.ome_zarr.read_ome_zarr`, which opens level 0).

    Returns
    -------
    Image
        A :class:`~cryoxr.Tomogram`, :class:`~cryoxr.Micrograph` or stack
        :class:`~cryoxr.Image`.

    Raises
    ------
    UnknownFormatError
        Unknown suffix; the message lists the suffixes cryoxr reads. A URL of a file other
        than an OME-Zarr store.
    CryoxrFileNotFoundError, FormatError
        From the reader.
    """
    reader = image_reader(path)
    if is_url(path) and reader is not read_ome_zarr:
        raise UnknownFormatError(
            f"{path}: cryoxr reads OME-Zarr stores from URLs (chunk by chunk); download this file "
            "and open the local copy"
        )
    return reader(path, **options)
