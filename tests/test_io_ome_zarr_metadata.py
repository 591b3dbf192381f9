"""cryoxr.io.ome_zarr.metadata: NGFF multiscales checked on read (bad stores, units, transforms)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from cryoxr.errors import (
    CryoxrError,
    CryoxrFileNotFoundError,
    FormatError,
    InvalidValueError,
    UnknownFormatError,
)
from cryoxr.io.ome_zarr import read_ome_zarr


def _write_group(
    path: Path, attrs: dict[str, Any], *, zarr_format: int = 2, shape: tuple[int, ...] = (2, 3, 4)
) -> Path:
    root = zarr.open_group(path, mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
    root.create_array("0", shape=shape, dtype="f4", chunks=shape)
    root.attrs.update(attrs)
    return path


def _ms(**changes: Any) -> dict[str, Any]:
    ms: dict[str, Any] = {
        "version": "0.4",
        "axes": [{"name": a, "type": "space", "unit": "angstrom"} for a in "zyx"],
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 2.0, 2.0]}]}
        ],
    }
    ms.update(changes)
    return {"multiscales": [ms]}


XYZ_NM = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]


@pytest.mark.parametrize(
    ("attrs", "error", "match"),
    [
        ({}, FormatError, "multiscales is missing"),
        ({"ome": {"version": "0.5"}}, FormatError, "ome.multiscales is missing"),
        (_ms(version="0.3"), UnknownFormatError, "version '0.3'"),
        (_ms(axes=[]), FormatError, "axes is missing"),
        (
            _ms(
                datasets=[
                    {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 2.0, 1.0]}]}
                ]
            ),
            FormatError,
            "anisotropic",
        ),
        (
            _ms(
                datasets=[
                    {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]}
                ]
            ),
            FormatError,
            "scale must list 3",
        ),
        (
            _ms(
                datasets=[
                    {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [np.nan] * 3}]}
                ]
            ),
            FormatError,
            "positive finite",
        ),
        (_ms(datasets=[{"path": "0", "coordinateTransformations": []}]), FormatError, "no scale"),
        (
            _ms(
                datasets=[{"path": "9", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * 3}]}]
            ),
            FormatError,
            "no such array",
        ),
        (
            _ms(axes=[{"name": a, "type": "space", "unit": "parsec"} for a in "zyx"]),
            FormatError,
            "unit 'parsec'",
        ),
        (_ms(axes=[{"name": a, "type": "space"} for a in "zyx"]), FormatError, "no unit"),
        (_ms(axes=[{"name": a, "type": "space", "unit": "angstrom"} for a in "abc"]), FormatError, "axes"),
    ],
)
def test_bad_stores(tmp_path: Path, attrs: dict[str, Any], error: type[Exception], match: str) -> None:
    path = _write_group(tmp_path / "bad.zarr", attrs)
    with pytest.raises(error, match=match) as info:
        read_ome_zarr(path)
    assert isinstance(info.value, CryoxrError)
    assert "bad.zarr" in str(info.value)


def test_anisotropic_allowed_and_unit_override(tmp_path: Path) -> None:
    aniso = _ms(
        axes=XYZ_NM,
        datasets=[{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1.0, 1.0]}]}],
    )
    path = _write_group(tmp_path / "a.zarr", aniso)
    with pytest.warns(UserWarning, match="anisotropic"):
        assert read_ome_zarr(path, allow_anisotropic=True).pixel_spacing == 10.0
    no_unit = _write_group(tmp_path / "b.zarr", _ms(axes=[{"name": a, "type": "space"} for a in "zyx"]))
    assert read_ome_zarr(no_unit, pixel_spacing=3.0).pixel_spacing == 3.0
    # the multiscale-level transform multiplies the dataset's
    scaled = _write_group(
        tmp_path / "c.zarr",
        _ms(coordinateTransformations=[{"type": "scale", "scale": [3.0, 3.0, 3.0]}]),
    )
    assert read_ome_zarr(scaled).pixel_spacing == 6.0


def test_missing_and_not_a_group(tmp_path: Path) -> None:
    with pytest.raises(CryoxrFileNotFoundError, match="nope"):
        read_ome_zarr(tmp_path / "nope.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(FormatError, match="not a zarr group"):
        read_ome_zarr(tmp_path / "empty.zarr")
    path = _write_group(tmp_path / "ok.zarr", _ms())
    with pytest.raises(InvalidValueError, match="level"):
        read_ome_zarr(path, level=1)
