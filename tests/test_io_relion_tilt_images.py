"""The tilt images of a RELION project as lazy stacks: per-tilt files, N@stack sections,
stacks in a folder given on the command line, and what is missing."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

import cryoxr
from cryoxr.errors import CryoxrFileNotFoundError, FormatError
from cryoxr.io.relion import open_relion_tilt_series


def test_tilt_images_from_sections_a_stack_folder_and_missing(tmp_path: Path) -> None:
    stack = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    with mrcfile.new(tmp_path / "all.mrcs") as mrc:
        mrc.set_data(stack)
    model = cryoxr.make_projection_model(
        rotation_y=[0.0, 3.0], experiment_id="TS_01", pixel_spacing=1.5, source=str(tmp_path / "TS_01.star"),
        extra={"rlnMicrographName": ["3@all.mrcs", "1@all.mrcs"]},
    )  # fmt: skip
    ts = open_relion_tilt_series(model)["TS_01"]
    assert ts.data.data.chunks[0] == (1, 1)
    np.testing.assert_array_equal(ts.data.values, stack[[2, 0]])
    assert ts.pixel_spacing == 1.5
    folder = tmp_path / "stacks"
    folder.mkdir()
    cryoxr.Image.from_array(stack[::-1].copy(), pixel_spacing=9.0, experiment_id="x", stack=True).to_zarr(
        folder / "TS_01.zarr"
    )
    from_zarr = open_relion_tilt_series(model, tilt_series_dir=folder)["TS_01"]
    np.testing.assert_array_equal(from_zarr.data.values[:2], stack[::-1][:2])
    assert from_zarr.pixel_spacing == 1.5
    with pytest.raises(FormatError, match="section 7"):
        open_relion_tilt_series(model.assign(rlnMicrographName=["7@all.mrcs", "1@all.mrcs"]))
    with pytest.raises(CryoxrFileNotFoundError, match=r"gone\.mrc"):
        open_relion_tilt_series(model.assign(rlnMicrographName=["gone.mrc", "1@all.mrcs"]))
    with pytest.raises(FormatError, match="names no images"):
        open_relion_tilt_series(model.drop(columns="rlnMicrographName"))
