"""cryoxr.io._image_read: the isotropy check the MRC and OME-Zarr readers share."""

from __future__ import annotations

import pytest

from cryoxr import Image, Micrograph, Tomogram
from cryoxr.errors import FormatError
from cryoxr.io._image_read import IMAGE_CLASS, isotropic_spacing


def _check(sizes: dict[str, float], *, allow: bool = False) -> float:
    return isotropic_spacing(
        sizes, "a.mrc", "header field cella: voxel size", "voxel size",
        rtol=1e-5, allow_anisotropic=allow, stacklevel=1,
    )  # fmt: skip


def test_isotropic_within_tolerance_gives_x() -> None:
    assert _check({"x": 2.0, "y": 2.0 * (1 + 9e-6), "z": 2.0}) == 2.0


def test_anisotropic_raises_or_warns_naming_file_and_field() -> None:
    with pytest.raises(
        FormatError, match=r"a\.mrc: header field cella: voxel size is anisotropic \(x: 2, y: 3 Å\)"
    ):
        _check({"x": 2.0, "y": 3.0})
    with pytest.warns(UserWarning, match=r"a\.mrc: anisotropic voxel size \(x: 2, y: 3 Å\); keeping x: 2 Å"):
        assert _check({"x": 2.0, "y": 3.0}, allow=True) == 2.0


def test_image_class_by_kind() -> None:
    assert {(2, False): Micrograph, (3, False): Tomogram, (2, True): Image} == IMAGE_CLASS
