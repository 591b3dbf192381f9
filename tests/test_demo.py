"""The demo and the `cryoxr` command, end to end in subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from cryoxr.demo import make_demo_data, render_tilt_series, run_demo


def test_demo_data_geometry() -> None:
    data = make_demo_data(1000)
    assert data["poses"].sizes["particle"] == 1000
    assert data["tomogram_dimensions"] == (512, 512, 128)
    assert data["tomogram"].shape == (128, 512, 512)
    assert len(data["model"]) == 41
    assert sorted(data["model"].rotation_y) == list(np.arange(-60, 61, 3.0))


def test_render_tilt_series_puts_spots_where_asked() -> None:
    points = np.array([[[10.0, 20.0]], [[30.0, 5.0]]])  # (particle, tilt, xy)
    images = render_tilt_series(points, (40, 50), sigma=1.0)
    assert images.shape == (1, 40, 50)
    assert images[0, 20, 10] > 0.9
    assert images[0, 5, 30] > 0.9


def test_run_demo_small(tmp_path: Path) -> None:
    summary = run_demo(5_000, tmp_path / "out", progress=False, figure=False)
    assert summary.n_particles == 5_000
    assert summary.peak_offset_px <= 0.5
    stored = zarr.open_array(str(summary.files["projected"]), mode="r")
    assert stored.shape == (5_000, 41, 2)
    assert summary.in_field_of_view.shape == (41,)
    assert summary.in_field_of_view.max() <= 5_000
    assert "particle-tilts" in summary.format()


def test_cli_demo_subprocess(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cryoxr",
            "demo",
            "--particles",
            "20000",
            "--out",
            str(tmp_path / "d"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "20,000" in result.stdout
    assert "mean patch peaks" in result.stdout
    assert (tmp_path / "d" / "projected.zarr").is_dir()
    assert (tmp_path / "d" / "figures" / "particles.png").stat().st_size > 10_000


def test_demo_particle_figure_says_what_it_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.figure

    titles: list[str] = []
    original = matplotlib.figure.Figure.savefig

    def record(fig: matplotlib.figure.Figure, *args: object, **kwargs: object) -> None:
        titles.extend(ax.get_title() for ax in fig.axes)
        original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    run_demo(5_000, tmp_path / "out", progress=False)
    (title,) = [t for t in titles if "particles" in t]
    assert "a sample of 2,000 of 5,000 particles" in title
    assert "tilt +0°" in title


def test_demo_lists_every_file_it_writes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_demo(1_000, out, progress=False)
    listed = {p.resolve() for p in summary.files.values()}
    assert all(p.exists() for p in listed)
    folders = {p for p in listed if p.is_dir()}  # zarr stores and the RELION job folder
    unlisted = [
        path
        for path in out.rglob("*")
        if path.is_file()
        and path.resolve() not in listed
        and not any(f in path.resolve().parents for f in folders)
    ]
    assert not unlisted


def test_planted_particle_is_its_blobs() -> None:
    from cryoxr.demo import PLANTED_BLOBS, RECONSTRUCT_BOX, planted_particle

    volume = planted_particle()
    assert volume.shape == (RECONSTRUCT_BOX,) * 3
    centre = RECONSTRUCT_BOX // 2
    # the strongest blob sits on the centre voxel; the (0, 7, 0) blob 7 voxels up in y
    assert volume[centre, centre, centre] == pytest.approx(PLANTED_BLOBS[0, 3], rel=0.05)
    assert volume[centre, centre + 7, centre] == pytest.approx(PLANTED_BLOBS[2, 3], rel=0.05)


def test_demo_reconstructs_the_planted_particle(tmp_path: Path) -> None:
    summary = run_demo(3_000, tmp_path / "out", progress=False, figure=True, write_files=False)
    assert summary.map_correlation > 0.98
    assert "correlation" in summary.format()
    assert summary.files["particle map figure"].stat().st_size > 10_000
    assert "subtilts -> map" in summary.timings
    assert "subtilts (RELION 5 job)" not in summary.files  # write_files=False writes nothing


def test_demo_writes_the_sample_as_a_relion5_set(tmp_path: Path) -> None:
    import mrcfile

    from cryoxr.demo import RECONSTRUCT_BOX, RECONSTRUCT_SAMPLE

    summary = run_demo(1_000, tmp_path / "out", progress=False, figure=False)
    job = summary.files["subtilts (RELION 5 job)"]
    assert job == tmp_path / "out" / "subtilts"
    star = job / "particles.star"
    assert (job / "optimisation_set.star").is_file()
    stacks = sorted((star.parent / "Subtomograms" / "TS_01").glob("*_stack2d.mrcs"))
    assert 0.9 * RECONSTRUCT_SAMPLE <= len(stacks) <= RECONSTRUCT_SAMPLE
    with mrcfile.open(stacks[0]) as mrc:
        assert mrc.data.shape[1:] == (RECONSTRUCT_BOX, RECONSTRUCT_BOX)
        assert float(mrc.voxel_size.x) == pytest.approx(5.4)
    assert "rlnTomoVisibleFrames" in star.read_text()
