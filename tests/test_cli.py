"""The `cryoxr` command end to end, in subprocesses, on files the demo writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import cryoxr
from cryoxr.cli import main
from cryoxr.demo import run_demo
from cryoxr.io import read_poses


def cryoxr_cmd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cryoxr", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("demo")
    summary = run_demo(3_000, out, progress=False, figure=False)
    return summary.files


def test_info_every_kind(demo_files: dict[str, Path]) -> None:
    paths = [demo_files[k] for k in ("tomogram", "particles", "tilt series", "imod")]
    refused = cryoxr_cmd("info", "--json", *map(str, paths))
    assert refused.returncode == 2  # an .xf stores no pixel size: the flag, in the command's terms
    assert "TS_01.xf: IMOD .xf files store no pixel size; pass --pixel-spacing Å" in refused.stderr
    assert "pixel_spacing=" not in refused.stderr
    # the pixel size goes to the files that store none; the RELION files keep their own
    result = cryoxr_cmd("info", "--json", "--pixel-spacing", "5.4", *map(str, paths))
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    by_kind = {r["kind"]: r for r in reports}
    assert by_kind["tomogram"]["shape"] == [128, 512, 512]
    assert by_kind["tomogram"]["pixel_spacing"] == pytest.approx(10.8)
    assert by_kind["tomogram"]["format"] == "OME-Zarr"
    assert by_kind["poses"]["particles"] == 3_000
    assert by_kind["poses"]["experiment_ids"] == ["TS_01"]
    alignments = [r for r in reports if r["kind"] == "alignment"]
    assert [a["tilts"] for a in alignments] == [41, 41]
    assert [a["pixel_spacing"] for a in alignments] == [[5.4], [5.4]]  # RELION's own, and the flag's
    assert all(r["size_on_disk"] > 0 for r in reports)
    text = cryoxr_cmd("info", str(demo_files["particles"]))
    assert "particles" in text.stdout
    assert "3,000" in text.stdout


def test_convert_images_poses_alignments_and_refuse_overwrite(
    demo_files: dict[str, Path], tmp_path: Path
) -> None:
    mrc = tmp_path / "tomo.mrc"
    assert cryoxr_cmd("convert", str(demo_files["tomogram"]), str(mrc), "--no-progress").returncode == 0
    back = cryoxr.io.open_image(mrc)
    assert back.shape == (128, 512, 512)
    original = cryoxr.io.open_image(demo_files["tomogram"])
    np.testing.assert_array_equal(back.data[60].values, original.data[60].values)

    tbl = tmp_path / "particles.tbl"
    assert cryoxr_cmd("convert", str(demo_files["particles"]), str(tbl)).returncode == 0
    a, b = read_poses(demo_files["particles"]), read_poses(tbl)
    np.testing.assert_allclose(
        (b["position"] + b["shift"]).values, (a["position"] + a["shift"]).values, atol=1e-6
    )

    aln = tmp_path / "TS_01.aln"
    needs_spacing = cryoxr_cmd("convert", str(demo_files["imod"]), str(aln), "--image-size", "1024", "1024")
    assert needs_spacing.returncode == 2
    assert "pass --pixel-spacing Å (Å per pixel of the tilt images)" in needs_spacing.stderr
    needs_size = cryoxr_cmd("convert", str(demo_files["imod"]), str(aln), "--pixel-spacing", "5.4")
    assert needs_size.returncode == 2
    assert "pass --image-size X Y" in needs_size.stderr  # CLI terms, not Python's image_size=
    assert "image_size=" not in needs_size.stderr
    size = ("--image-size", "1024", "1024", "--pixel-spacing", "5.4")
    assert cryoxr_cmd("convert", str(demo_files["imod"]), str(aln), *size).returncode == 0
    assert cryoxr.io.read_alignment(aln, pixel_spacing=5.4).shape[0] == 41
    again = cryoxr_cmd("convert", str(demo_files["imod"]), str(aln), *size)
    assert again.returncode == 2
    assert again.stderr.startswith("cryoxr: error: ")
    assert "exists" in again.stderr
    assert "--overwrite" in again.stderr
    assert "overwrite=True" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert cryoxr_cmd("convert", str(demo_files["imod"]), str(aln), "--overwrite", *size).returncode == 0


def test_project_writes_positions_and_mask(demo_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "projected.zarr"
    result = cryoxr_cmd(
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
        "--chunks",
        "1000",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "3,000 particles x 41 tilts" in result.stdout
    stored = xr.open_zarr(out)
    assert stored["projected"].shape == (3000, 41, 2)
    assert stored["in_field_of_view"].dtype == bool
    # the files (RELION 5, tilt-series pixels) project where the demo's bin-8 poses did
    import zarr

    demo = zarr.open_array(str(demo_files["projected"]), mode="r")[:]
    np.testing.assert_allclose(stored["projected"].values, demo, atol=1e-4)
    # the demo's own projection (bin-8 poses, rescaled) agrees with the files' (tilt pixels)
    refuse = cryoxr_cmd(
        "project",
        "--poses",
        str(demo_files["particles"]),
        "--alignment",
        str(demo_files["tilt series"]),
        "--out",
        str(out),
    )
    assert refuse.returncode == 2
    assert "exists" in refuse.stderr


def test_bad_file_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "broken.star"
    bad.write_bytes(b"data_particles\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1.0\n")
    result = cryoxr_cmd("info", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith("cryoxr: error: ")
    assert str(bad) in result.stderr
    assert "Traceback" not in result.stderr
    debug = cryoxr_cmd("--debug", "info", str(bad))
    assert "Traceback" in debug.stderr
    missing = cryoxr_cmd("info", str(tmp_path / "nope.mrc"))
    assert missing.returncode == 2
    assert "nope.mrc" in missing.stderr


def test_unknown_suffix_lists_known(tmp_path: Path) -> None:
    odd = tmp_path / "thing.xyz"
    odd.write_text("hello\n")
    result = cryoxr_cmd("info", str(odd))
    assert result.returncode == 2
    assert "known" in result.stderr


def test_main_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_in_process_commands(
    demo_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same commands through main(), in this process (subprocess runs are not measured by coverage)."""
    assert main(["info", "--json", str(demo_files["particles"])]) == 0
    assert json.loads(capsys.readouterr().out)["particles"] == 3_000
    assert (
        main(
            [
                "convert",
                str(demo_files["tilt series"]),
                str(tmp_path / "a.aln"),
                "--no-progress",
                "--image-size",
                "1024",
                "1024",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    out = tmp_path / "p.zarr"
    assert (
        main(
            [
                "project",
                "--poses",
                str(demo_files["particles"]),
                "--alignment",
                str(demo_files["tilt series"]),
                "--image-size",
                "1024",
                "1024",
                "--margin",
                "8",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "in field of view per tilt" in capsys.readouterr().out
    assert (
        main(
            [
                "project",
                "--poses",
                str(demo_files["particles"]),
                "--alignment",
                str(demo_files["imod"]),
                "--pixel-spacing",
                "5.4",
                "--out",
                str(tmp_path / "q.zarr"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "tomogram size" in capsys.readouterr().err  # the pixel size passed, the sizes missing
    # a flag for files that store no pixel size, refused for one that does, in the command's terms
    star = str(demo_files["tilt series"])
    assert main(["convert", star, str(tmp_path / "b.xf"), "--pixel-spacing", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "stores its own pixel size" in err
    assert "--pixel-spacing is only for files that store none" in err
    with pytest.raises(SystemExit):
        main(["info", star, "--pixel-spacing", "-1"])
    assert "expected a pixel size > 0 Å" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.star")]) == 2
    assert "missing.star" in capsys.readouterr().err


def test_convert_reports_every_file_it_writes(demo_files: dict[str, Path], tmp_path: Path) -> None:
    xf = tmp_path / "ts.xf"
    result = cryoxr_cmd("convert", str(demo_files["tilt series"]), str(xf), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert str(xf) in result.stdout
    assert str(tmp_path / "ts.tlt") in result.stdout  # the sibling IMOD writes too
    assert (tmp_path / "ts.tlt").is_file()


def test_convert_takes_tomograms_from_the_command_line(demo_files: dict[str, Path], tmp_path: Path) -> None:
    # a RELION 5 tilt-series STAR needs tomogram sizes that an IMOD .xf does not hold
    star = tmp_path / "ts.star"
    imod = (str(demo_files["imod"]), str(star), "--pixel-spacing", "5.4")
    refused = cryoxr_cmd("convert", *imod, "--no-progress")
    assert refused.returncode == 2
    assert "--tomograms" in refused.stderr
    assert "tomograms=" not in refused.stderr
    done = cryoxr_cmd("convert", *imod, "--tomograms", str(demo_files["tilt series"]))
    assert done.returncode == 0, done.stderr
    back = cryoxr.io.read_alignment(star)
    assert len(back) == 41


def test_progress_goes_to_stderr_as_lines_in_a_log(demo_files: dict[str, Path], tmp_path: Path) -> None:
    mrc = tmp_path / "tomo.mrc"
    result = cryoxr_cmd("convert", str(demo_files["tomogram"]), str(mrc))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote ")
    assert len(result.stdout.splitlines()) == 1  # no progress between the results
    assert "\r" not in result.stderr  # a log file gets lines, not a redrawn bar


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused = cryoxr_cmd("demo", "--particles", "100", "--out", str(out), "--no-figure", "--no-progress")
    assert refused.returncode == 2
    assert "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    again = cryoxr_cmd(
        "demo", "--particles", "100", "--out", str(out), "--no-figure", "--no-progress", "--overwrite"
    )
    assert again.returncode == 0, again.stderr
    assert (out / "notes.txt").read_text() == "mine"  # other files are left alone


@pytest.mark.parametrize("value", ["-5", "many"])
def test_demo_particle_count_is_checked_by_the_parser(value: str) -> None:
    result = cryoxr_cmd("demo", "--particles", value)
    assert result.returncode == 2
    assert "--particles" in result.stderr
    assert "Traceback" not in result.stderr


def test_project_takes_geometry_from_the_alignment(
    tmp_path: Path, relion5_project: Any, rng: np.random.Generator
) -> None:
    """RELION 5 files that hold tomogram and tilt-image size: no geometry flag needed, and the
    field-of-view mask comes from the alignment's image size."""
    alignment = relion5_project(tmp_path, "TS_01", size=(1001, 801, 301), image=(200, 151), px=1.35)
    points = rng.uniform(0, 1, (50, 3)) * [1001, 801, 301]
    poses = cryoxr.make_poseset(points / 4, experiment_id="TS_01", pixel_spacing=5.4)  # bin-4 picks
    cryoxr.io.write_relion_particles(poses, tmp_path / "picks.star", version=4)
    out = tmp_path / "p.zarr"
    argv = [
        "project",
        "--poses",
        str(tmp_path / "picks.star"),
        "--alignment",
        str(alignment),
        "--out",
        str(out),
    ]
    assert main([*argv, "--no-progress"]) == 0
    stored = xr.open_zarr(out)
    model = cryoxr.read_alignment(alignment)
    unbinned = cryoxr.make_poseset(points, experiment_id="TS_01", pixel_spacing=1.35)
    np.testing.assert_allclose(stored["projected"].values, cryoxr.project(unbinned, model).values, atol=1e-6)
    expected = cryoxr.in_field_of_view(cryoxr.project(unbinned, model), image_shape=(151, 200))
    np.testing.assert_array_equal(stored["in_field_of_view"].values, expected.values)


def test_library_warnings_are_one_line_each_on_stderr(
    demo_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the demo's RELION tilt series carries per-tilt columns an AreTomo .aln cannot store
    code = main(
        [
            "convert",
            str(demo_files["tilt series"]),
            str(tmp_path / "a.aln"),
            "--image-size",
            "1024",
            "1024",
            "--no-progress",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cryoxr: warning: ")]
    assert lines, err
    assert all("Warning" not in line.split(":", 2)[1] for line in lines)  # no Python category names


# -- cryoxr average ----------------------------------------------------------------------


def _average_inputs(planted: dict[str, Any], folder: Path) -> Path:
    """The planted tomogram as folder/TS_01.mrc and its poses as a RELION 4 particle file."""
    import shutil

    shutil.copy(planted["mrc"], folder / "TS_01.mrc")
    particles = folder / "particles.star"
    cryoxr.io.write_relion_particles(planted["poses"], particles, version=4)
    return particles


def test_average_writes_the_map_half_maps_and_figure(
    planted: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    particles = _average_inputs(planted, tmp_path)
    out = tmp_path / "avg.mrc"
    args = ["average", "--particles", str(particles), "--tomograms", str(tmp_path), "--box-size", "20"]
    args += ["--out", str(out), "--half-maps", "--figure", str(tmp_path / "avg.png"), "--no-progress"]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "averaged 32 particles (0 with boxes crossing the edge, edge=exclude)" in stdout
    assert "half-map FSC 0.143 resolution:" in stdout
    average = cryoxr.io.open_image(out)
    assert average.shape == (20, 20, 20)
    assert average.pixel_spacing == pytest.approx(10.0)
    # the RELION angles written and read back mean the same orientation: the template returns
    assert np.corrcoef(average.data.values.ravel(), planted["template"].ravel())[0, 1] > 0.9
    halves = [cryoxr.io.open_image(tmp_path / f"avg_half{i}.mrc").data.values for i in (1, 2)]
    np.testing.assert_allclose((halves[0] + halves[1]) / 2, average.data.values, atol=1e-5)
    assert (tmp_path / "avg.png").stat().st_size > 0
    assert main(args) == 2  # nothing replaced without --overwrite, checked before the work
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--tilt-range", "-60", "60"]) == 0


def test_average_takes_a_map_file_or_one_tomogram_and_names_what_is_missing(
    planted: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    particles = _average_inputs(planted, tmp_path)
    (tmp_path / "sub").mkdir()
    mapping = tmp_path / "sub" / "tomograms.txt"
    mapping.write_text("# experiment_id path\nTS_01 ../TS_01.mrc\n")
    base = ["average", "--particles", str(particles), "--box-size", "8", "--no-progress"]
    assert main([*base, "--tomograms", str(mapping), "--out", str(tmp_path / "a.mrc")]) == 0
    assert main([*base, "--tomograms", str(tmp_path / "TS_01.mrc"), "--out", str(tmp_path / "b.mrc")]) == 0
    a, b = (cryoxr.io.open_image(tmp_path / name).data.values for name in ("a.mrc", "b.mrc"))
    np.testing.assert_array_equal(a, b)
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*base, "--tomograms", str(empty), "--out", str(tmp_path / "c.mrc")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cryoxr: error: ")
    assert "no tomogram for experiment_id 'TS_01'" in err
    mapping.write_text("TS_01\n")
    assert main([*base, "--tomograms", str(mapping), "--out", str(tmp_path / "c.mrc")]) == 2
    assert "tomograms.txt, line 1: expected 'experiment_id path'" in capsys.readouterr().err
    from cryoxr.io.star import StarBlock, write_star

    table = pd.DataFrame({"rlnTomoName": ["TS_01"], "rlnTomoReconstructedTomogram": ["../TS_01.mrc"]})
    star = tmp_path / "sub" / "tomograms.star"
    write_star([StarBlock("global", table)], star)
    assert main([*base, "--tomograms", str(star), "--out", str(tmp_path / "d.mrc")]) == 0
    np.testing.assert_array_equal(cryoxr.io.open_image(tmp_path / "d.mrc").data.values, a)
    write_star(
        [StarBlock("global", table.drop(columns="rlnTomoReconstructedTomogram"))], star, overwrite=True
    )
    assert main([*base, "--tomograms", str(star), "--out", str(tmp_path / "e.mrc")]) == 2
    assert "no block with columns rlnTomoName and rlnTomoReconstructedTomogram" in capsys.readouterr().err


def test_extract_writes_the_relion_stack2d_set(
    tmp_path: Path, relion5_project: Any, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cryoxr extract` from a RELION 5 project: the folder the Python API writes, frame for frame."""
    import mrcfile

    from cryoxr.io.relion import open_relion_tilt_series, read_relion_particles, read_relion_tilt_series

    tomograms = relion5_project(tmp_path, "TS_01", size=(200, 150, 60), image=(200, 150), px=2.0)
    for path in sorted((tmp_path / "frames").glob("*.mrc")):
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(rng.normal(size=(150, 200)).astype(np.float32))
    points = rng.uniform([60, 50, 20], [140, 100, 40], size=(8, 3))
    poses = cryoxr.make_poseset(points, experiment_id="TS_01", pixel_spacing=2.0)
    cryoxr.io.write_relion_particles(poses, tmp_path / "particles.star", version=5, tomograms=tomograms)
    monkeypatch.chdir(tmp_path)
    argv = ["extract", "--particles", "particles.star", "--tomograms", "tomograms.star", "--box-size", "24"]
    argv += [
        "--bin",
        "2",
        "--crop-size",
        "16",
        "--out",
        "Extract/job003",
        "--zarr",
        "s.zarr",
        "--no-progress",
    ]
    assert main(argv) == 0
    model = read_relion_tilt_series(tomograms)
    read = read_relion_particles(tmp_path / "particles.star", tomograms=tomograms)
    expected = cryoxr.extract_subtilts(
        open_relion_tilt_series(model), cryoxr.project(read, model), box_size=24, bin=2.0, crop_size=16,
        mode="relion", projection_model=model, defocus=cryoxr.particle_defocus(read, model),
    )  # fmt: skip
    visible = expected.visible.values
    for p in range(8):
        with mrcfile.open(tmp_path / f"Extract/job003/Subtomograms/TS_01/{p + 1}_stack2d.mrcs") as mrc:
            np.testing.assert_array_equal(mrc.data, expected.values[p][visible[p]])
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "s.zarr")["subtilts"].values, expected.values)
    assert main([*argv, "--float16"]) == 2  # the folder exists: refused before any work
    assert main([*argv, "--float16", "--no-ctf", "--overwrite"]) == 0
    with mrcfile.open(tmp_path / "Extract/job003/Subtomograms/TS_01/1_stack2d.mrcs") as mrc:
        assert mrc.header.mode == 12


def test_extract_on_a_cluster_writes_what_threads_write(
    tmp_path: Path,
    relion5_project: Any,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    local_cluster: Any,
) -> None:
    import mrcfile

    relion5_project(tmp_path, "TS_01", size=(200, 150, 60), image=(200, 150), px=2.0)
    for path in sorted((tmp_path / "frames").glob("*.mrc")):
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(rng.normal(size=(150, 200)).astype(np.float32))
    poses = cryoxr.make_poseset(
        rng.uniform([60, 50, 20], [140, 100, 40], size=(5, 3)), experiment_id="TS_01", pixel_spacing=2.0
    )
    cryoxr.io.write_relion_particles(
        poses, tmp_path / "particles.star", version=5, tomograms=tmp_path / "tomograms.star"
    )
    monkeypatch.chdir(tmp_path)
    argv = ["extract", "--particles", "particles.star", "--tomograms", "tomograms.star", "--box-size", "16"]
    assert main([*argv, "--out", "threads", "--no-progress"]) == 0
    assert main([*argv, "--out", "cluster", "--scheduler", local_cluster.scheduler.address]) == 0
    for path in sorted((tmp_path / "threads").rglob("*.mrcs")):
        with (
            mrcfile.open(path) as a,
            mrcfile.open(tmp_path / "cluster" / path.relative_to(tmp_path / "threads")) as b,
        ):
            np.testing.assert_array_equal(a.data, b.data)
    assert (tmp_path / "cluster" / "particles.star").read_text().count("threads") == 0


def _render_planted(
    tmp_path: Path, relion5_project: Any, rng: np.random.Generator, n: int
) -> tuple[Path, np.ndarray]:
    """A RELION 5 project whose tilt images show a planted particle (dark Gaussian blobs)
    at n random poses, and that particle's map (box 24, 2 Å voxels)."""
    import mrcfile
    from scipy.spatial.transform import Rotation

    from cryoxr.io.relion import read_relion_tilt_series

    blobs = np.array([[0.0, 0.0, 0.0, 1.0], [4.0, 0.0, 0.0, 0.8], [0.0, 5.0, 0.0, 0.6], [0.0, 0.0, 3.0, 0.5]])
    sigma, box = 1.5, 24
    tomograms = relion5_project(tmp_path, "TS_01", size=(200, 150, 60), image=(200, 150), px=2.0)
    model = read_relion_tilt_series(tomograms)
    rotation = Rotation.random(n, rng=rng)
    centres = rng.uniform([50, 45, 20], [150, 105, 40], size=(n, 3))
    points = (centres[:, None, :] + np.einsum("nij,kj->nki", rotation.as_matrix(), blobs[:, :3])).reshape(
        -1, 3
    )
    xy = cryoxr.project(cryoxr.make_poseset(points, experiment_id="TS_01", pixel_spacing=2.0), model).values
    yy, xx = np.mgrid[0:150, 0:200]
    amplitude = np.tile(blobs[:, 3], n)
    for t, path in enumerate(sorted((tmp_path / "frames").glob("*.mrc"))):
        image = np.zeros((150, 200))
        for (x, y), a in zip(xy[:, t], amplitude, strict=True):
            image -= (
                a * np.sqrt(2 * np.pi) * sigma * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
            )
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(image.astype(np.float32))
    poses = cryoxr.make_poseset(centres, orientation=rotation, experiment_id="TS_01", pixel_spacing=2.0)
    cryoxr.io.write_relion_particles(poses, tmp_path / "particles.star", version=5, tomograms=tomograms)
    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    reference = sum(
        a * np.exp(-((x - bx) ** 2 + (y - by) ** 2 + (z - bz) ** 2) / (2 * sigma**2))
        for bx, by, bz, a in blobs
    )
    return tomograms, np.asarray(reference)


def test_reconstruct_brings_back_the_planted_particle(
    tmp_path: Path, relion5_project: Any, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cryoxr reconstruct` on a RELION 5 project: merged map and halves, RELION's layout."""
    import mrcfile

    _, reference = _render_planted(tmp_path, relion5_project, rng, 60)
    monkeypatch.chdir(tmp_path)
    argv = ["reconstruct", "--particles", "particles.star", "--tomograms", "tomograms.star"]
    argv += ["--box-size", "24", "--no-ctf", "--out", "Reconstruct/merged.mrc", "--no-progress"]
    assert main(argv) == 0
    with mrcfile.open(tmp_path / "Reconstruct/merged.mrc") as mrc:
        merged = mrc.data.astype(np.float64)
        assert float(mrc.voxel_size.x) == pytest.approx(2.0)
    c = np.arange(24) - 12
    inside = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) < 8
    # six tilts (-6..6 and 60 degrees) of 60 particles at random orientations
    assert np.corrcoef(merged[inside], reference[inside])[0, 1] > 0.95
    for half in ("half1", "half2"):
        with mrcfile.open(tmp_path / f"Reconstruct/merged_{half}.mrc") as mrc:
            assert mrc.data.shape == (24, 24, 24)
    assert main(argv) == 2  # the maps exist: refused before any work


def test_reconstruct_with_ctf_is_the_python_api(
    tmp_path: Path, relion5_project: Any, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mrcfile

    from cryoxr.io.relion import open_relion_tilt_series, read_relion_particles, read_relion_tilt_series

    tomograms, _ = _render_planted(tmp_path, relion5_project, rng, 12)
    monkeypatch.chdir(tmp_path)
    argv = [
        "reconstruct",
        "--particles",
        "particles.star",
        "--tomograms",
        "tomograms.star",
        "--box-size",
        "16",
    ]
    assert main([*argv, "--bin", "2", "--symmetry", "c2", "--out", "m.mrc", "--no-progress"]) == 0
    model = read_relion_tilt_series(tomograms)
    poses = read_relion_particles(tmp_path / "particles.star", tomograms=tomograms)
    defocus = cryoxr.particle_defocus(poses, model)
    sub = cryoxr.extract_subtilts(
        open_relion_tilt_series(model), cryoxr.project(poses, model), box_size=16, bin=2.0,
        mode="relion", projection_model=model, defocus=defocus,
    )  # fmt: skip
    assert sub.attrs["ctf_premultiplied"]
    expected = cryoxr.reconstruct_particle(sub, poses, model, symmetry="C2")  # CTF² weights from the attrs
    with mrcfile.open(tmp_path / "m.mrc") as mrc:
        np.testing.assert_allclose(
            mrc.data, expected.merged.values, atol=1e-5 * float(np.abs(expected.merged).max())
        )
        assert float(mrc.voxel_size.x) == pytest.approx(4.0)
    assert (tmp_path / "m_half2.mrc").is_file()


@pytest.mark.distributed
def test_reconstruct_on_a_cluster_equals_threads(
    tmp_path: Path,
    relion5_project: Any,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    local_cluster: Any,
) -> None:
    import mrcfile

    _render_planted(tmp_path, relion5_project, rng, 8)
    monkeypatch.chdir(tmp_path)
    argv = [
        "reconstruct",
        "--particles",
        "particles.star",
        "--tomograms",
        "tomograms.star",
        "--box-size",
        "16",
    ]
    argv += ["--no-progress", "--particles-per-task", "3"]
    assert main([*argv, "--out", "threads.mrc"]) == 0
    assert main([*argv, "--out", "cluster.mrc", "--scheduler", local_cluster.scheduler.address]) == 0
    with mrcfile.open(tmp_path / "threads.mrc") as a, mrcfile.open(tmp_path / "cluster.mrc") as b:
        np.testing.assert_allclose(b.data, a.data, atol=1e-6 * float(np.abs(a.data).max()))
