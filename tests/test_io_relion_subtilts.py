"""RELION 5 2D subtilt stacks: the folder relion_tomo_subtomo --stack2d writes, read back with
mrcfile and the STAR reader; the zarr twin."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import dask.array as da
import mrcfile
import numpy as np
import pytest
import xarray as xr

import cryoxr
from cryoxr.errors import FileExistsNoOverwriteError, InvalidValueError
from cryoxr.io.relion import (
    open_relion_tilt_series,
    read_relion_particles,
    read_relion_tilt_series,
    write_relion_particles,
    write_relion_subtilts,
    write_subtilts_zarr,
)
from cryoxr.io.star import read_star


def _project(tmp_path: Path, relion5_project: Any, rng: np.random.Generator) -> tuple[Path, Any, Any]:
    """A RELION 5 project with noise tilt images (float32) and a particle file."""
    tomograms = relion5_project(tmp_path, "TS_01", size=(200, 150, 60), image=(200, 150), px=2.0)
    for path in sorted((tmp_path / "frames").glob("*.mrc")):
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(rng.normal(size=(150, 200)).astype(np.float32))
            mrc.voxel_size = 2.0
    points = rng.uniform([60, 50, 20], [140, 100, 40], size=(6, 3))
    points[5] = [100.0, -120.0, 30.0]  # beside the images: visible in no tilt
    poses = cryoxr.make_poseset(
        points,
        shift=rng.normal(scale=0.7, size=(6, 3)),
        orientation=(q := rng.normal(size=(6, 4))) / np.linalg.norm(q, axis=1, keepdims=True),
        experiment_id="TS_01",
        pixel_spacing=2.0,
        extra={"rlnClassNumber": np.arange(6) + 1, "rlnCtfImage": np.full(6, "x.mrc")},
    )
    write_relion_particles(poses, tmp_path / "particles.star", version=5, tomograms=tomograms)
    return (
        tomograms,
        read_relion_particles(tmp_path / "particles.star", tomograms=tomograms),
        read_relion_tilt_series(tomograms),
    )


def _stacks(poses: xr.Dataset, model: Any, **kwargs: Any) -> xr.DataArray:
    series = open_relion_tilt_series(model)
    options: dict[str, Any] = {"box_size": 24, "bin": 2.0, "crop_size": 16, **kwargs}
    return cryoxr.extract_subtilts(
        series, cryoxr.project(poses, model), mode="relion", projection_model=model,
        defocus=cryoxr.particle_defocus(poses, model), **options,
    )  # fmt: skip


def test_stack2d_folder_as_relion_writes_it(
    tmp_path: Path, relion5_project: Any, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    tomograms, poses, model = _project(tmp_path, relion5_project, rng)
    stacks = _stacks(poses, model)
    monkeypatch.chdir(tmp_path)  # RELION runs in the project folder: names relative to it
    report = write_relion_subtilts(stacks, poses, Path("Extract/job010"), tomograms=tomograms)
    assert (report["particles"], report["removed"]) == (5, 1)
    out = tmp_path / "Extract" / "job010"
    visible = stacks.visible.values
    values = stacks.values
    assert visible[5].sum() == 0
    assert visible[:5].sum(axis=1).min() >= 4  # the 60-degree tilt may fall outside
    blocks = read_star(out / "particles.star")
    assert list(blocks) == ["general", "optics", "particles"]
    assert blocks["general"].table["rlnTomoSubTomosAre2DStacks"].tolist() == [1]
    optics = blocks["optics"].table.iloc[0]
    assert optics["rlnCtfDataAreCtfPremultiplied"] == 1
    assert optics["rlnImageDimensionality"] == 2
    assert optics["rlnTomoSubtomogramBinning"] == 2.0
    assert optics["rlnImagePixelSize"] == 4.0
    assert optics["rlnImageSize"] == 16
    assert optics["rlnTomoTiltSeriesPixelSize"] == 2.0
    table = blocks["particles"].table
    assert "rlnCtfImage" not in table.columns
    assert table["rlnClassNumber"].tolist() == [1, 2, 3, 4, 5]
    assert (table[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy() == 0).all()
    for p in range(5):
        name = str(table["rlnImageName"].iloc[p])
        assert name == f"Extract/job010/Subtomograms/TS_01/{p + 1}_stack2d.mrcs"
        flags = visible[p].astype(int).tolist()
        assert table["rlnTomoVisibleFrames"].iloc[p] == "[" + ",".join(map(str, flags)) + "]"
        report_text = io.StringIO()
        assert mrcfile.validate(tmp_path / name, print_file=report_text), report_text.getvalue()
        with mrcfile.open(tmp_path / name) as mrc:
            np.testing.assert_array_equal(mrc.data, values[p][visible[p]])
            assert mrc.header.mode == 2
            assert float(mrc.voxel_size.x) == pytest.approx(4.0)
            assert int(mrc.header.ispg) == 0
    # origins folded into the coordinates: the same particle positions, centred Å
    back = read_relion_particles(out / "particles.star", tomograms=tomograms)
    folded = (poses.position + poses["shift"]).values[:5]
    np.testing.assert_allclose(back.position.values, folded, atol=1e-5)
    np.testing.assert_allclose(back["shift"].values, 0.0, atol=1e-12)
    np.testing.assert_allclose(
        np.abs((back.orientation.values * poses.orientation.values[:5]).sum(1)), 1.0, atol=1e-6
    )
    assert not (out / "Subtomograms" / "TS_01" / "6_stack2d.mrcs").exists()
    option_set = read_star(out / "optimisation_set.star")
    (block,) = option_set.values()
    assert block.table["rlnTomoParticlesFile"].tolist() == ["Extract/job010/particles.star"]
    assert block.table["rlnTomoTomogramsFile"].tolist() == [str(tomograms)]
    with pytest.raises(FileExistsNoOverwriteError):
        write_relion_subtilts(stacks, poses, Path("Extract/job010"), tomograms=tomograms)


def test_float16_min_frames_and_the_zarr_twin(
    tmp_path: Path, relion5_project: Any, rng: np.random.Generator
) -> None:
    tomograms, poses, model = _project(tmp_path, relion5_project, rng)
    stacks = _stacks(poses, model, dtype=np.float16, ctf=False, dose_weight=False)
    report = write_relion_subtilts(stacks, poses, tmp_path / "job", tomograms=tomograms, min_frames=6)
    visible = stacks.visible.values
    assert report["particles"] == int((visible.sum(axis=1) >= 6).sum())
    first = next(iter(sorted((tmp_path / "job" / "Subtomograms" / "TS_01").glob("*.mrcs"))))
    with mrcfile.open(first) as mrc:
        assert mrc.header.mode == 12
        assert mrc.data.dtype == np.float16
    premultiplied = read_star(tmp_path / "job" / "particles.star")["optics"].table[
        "rlnCtfDataAreCtfPremultiplied"
    ]
    assert premultiplied.tolist() == [0]
    store = write_subtilts_zarr(stacks, tmp_path / "s.zarr")
    back = xr.open_zarr(store)
    np.testing.assert_array_equal(back["subtilts"].values, stacks.values)
    np.testing.assert_array_equal(back["visible"].values, visible)
    assert back.attrs["bin"] == 2.0
    assert back.attrs["crop_size"] == 16


def _failing(block: np.ndarray) -> np.ndarray:
    raise RuntimeError("disk on fire")


def test_a_failed_write_leaves_nothing(
    tmp_path: Path, relion5_project: Any, rng: np.random.Generator
) -> None:
    tomograms, poses, model = _project(tmp_path, relion5_project, rng)
    series = open_relion_tilt_series(model)
    broken = cryoxr.Image.from_array(
        series["TS_01"].data.data.map_blocks(_failing, dtype=np.float32),
        pixel_spacing=2.0,
        experiment_id="TS_01",
        stack=True,
    )
    stacks = cryoxr.extract_subtilts(
        {"TS_01": broken}, cryoxr.project(poses, model), box_size=16, mode="relion", projection_model=model,
        ctf=False,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_relion_subtilts(stacks, poses, tmp_path / "job", tomograms=tomograms)
    assert not (tmp_path / "job").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".job")]


def test_bad_input_is_refused(tmp_path: Path, relion5_project: Any, rng: np.random.Generator) -> None:
    tomograms, poses, model = _project(tmp_path, relion5_project, rng)
    stacks = _stacks(poses, model, ctf=False, dose_weight=False)
    with pytest.raises(InvalidValueError, match="6 particle stacks"):
        write_relion_subtilts(stacks, poses.isel(particle=slice(0, 3)), tmp_path / "a", tomograms=tomograms)
    evil = poses.assign(
        rlnTomoParticleName=("particle", np.array(["../../x"] + [f"TS_01/{i}" for i in range(5)]))
    )
    with pytest.raises(InvalidValueError, match="cannot name a file"):
        write_relion_subtilts(stacks, evil, tmp_path / "b", tomograms=tomograms)
    nearest = cryoxr.extract_subtilts(
        open_relion_tilt_series(model)["TS_01"], cryoxr.project(poses, model), box_size=8
    )
    with pytest.raises(InvalidValueError, match="mode='relion'"):
        write_relion_subtilts(nearest, poses, tmp_path / "c", tomograms=tomograms)
    assert not any((tmp_path / n).exists() for n in "abc")


def test_writing_is_streamed_from_a_lazy_stack(
    tmp_path: Path, relion5_project: Any, rng: np.random.Generator
) -> None:
    """Visibility is computed first (positions only), then one pass writes the frames."""
    tomograms, poses, model = _project(tmp_path, relion5_project, rng)
    stacks = _stacks(poses, model, particles_per_task=2)
    assert isinstance(stacks.data, da.Array)
    calls: list[int] = []

    def counting(*objects: Any) -> Any:
        import dask

        calls.append(len(objects))
        return dask.compute(*objects)

    write_relion_subtilts(stacks, poses, tmp_path / "job", tomograms=tomograms, compute=counting)
    assert calls == [1, 1]


def _copy_blocks(block: np.ndarray) -> np.ndarray:
    return block.copy()


def test_whole_file_writes_equal_the_frame_by_frame_writer_byte_for_byte(
    tmp_path: Path, relion5_project: Any, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stacks straight from extract_subtilts: each particle's file is opened once and written
    whole; any other stacks (here the same values through map_blocks) frame by frame. Same
    bytes, every file; the header statistics are mrcfile's."""
    import os

    from cryoxr.io.relion import subtilts as module

    tomograms, poses, model = _project(tmp_path, relion5_project, rng)
    stacks = _stacks(poses, model)
    other = stacks.copy(data=stacks.data.map_blocks(_copy_blocks, dtype=stacks.dtype))
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".mrcs"):
            opened.append(Path(path).name)
        return real_open(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(module.os, "open", counting_open)
        write_relion_subtilts(stacks, poses, tmp_path / "whole", tomograms=tomograms)
    assert sorted(opened) == [f"{p}_stack2d.mrcs" for p in range(1, 6)]  # once per file
    write_relion_subtilts(other, poses, tmp_path / "by_tilt", tomograms=tomograms)
    files = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".mrcs"]) == 5
    for name in files:
        a, b = (tmp_path / "whole" / name).read_bytes(), (tmp_path / "by_tilt" / name).read_bytes()
        if name.suffix == ".star":  # rlnImageName holds the folder's name
            a = a.replace(b"/whole/", b"/by_tilt/")
        assert a == b, name
    values, visible = stacks.values, stacks.visible.values
    for p in range(5):
        path = tmp_path / "whole" / "Subtomograms" / "TS_01" / f"{p + 1}_stack2d.mrcs"
        with mrcfile.open(path) as mrc:
            frames = values[p][visible[p]]
            np.testing.assert_array_equal(mrc.data, frames)
            assert (mrc.header.dmin, mrc.header.dmax) == (frames.min(), frames.max())
            wide = frames.astype(np.float64)
            assert float(mrc.header.dmean) == pytest.approx(wide.mean(), rel=1e-6)
            assert float(mrc.header.rms) == pytest.approx(wide.std(), rel=1e-6)
            assert int(mrc.header.nz) == int(visible[p].sum())
