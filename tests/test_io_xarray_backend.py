"""Both doors, one result: cryoxr's readers and xarray's engine="cryoxr"."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import cryoxr
from cryoxr.io import open_image, read_ome_zarr
from cryoxr.io.xarray_backend import CryoxrBackendEntrypoint
from cryoxr.testing import raise_if_dask_computes


@pytest.fixture(params=["mrc", "ome-zarr"])
def image_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    values = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    tomo = cryoxr.Tomogram.from_array(values, pixel_spacing=4.2, experiment_id="TS_07")
    if request.param == "mrc":
        return tomo.to_mrc(tmp_path / "TS_07.mrc")
    return tomo.to_zarr(tmp_path / "TS_07.ome.zarr", levels=2)


def test_both_doors_agree(image_path: Path) -> None:
    direct = read_ome_zarr(image_path) if image_path.name.endswith(".zarr") else open_image(image_path)
    with raise_if_dask_computes():
        through_xarray = xr.open_dataarray(image_path, engine="cryoxr")
    assert isinstance(through_xarray.data, da.Array)
    xr.testing.assert_identical(through_xarray.drop_attrs(), direct.data.drop_attrs())
    assert through_xarray.attrs["pixel_spacing"] == pytest.approx(4.2)
    assert cryoxr.Image(through_xarray).experiment_id == "TS_07"


def test_engine_is_registered_and_guesses_mrc(tmp_path: Path) -> None:
    assert "cryoxr" in xr.backends.list_engines()
    backend = CryoxrBackendEntrypoint()
    assert backend.guess_can_open(tmp_path / "a.mrc")
    assert backend.guess_can_open(tmp_path / "a.rec")
    assert not backend.guess_can_open(tmp_path / "a.nc")
    assert not backend.guess_can_open(tmp_path / "a.zarr")  # xarray's zarr engine owns it


def test_pyramid_level(tmp_path: Path) -> None:
    tomo = cryoxr.Tomogram.from_array(np.ones((8, 8, 8), np.float32), pixel_spacing=2.0, experiment_id="t")
    path = tomo.to_zarr(tmp_path / "t.ome.zarr", levels=2)
    level1 = xr.open_dataarray(path, engine="cryoxr", level=1)
    assert level1.shape == (4, 4, 4)
    assert level1.attrs["pixel_spacing"] == pytest.approx(4.0)
