"""RELION tilt series: worked numbers, independent oracles, round trips, bad files."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import starfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cryoxr
from cryoxr.errors import CryoxrError, CryoxrFileNotFoundError, FormatError
from cryoxr.io.relion import (
    read_relion_tilt_series,
    relion_tomograms_table,
    write_relion_tilt_series,
)
from cryoxr.io.star import read_star


def tilt_series_files(
    tmp_path: Path,
    *,
    name: str = "TS_01",
    size: tuple[int, int, int] = (4096, 4096, 1000),
    px: float = 1.35,
    alignment: list[tuple[float, float, float, float, float]],
) -> Path:
    (tmp_path / "tilt_series").mkdir(exist_ok=True)
    (tmp_path / "tilt_series" / f"{name}.star").write_text(
        f"\n# version 50001\n\ndata_{name}\n\nloop_\n"
        "_rlnMicrographMovieName #1\n_rlnMicrographPreExposure #2\n_rlnTomoXTilt #3\n_rlnTomoYTilt #4\n"
        "_rlnTomoZRot #5\n_rlnTomoXShiftAngst #6\n_rlnTomoYShiftAngst #7\n_rlnDefocusU #8\n"
        + "".join(
            f"frames/{name}_{i:03d}.eer {3.0 * i:.6f} {a:.6f} {b:.6f} {c:.6f} {d:.6f} {e:.6f} 25000.5\n"
            for i, (a, b, c, d, e) in enumerate(alignment)
        )
    )
    path = tmp_path / "tomograms.star"
    path.write_text(
        "\n# version 50001\n\ndata_global\n\nloop_\n_rlnTomoName #1\n_rlnVoltage #2\n"
        "_rlnTomoTiltSeriesPixelSize #3\n_rlnTomoHand #4\n_rlnTomoTomogramBinning #5\n_rlnTomoSizeX #6\n"
        "_rlnTomoSizeY #7\n_rlnTomoSizeZ #8\n_rlnTomoTiltSeriesStarFile #9\n"
        f"{name} 300.000000 {px:.6f} -1.000000 4.000000 {size[0]} {size[1]} {size[2]} tilt_series/{name}.star\n"
    )
    return path


# ----------------------------------------------------------------------------- worked numbers
def test_relion5_projection_worked_example(tmp_path: Path) -> None:
    """docs/CONVENTIONS.md §6.2: (1000, 1500, 400) -> (2515.4548, 1036.2880) through cryoxr.project."""
    path = tilt_series_files(tmp_path, alignment=[(0.0, 30.0, 85.0, 6.75, -13.5)])
    model = read_relion_tilt_series(path, tilt_image_size=(4096, 4096))
    poses = cryoxr.make_poseset([[1000.0, 1500.0, 400.0]], experiment_id="TS_01", pixel_spacing=1.35)
    xy = cryoxr.project(poses, model)  # geometry from the model's columns
    np.testing.assert_allclose(xy.values[0, 0], [2515.4548, 1036.2880], atol=1e-4)
    assert model[["tomogram_size_x", "tomogram_size_y", "tomogram_size_z"]].values.tolist() == [
        [4096, 4096, 1000]
    ]
    assert model[["tilt_image_center_x", "tilt_image_center_y"]].values.tolist() == [[2048.0, 2048.0]]


# ----------------------------------------------------------------------------- oracles


def relion_projection(
    point: np.ndarray, size: np.ndarray, image: np.ndarray, px: float, row: np.ndarray
) -> np.ndarray:
    """docs/CONVENTIONS.md §4 written out: S(c_img) S(shift/px) Rz Ry Rx S(-int(N/2))."""
    xt, yt, zr, sx, sy = np.deg2rad(row[0]), np.deg2rad(row[1]), np.deg2rad(row[2]), row[3], row[4]
    rx = np.array([[1, 0, 0], [0, np.cos(xt), -np.sin(xt)], [0, np.sin(xt), np.cos(xt)]])
    ry = np.array([[np.cos(yt), 0, np.sin(yt)], [0, 1, 0], [-np.sin(yt), 0, np.cos(yt)]])
    rz = np.array([[np.cos(zr), -np.sin(zr), 0], [np.sin(zr), np.cos(zr), 0], [0, 0, 1]])
    centred = point - np.floor(size / 2)
    rotated = rz @ ry @ rx @ centred
    return rotated[:2] + np.array([sx, sy]) / px + np.floor(image / 2)


def test_projection_equals_relion_formula(tmp_path: Path, rng: np.random.Generator) -> None:
    size = np.array([927, 1001, 301])
    alignment = [
        (float(a), float(b), float(c), float(d), float(e))
        for a, b, c, d, e in zip(
            rng.normal(0, 2, 9),
            np.linspace(-60, 60, 9),
            rng.uniform(-180, 180, 9),
            rng.normal(0, 20, 9),
            rng.normal(0, 20, 9),
            strict=True,
        )
    ]
    path = tilt_series_files(tmp_path, size=tuple(size), px=2.1, alignment=alignment)
    model = read_relion_tilt_series(path, tilt_image_size=(960, 1023))
    points = rng.uniform(0, 1, (5, 3)) * size
    poses = cryoxr.make_poseset(points, experiment_id="TS_01", pixel_spacing=2.1)
    xy = cryoxr.project(poses, model).values
    rows = [np.array([round(v, 6) for v in row]) for row in alignment]  # as printed in the file
    expected = np.array(
        [[relion_projection(p, size, np.array([960, 1023]), 2.1, r) for r in rows] for p in points]
    )
    np.testing.assert_allclose(xy, expected, atol=1e-6)


# ----------------------------------------------------------------------------- round trips
tomo_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Z"), blacklist_characters="\"'#_"),
    min_size=1,
    max_size=6,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_tilts=st.integers(1, 6),
    names=st.lists(tomo_names, min_size=1, max_size=2, unique=True),
    seed=st.integers(0, 2**31),
)
def test_tilt_series_round_trip_hypothesis(tmp_path: Path, n_tilts: int, names: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    models = [
        cryoxr.make_projection_model(
            rotation_x=rng.normal(0, 1, n_tilts),
            rotation_y=rng.uniform(-60, 60, n_tilts),
            rotation_z=rng.uniform(-180, 180, n_tilts),
            dx=rng.normal(0, 10, n_tilts),
            dy=rng.normal(0, 10, n_tilts),
            experiment_id=name,
            pixel_spacing=1.35 + i,
            extra={"rlnMicrographPreExposure": np.arange(n_tilts) * 3.0},
            defocus_u=rng.uniform(10000, 50000, n_tilts),
            acquisition_order=rng.permutation(n_tilts),
        )
        for i, name in enumerate(names)
    ]
    model = pd.concat(models, ignore_index=True)
    sizes = {name: (4096, 4095, 1001) for name in names}
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    write_relion_tilt_series(model, folder / "tomograms.star", tomograms=sizes)
    back = read_relion_tilt_series(folder / "tomograms.star")
    cols = [
        "rotation_x",
        "rotation_y",
        "rotation_z",
        "dx",
        "dy",
        "pixel_spacing",
        "defocus_u",
        "acquisition_order",
    ]
    np.testing.assert_allclose(back[cols].to_numpy(float), model[cols].to_numpy(float), atol=1e-8)
    # a RELION label is read as the per-tilt column it names
    np.testing.assert_array_equal(back.pre_exposure, model.rlnMicrographPreExposure)
    assert back.acquisition_order.dtype == np.int64
    assert back.experiment_id.tolist() == model.experiment_id.tolist()
    assert back.attrs["tomogram_dimensions"] == {name: [4096.0, 4095.0, 1001.0] for name in names}
    # read -> write -> read gives the same files
    again = Path(tempfile.mkdtemp(dir=tmp_path))
    write_relion_tilt_series(back, again / "tomograms.star")
    for name in [
        Path("tomograms.star"),
        *(Path(f) for f in back.attrs["relion"]["tomograms"]["rlnTomoTiltSeriesStarFile"]),
    ]:
        first, second = read_star(folder / name), read_star(again / name)
        for block in first:
            pd.testing.assert_frame_equal(second[block].table, first[block].table)


def test_tilt_series_keeps_columns_and_table(tmp_path: Path) -> None:
    path = tilt_series_files(tmp_path, alignment=[(0.5, -3.0, 85.0, 1.0, 2.0), (0.5, 0.0, 85.0, -1.0, 0.0)])
    model = read_relion_tilt_series(path)
    assert model.rlnMicrographMovieName.tolist() == ["frames/TS_01_000.eer", "frames/TS_01_001.eer"]
    assert model.pre_exposure.tolist() == [0.0, 3.0]
    assert model.defocus_u.tolist() == [25000.5, 25000.5]
    assert model.voltage.tolist() == [300.0, 300.0]
    assert model.defocus_handedness.tolist() == [-1.0, -1.0]
    # no tilt-image size in these files, and no tilt images to read it from: not invented
    assert not {"image_size_x", "tilt_image_center_x"} & set(model.columns)
    table = relion_tomograms_table(model)
    assert table.rlnTomoTomogramBinning.tolist() == [4.0]
    assert table.rlnTomoSizeZ.tolist() == [1000]
    out = tmp_path / "out"
    out.mkdir()
    write_relion_tilt_series(model, out / "tomograms.star")
    for name in ("tomograms.star", "tilt_series/TS_01.star"):
        ours, theirs = read_star(out / name), read_star(tmp_path / name)
        for block in theirs:
            assert ours[block].version == 50001
            pd.testing.assert_frame_equal(ours[block].table, theirs[block].table)


def test_relion4_projection_matrices(tmp_path: Path, rng: np.random.Generator) -> None:
    """RELION 4 / Warp rlnTomoProjX/Y/Z/W rows -> angles and shifts that project the same."""
    size = np.array([1024, 1000, 301])
    n = 5
    angles = np.column_stack([rng.normal(0, 2, n), np.linspace(-50, 50, n), rng.uniform(-90, 90, n)])
    matrices = []
    for ax, ay, az in angles:
        c, s = np.cos(np.deg2rad([ax, ay, az])), np.sin(np.deg2rad([ax, ay, az]))
        rx = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
        ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
        rz = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
        m = np.eye(4)
        m[:3, :3] = rz @ ry @ rx
        m[:3, 3] = -m[:3, :3] @ (size // 2) + np.array([512 + rng.normal(), 500 + rng.normal(), 0])
        matrices.append(m)
    rows = "".join(
        " ".join("[" + ",".join(f"{v:.15g}" for v in m[r]) + "]" for r in range(4)) + f" {-50 + 25 * i}.0\n"
        for i, m in enumerate(matrices)
    )
    path = tmp_path / "tomograms.star"
    path.write_text(
        "data_global\n\nloop_\n_rlnTomoName #1\n_rlnTomoTiltSeriesName #2\n_rlnTomoSizeX #3\n_rlnTomoSizeY #4\n"
        "_rlnTomoSizeZ #5\n_rlnTomoTiltSeriesPixelSize #6\nTS_9 ts9.mrc 1024 1000 301 2.0\n\n"
        "data_TS_9\n\nloop_\n_rlnTomoProjX #1\n_rlnTomoProjY #2\n_rlnTomoProjZ #3\n_rlnTomoProjW #4\n"
        "_rlnTomoNominalStageTiltAngle #5\n" + rows
    )
    model = read_relion_tilt_series(path)
    np.testing.assert_allclose(
        model[["rotation_x", "rotation_y", "rotation_z"]].to_numpy(), angles, atol=1e-9
    )
    assert model.rlnTomoNominalStageTiltAngle.tolist() == [-50.0, -25.0, 0.0, 25.0, 50.0]
    ours = cryoxr.projection_model_to_projection_matrices(
        model, model.attrs["tilt_image_center"]["TS_9"], model.attrs["tomogram_dimensions"]["TS_9"]
    )
    np.testing.assert_allclose(ours[:, :2], np.array(matrices)[:, :2], atol=1e-9)


# ----------------------------------------------------------------------------- bad input
def test_missing_tilt_series_file(tmp_path: Path) -> None:
    path = tilt_series_files(tmp_path, alignment=[(0, 0, 85, 0, 0)])
    (tmp_path / "tilt_series" / "TS_01.star").unlink()
    with pytest.raises(
        CryoxrFileNotFoundError, match=r"tomograms.star, data_global, row 1, rlnTomoTiltSeriesStarFile"
    ):
        read_relion_tilt_series(path)


def test_tilt_series_without_alignment(tmp_path: Path) -> None:
    path = tilt_series_files(tmp_path, alignment=[(0, 0, 85, 0, 0)])
    ts = tmp_path / "tilt_series" / "TS_01.star"
    ts.write_text("data_TS_01\nloop_\n_rlnMicrographName #1\na.mrc\n")
    with pytest.raises(
        FormatError, match=r"TS_01.star, data_TS_01: expected columns \['rlnTomoXTilt'"
    ) as info:
        read_relion_tilt_series(path)
    assert isinstance(info.value, CryoxrError)


def test_paths_resolved_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    job = project / "Tomograms" / "job007"
    job.mkdir(parents=True)
    path = tilt_series_files(job, alignment=[(0, 10, 85, 0, 0)])
    monkeypatch.chdir(tmp_path)  # far from the file
    assert read_relion_tilt_series(path).rotation_y.tolist() == [10.0]
    # RELION style: paths relative to the project folder, an ancestor of the file
    text = path.read_text().replace("tilt_series/TS_01.star", "Tomograms/job007/tilt_series/TS_01.star")
    path.write_text(text)
    assert read_relion_tilt_series(path).rotation_y.tolist() == [10.0]


# ----------------------------------------------------------------------------- per-tilt columns


def test_relion5_fills_every_per_tilt_column(tmp_path: Path, relion5_project: Any) -> None:
    path = relion5_project(tmp_path, "TS_01", size=(4000, 4000, 3000), image=(961, 1024), px=1.35)
    model = read_relion_tilt_series(path)
    oracle_global = starfile.read(path)
    oracle = starfile.read(tmp_path / "tilt_series" / "TS_01.star")
    expected = {
        "tomogram_size_x": [4000] * 6,
        "tomogram_size_z": [3000] * 6,
        "image_size_x": [961] * 6,  # read from the tilt images' header, as RELION does
        "image_size_y": [1024] * 6,
        "tilt_image_center_x": [480.0] * 6,  # RELION: int(N / 2)
        "tilt_image_center_y": [512.0] * 6,
        "voltage": [300.0] * 6,
        "spherical_aberration": [2.7] * 6,
        "amplitude_contrast": [0.1] * 6,
        "defocus_handedness": [-1.0] * 6,
        "acquisition_order": [0, 1, 2, 3, 4, 5],  # rlnTomoTiltMovieIndex counts from 1
    }
    for column, values in expected.items():
        assert model[column].tolist() == values, column
    for column, label in [
        ("defocus_u", "rlnDefocusU"),
        ("defocus_v", "rlnDefocusV"),
        ("defocus_angle", "rlnDefocusAngle"),
        ("phase_shift", "rlnPhaseShift"),
        ("ctf_scale", "rlnCtfScalefactor"),
        ("ctf_bfactor", "rlnCtfBfactor"),
        ("pre_exposure", "rlnMicrographPreExposure"),
    ]:
        np.testing.assert_array_equal(model[column], oracle[label], err_msg=column)
    np.testing.assert_array_equal(model.rotation_y, oracle.rlnTomoYTilt)
    np.testing.assert_allclose(model.dx * 1.35, oracle.rlnTomoXShiftAngst, atol=1e-12)
    assert oracle_global.rlnVoltage.tolist() == [300.0]
    # unmodelled labels stay columns under their RELION names
    np.testing.assert_array_equal(model.rlnTomoNominalStageTiltAngle, oracle.rlnTomoNominalStageTiltAngle)
    assert model.rlnCtfFigureOfMerit.tolist() == [0.03] * 6
    assert not {"rlnDefocusU", "rlnTomoTiltMovieIndex"} & set(model.columns)
    # and it projects with no geometry argument
    poses = cryoxr.make_poseset([[2000.0, 2000.0, 1500.0]], experiment_id="TS_01", pixel_spacing=1.35)
    xy = cryoxr.project(poses, model).values[0, 0]
    np.testing.assert_allclose(xy, [480.0 + 0.0, 512.0 - 2.0], atol=1e-9)  # shifts (0, -2.7 Å) at tilt 0
    # an explicit size still wins
    other = read_relion_tilt_series(path, tilt_image_size=(100, 51))
    assert other[["tilt_image_center_x", "tilt_image_center_y"]].values[0].tolist() == [50.0, 25.0]


def test_round_trip_of_every_per_tilt_column(tmp_path: Path, relion5_project: Any) -> None:
    path = relion5_project(tmp_path / "a", "TS_01", size=(4000, 4000, 3000), image=(961, 1024), px=1.35)
    model = read_relion_tilt_series(path)
    model["excluded"] = [False, False, True, False, False, True]
    model["my_score"] = np.arange(6) * 0.5
    model["rlnCustomLabel"] = ["a", "b", "c", "d", "e", "f"]
    written = write_relion_tilt_series(model, tmp_path / "b" / "tomograms.star")
    assert [p.name for p in written] == ["tomograms.star", "TS_01.star"]
    back = read_relion_tilt_series(written[0])
    assert set(back.columns) == set(model.columns)
    pd.testing.assert_frame_equal(back[model.columns].drop(columns="source"), model.drop(columns="source"))
    text = written[1].read_text()
    for label in ("_excluded", "_my_score", "_rlnDefocusU", "_rlnTomoTiltMovieIndex"):
        assert label in text
    # attrs gone (concat, parquet): the columns alone write the same files
    plain = model.copy()
    plain.attrs = {}
    again = write_relion_tilt_series(plain, tmp_path / "c" / "tomograms.star")
    pd.testing.assert_frame_equal(
        read_relion_tilt_series(again[0]).drop(columns=["source", "rlnMicrographName"]),
        back.drop(columns=["source", "rlnMicrographName"]),
    )
    first = read_star(again[0])["global"].table
    assert first[["rlnTomoSizeX", "rlnVoltage", "rlnTomoHand", "rlnImageSizeX"]].values.tolist() == [
        [4000, 300.0, -1.0, 961]
    ]


def test_columns_that_are_not_labels_are_named_in_a_warning(tmp_path: Path) -> None:
    model = cryoxr.make_projection_model(
        rotation_y=[0.0, 10.0],
        experiment_id="TS_01",
        pixel_spacing=1.0,
        tomogram_size_x=100,
        tomogram_size_y=100,
        tomogram_size_z=50,
        extra={"dose per tilt": [3.0, 3.0], "kept": [1, 2]},
    )
    with pytest.warns(UserWarning, match=r"\['dose per tilt'\] are not STAR labels"):
        write_relion_tilt_series(model, tmp_path / "tomograms.star")
    back = read_relion_tilt_series(tmp_path / "tomograms.star")
    assert back.kept.tolist() == [1, 2]


def test_imod_centre_is_folded_into_the_shift(tmp_path: Path, rng: np.random.Generator) -> None:
    """A model in IMOD's (N - 1) / 2 convention projects the same after RELION's int(N / 2)."""
    model = cryoxr.make_projection_model(
        rotation_y=[-40.0, 0.0, 40.0],
        rotation_z=85.0,
        dx=[1.0, 2.0, 3.0],
        experiment_id="TS_01",
        pixel_spacing=2.0,
        tomogram_size_x=501,
        tomogram_size_y=400,
        tomogram_size_z=101,
        image_size_x=501,
        image_size_y=400,
        tilt_image_center_x=250.0,
        tilt_image_center_y=199.5,
    )
    write_relion_tilt_series(model, tmp_path / "tomograms.star")
    back = read_relion_tilt_series(tmp_path / "tomograms.star")
    assert back.tilt_image_center_y.tolist() == [200.0] * 3
    np.testing.assert_allclose(back.dy, -0.5, atol=1e-12)
    poses = cryoxr.make_poseset(rng.uniform(0, 100, (4, 3)), experiment_id="TS_01", pixel_spacing=2.0)
    np.testing.assert_allclose(
        cryoxr.project(poses, back).values, cryoxr.project(poses, model).values, atol=1e-9
    )


def test_relion_tilt_series_bad_values_name_the_file(tmp_path: Path, relion5_project: Any) -> None:
    path = relion5_project(tmp_path, "TS_01", size=(400, 400, 300), image=(40, 40), px=1.35)
    text = path.read_text()
    path.write_text(text.replace("TS_01 tilt_series", '"" tilt_series'))
    with pytest.raises(
        FormatError, match=r"tomograms.star, data_global, row 1, column rlnTomoName: expected a tomogram name"
    ):
        read_relion_tilt_series(path)
    path.write_text(text.replace(" 300.0 2.7 ", " 300000.0 2.7 "))
    with pytest.raises(FormatError, match=r"TS_01.star.*tomograms.star.*'voltage' \(kV\).*looks like volts"):
        read_relion_tilt_series(path)
    path.write_text(text)
    ts = tmp_path / "tilt_series" / "TS_01.star"
    ts.write_text(ts.read_text().replace("_rlnTomoTiltMovieIndex", "_rlnTomoTiltMovieIndexX", 1))
    assert "acquisition_order" not in read_relion_tilt_series(path).columns
    ts.write_text(
        ts.read_text()
        .replace("_rlnTomoTiltMovieIndexX", "_rlnTomoTiltMovieIndex")
        .replace(".mrc 1 ", ".mrc 0 ")
    )
    with pytest.raises(FormatError, match=r"rlnTomoTiltMovieIndex: expected whole numbers >= 1, found 0"):
        read_relion_tilt_series(path)
    ts.write_text(ts.read_text().replace(".mrc 0 ", ".mrc 1 ").replace(" 0.500 85.000 ", " 1e308 85.000 "))
    with pytest.raises(
        FormatError, match=r"'rotation_y' \(degrees\) must be within \[-360, 360\], found 1e\+308"
    ):
        read_relion_tilt_series(path)


def test_tilt_image_size_from_a_stack_and_inside_root(tmp_path: Path, relion5_project: Any) -> None:
    import mrcfile

    path = relion5_project(tmp_path / "project", "TS_01", size=(400, 400, 300), image=(40, 30), px=1.35)
    ts = tmp_path / "project" / "tilt_series" / "TS_01.star"
    with mrcfile.new(tmp_path / "project" / "TS_01.mrcs") as mrc:
        mrc.set_data(np.zeros((6, 21, 33), dtype=np.int8))
    text = ts.read_text()
    for i in range(6):
        text = text.replace(f"frames/TS_01_{i:03d}.mrc", f"{i + 1}@TS_01.mrcs")
    ts.write_text(text)
    model = read_relion_tilt_series(path)
    assert model[["image_size_x", "image_size_y"]].values[0].tolist() == [33, 21]
    assert model[["tilt_image_center_x", "tilt_image_center_y"]].values[0].tolist() == [16.0, 10.0]
    # a stack outside the allowed root is refused, not read
    (tmp_path / "project" / "TS_01.mrcs").rename(tmp_path / "TS_01.mrcs")
    ts.write_text(text.replace("@TS_01.mrcs", "@../TS_01.mrcs"))
    with pytest.raises(FormatError, match="outside the allowed root"):
        read_relion_tilt_series(path, root=tmp_path / "project")
    # a tilt image that is not MRC, or not there: no size, nothing invented
    ts.write_text(text.replace("@TS_01.mrcs", "@TS_01.tif"))
    assert "image_size_x" not in read_relion_tilt_series(path).columns
