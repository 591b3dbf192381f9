"""What the image readers (MRC, OME-Zarr) share: the wrapper class of each kind, the isotropy check.

Examples
--------
>>> IMAGE_CLASS[(3, False)].__name__
'Tomogram'
>>> isotropic_spacing({"x": 2.0, "y": 2.0}, "a.mrc", "header field cella: voxel size", "voxel size",
...                   rtol=1e-5, allow_anisotropic=False, stacklevel=1)
2.0
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TypedDict

from cryoxr.errors import FormatError
from cryoxr.image import Chunks, Image, Micrograph, Tomogram

__all__ = ["IMAGE_CLASS", "ImageReadOptions", "isotropic_spacing"]


class ImageReadOptions(TypedDict, total=False):
    """The keyword options every image reader takes (MRC, EM, OME-Zarr), declared once.

    ``chunks``: dask chunks (``"auto"``: slabs of whole planes of about 64 MiB; None: no
    dask, a lazily indexed array). ``experiment_id``: the id (default: the file name).
    ``pixel_spacing``: Å per pixel, for a file that stores none (refused when it
    contradicts the file). ``allow_anisotropic``: accept unequal axis spacings (warning)
    instead of refusing them.
    """

    chunks: Chunks
    experiment_id: str | None
    pixel_spacing: float | None
    allow_anisotropic: bool


#: the wrapper class for (spatial ndim, stack)
IMAGE_CLASS: dict[tuple[int, bool], type[Image]] = {
    (2, False): Micrograph,
    (3, False): Tomogram,
    (2, True): Image,
}


def isotropic_spacing(
    sizes: Mapping[str, float],
    where: str,
    field: str,
    quantity: str,
    *,
    rtol: float,
    allow_anisotropic: bool,
    stacklevel: int,
) -> float:
    """The x spacing, after checking that every spatial axis has it (relative tolerance ``rtol``).

    Parameters
    ----------
    sizes
        Spacing in Å by axis name, finite and positive; must hold ``"x"``.
    where
        The file or store, for messages.
    field, quantity
        What the sizes come from, for the error (``"{field} is anisotropic"``) and the
        warning (``"anisotropic {quantity}"``).
    rtol
        Relative tolerance to the x spacing.
    allow_anisotropic
        Warn and keep x instead of raising.
    stacklevel
        As for :func:`warnings.warn`, counted from the caller of this function.

    Raises
    ------
    FormatError
        The spacings differ and ``allow_anisotropic`` is False.
    """
    first = sizes["x"]
    # np.allclose(rtol=rtol, atol=0) on a few floats, without numpy's fixed cost
    if any(abs(v - first) > rtol * abs(first) for v in sizes.values()):
        text = ", ".join(f"{a}: {v:g}" for a, v in sizes.items())
        if not allow_anisotropic:
            raise FormatError(
                f"{where}: {field} is anisotropic ({text} Å); cryoxr images are "
                "isotropic: pass allow_anisotropic=True to keep the x spacing"
            )
        warnings.warn(
            f"{where}: anisotropic {quantity} ({text} Å); keeping x: {first:g} Å", stacklevel=stacklevel + 1
        )
    return first
