"""cryoxr.io.describe: every file and folder cryoxr writes is recognised and described."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cryoxr
from cryoxr.cli import main
from cryoxr.demo import run_demo
from cryoxr.errors import UnknownFormatError
from cryoxr.io import write_dynamo_table, write_imod_alignment
from cryoxr.io.describe import DESCRIBERS, describe, file_kind


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("demo")
    return run_demo(1_500, out, progress=False, figure=False).files


def test_every_file_the_demo_writes(demo_files: dict[str, Path]) -> None:
    folder = demo_files["particles"].parent
    # files inside stores and inside the RELION job folder of subtilt stacks are not files of their own
    written = [
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(".zarr" in q.name or q.name == "subtilts" for q in p.parents)
    ]
    written += [p for p in folder.iterdir() if p.name.endswith(".zarr")]
    kinds = {p.name: file_kind(p) for p in written}
    assert kinds == {
        "TS_01.ome.zarr": "image",
        "particles.star": "poses",
        "tomograms.star": "alignment",
        "TS_01.star": "tilt series",
        "TS_01.xf": "alignment",
        "TS_01.tlt": "tilt angles",
        "projected.zarr": "projected",
    }
    for path in written:
        report = describe(path, pixel_spacing=5.4)  # for the .xf, which stores none; the rest keep theirs
        json.dumps(report)
        assert report["size_on_disk"] > 0


def test_projected_stores_of_demo_and_cli(demo_files: dict[str, Path], tmp_path: Path) -> None:
    raw = describe(demo_files["projected"])
    assert (raw["particles"], raw["tilts"]) == (1_500, 41)
    out = tmp_path / "p.zarr"
    code = main(
        [
            "project",
            "--poses",
            str(demo_files["particles"]),
            "--alignment",
            str(demo_files["tilt series"]),
            "--image-size",
            "1024",
            "1024",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    report = describe(out)
    assert report["kind"] == "projected"
    assert (report["particles"], report["tilts"]) == (1_500, 41)
    assert set(report["variables"]) == {"projected", "in_field_of_view"}


def test_per_tilt_series_star(demo_files: dict[str, Path]) -> None:
    report = describe(demo_files["particles"].parent / "tilt_series" / "TS_01.star")
    assert report["kind"] == "tilt series"
    assert report["tilts"] == 41
    assert report["tilt_range"] == [-60.0, 60.0]


def test_imod_side_files_and_dynamo_map(tmp_path: Path, tilt_model: object) -> None:
    xf, tlt, xtilt = tmp_path / "a.xf", tmp_path / "a.tlt", tmp_path / "a.xtilt"
    write_imod_alignment(tilt_model, xf, tlt, xtilt=xtilt)
    assert describe(tlt)["tilts"] == 41
    assert describe(xtilt)["kind"] == "tilt angles"
    poses = cryoxr.make_poseset(np.zeros((2, 3)), experiment_id=np.array(["TS_a", "TS_b"]), pixel_spacing=2.0)
    tbl = tmp_path / "p.tbl"
    write_dynamo_table(poses, tbl, tomogram_map=tmp_path / "p.doc")
    report = describe(tmp_path / "p.doc")
    assert report["kind"] == "tomogram map"
    assert report["tomograms"] == 2


def test_zarr_store_that_is_neither_image_nor_projection(tmp_path: Path) -> None:
    import zarr

    store = tmp_path / "other.zarr"
    zarr.open_group(str(store), mode="w").create_array("something", shape=(3,), dtype="f4")
    with pytest.raises(UnknownFormatError, match=r"other\.zarr"):
        describe(store)


def test_every_kind_has_a_describer() -> None:
    from cryoxr.io.describe import SUFFIX_KINDS

    assert {*SUFFIX_KINDS.values(), "image", "tilt series", "projected"} <= set(DESCRIBERS)


def test_alignment_report_shows_the_per_tilt_optics(tmp_path: Path, relion5_project: Any) -> None:
    path = relion5_project(tmp_path, "TS_01", size=(400, 400, 300), image=(40, 30), px=1.35)
    report = cryoxr.describe(path)
    assert report["voltage"] == "300 kV"
    assert report["defocus_u"] == "39000..39500 Å"
    assert report["image_size_x"] == "40 px"
    assert report["tilt_image_center_y"] == "15 px"
    assert report["defocus_handedness"] == "-1"
    assert not set(report["extra_columns"]) & {"voltage", "defocus_u", "image_size_x"}
