"""cryoxr.io.images: suffix dispatch to the MRC and OME-Zarr readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryoxr import Micrograph, Tomogram
from cryoxr.errors import CryoxrFileNotFoundError, UnknownFormatError
from cryoxr.io.images import IMAGE_READERS, image_reader, open_image
from cryoxr.io.mrc import read_mrc
from cryoxr.io.ome_zarr import read_ome_zarr


@pytest.mark.parametrize(
    ("name", "reader"),
    [
        ("a.mrc", read_mrc),
        ("a.mrcs", read_mrc),
        ("TS_01.st", read_mrc),
        ("TS_01.ALI", read_mrc),
        ("TS_01_bin4.rec", read_mrc),
        ("emd_1234.map", read_mrc),
        ("TS_01.zarr", read_ome_zarr),
        ("TS_01.ome.zarr", read_ome_zarr),
        ("TS_01.OME.ZARR", read_ome_zarr),
    ],
)
def test_suffix_table(name: str, reader: object) -> None:
    assert image_reader(name) is reader


def test_every_suffix_is_listed_in_the_error() -> None:
    with pytest.raises(UnknownFormatError) as info:
        image_reader("tomo.tiff")
    for suffix in IMAGE_READERS:  # compressed MRC suffixes are listed as their parts
        assert all(part in str(info.value) for part in suffix.replace(".", " .").split())
    assert "tomo.tiff" in str(info.value)
    with pytest.raises(UnknownFormatError, match="'\\(none\\)'"):
        image_reader("README")


@pytest.mark.parametrize("name", ["t.mrc", "t.rec", "t.zarr", "t.ome.zarr"])
def test_open_image_round_trip(tmp_path: Path, name: str) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    tomo = Tomogram.from_array(data, pixel_spacing=3.5, experiment_id="t")
    path = tomo.to_zarr(tmp_path / name, levels=1) if "zarr" in name else tomo.to_mrc(tmp_path / name)
    opened = open_image(path, experiment_id="renamed", chunks=None)
    assert isinstance(opened, Tomogram)
    assert opened.experiment_id == "renamed"
    assert opened.pixel_spacing == 3.5
    np.testing.assert_array_equal(opened.data.values, data)


def test_open_image_options_reach_the_reader(tmp_path: Path) -> None:
    m = Micrograph.from_array(np.ones((4, 6), np.int16), pixel_spacing=1.0, experiment_id="m")
    path = m.to_mrc(tmp_path / "m.mrc")
    opened = open_image(path, pixel_spacing=7.0, chunks=(2, 3))
    assert isinstance(opened, Micrograph)
    assert opened.pixel_spacing == 7.0
    assert opened.data.chunks == ((2, 2), (3, 3))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CryoxrFileNotFoundError):
        open_image(tmp_path / "nope.mrc")
    with pytest.raises(CryoxrFileNotFoundError):
        open_image(tmp_path / "nope.ome.zarr")
