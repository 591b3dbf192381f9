"""cryoxr._writers: the registry through which Image.to_mrc / Image.to_zarr reach cryoxr.io."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cryoxr
import cryoxr.image
from cryoxr import _writers
from cryoxr._writers import image_writer, register_image_writer
from cryoxr.errors import CryoxrError, UnknownFormatError


@pytest.fixture
def tomo() -> cryoxr.Tomogram:
    return cryoxr.Tomogram.from_array(np.zeros((2, 3, 4), np.float32), pixel_spacing=2.0, experiment_id="t")


def test_cryoxr_io_registers_its_writers() -> None:
    assert image_writer("mrc") is cryoxr.io.write_mrc
    assert image_writer("ome-zarr") is cryoxr.io.write_ome_zarr


def test_unregistered_name_is_a_clear_error() -> None:
    with pytest.raises(UnknownFormatError, match=r"'tiff'.*registered: 'mrc', 'ome-zarr'") as info:
        image_writer("tiff")
    assert isinstance(info.value, CryoxrError)


def test_to_mrc_without_a_registered_writer_raises(
    tomo: cryoxr.Tomogram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(_writers._IMAGE_WRITERS, "mrc")
    with pytest.raises(UnknownFormatError, match="'mrc'"):
        tomo.to_mrc("never-written.mrc")


@pytest.mark.parametrize(("method", "name"), [("to_mrc", "mrc"), ("to_zarr", "ome-zarr")])
def test_registered_writer_is_what_image_calls(
    tomo: cryoxr.Tomogram, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, method: str, name: str
) -> None:
    calls: list[tuple[Any, ...]] = []

    def spy(image: Any, path: Any, **kwargs: Any) -> Path:
        calls.append((image, path, kwargs))
        return Path(path)

    monkeypatch.setitem(_writers._IMAGE_WRITERS, name, image_writer(name))  # restored afterwards
    register_image_writer(name, spy)
    assert getattr(tomo, method)(tmp_path / "out", overwrite=True) == tmp_path / "out"
    assert calls == [(tomo, tmp_path / "out", {"overwrite": True})]
    assert list(tmp_path.iterdir()) == []


def test_image_module_does_not_import_io() -> None:
    tree = ast.parse(Path(cryoxr.image.__file__).read_text())
    imported = [
        alias.name if isinstance(node, ast.Import) else str(node.module)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [m for m in imported if m == "cryoxr.io" or m.startswith("cryoxr.io.")]
