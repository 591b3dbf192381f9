"""RELION particles and tilt series: worked numbers, independent oracles, round trips, bad files."""

from __future__ import annotations

import tempfile
from pathlib import Path

import dask.array as da
import eulerangles
import numpy as np
import pandas as pd
import pytest
import starfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

import cryoxr
from cryoxr.errors import CryoxrError, CryoxrFileNotFoundError, FormatError, InvalidValueError
from cryoxr.io._star import read_star
from cryoxr.io.relion import (
    read_relion_particles,
    read_relion_tilt_series,
    relion_tomograms_table,
    write_relion_particles,
    write_relion_tilt_series,
)

OPTICS_135 = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnTomoTiltSeriesPixelSize #3
_rlnImagePixelSize #4
1 opticsGroup1 1.350000 2.700000
"""


def particles_file(tmp_path: Path, labels: list[str], rows: list[str], *, version: int = 30001) -> Path:
    text = OPTICS_135.replace("30001", str(version))
    text += f"\n# version {version}\n\ndata_particles\n\nloop_\n"
    text += "".join(f"_{label} #{i + 1}\n" for i, label in enumerate(labels))
    text += "".join(f"{row}\n" for row in rows)
    path = tmp_path / "particles.star"
    path.write_text(text)
    return path


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


def test_relion4_origin_worked_example(tmp_path: Path) -> None:
    """CONVENTIONS 3.2: coordinate (1000, 1500, 400), origin (1.35, -2.70, 0) Å, 1.35 Å/px."""
    path = particles_file(
        tmp_path,
        [
            "rlnTomoName",
            "rlnCoordinateX",
            "rlnCoordinateY",
            "rlnCoordinateZ",
            "rlnOriginXAngst",
            "rlnOriginYAngst",
            "rlnOriginZAngst",
            "rlnOpticsGroup",
        ],
        ["TS_01 1000.000000 1500.000000 400.000000 1.350000 -2.700000 0.000000 1"],
    )
    poses = read_relion_particles(path)
    assert poses.attrs["pixel_spacing"] == 1.35
    np.testing.assert_allclose(poses.position.values, [[1000, 1500, 400]], atol=1e-12)
    np.testing.assert_allclose(poses["shift"].values, [[-1, 2, 0]], atol=1e-12)
    np.testing.assert_allclose((poses.position + poses["shift"]).values, [[999, 1502, 400]], atol=1e-12)
    assert poses.experiment_id.values.tolist() == ["TS_01"]


def test_relion5_centred_worked_example(tmp_path: Path) -> None:
    """CONVENTIONS 3.3: (-1414.8, -739.8, -135.0) Å in a 4096 x 4096 x 1000 tomogram -> (1000, 1500, 400)."""
    path = particles_file(
        tmp_path,
        [
            "rlnTomoName",
            "rlnCenteredCoordinateXAngst",
            "rlnCenteredCoordinateYAngst",
            "rlnCenteredCoordinateZAngst",
        ],
        ["TS_01 -1414.800000 -739.800000 -135.000000"],
        version=50001,
    )
    table = pd.DataFrame(
        {"rlnTomoName": ["TS_01"], "rlnTomoSizeX": [4096], "rlnTomoSizeY": [4096], "rlnTomoSizeZ": [1000]}
    )
    poses = read_relion_particles(path, tomograms=table)
    np.testing.assert_allclose(poses.position.values, [[1000, 1500, 400]], atol=1e-9)
    out = tmp_path / "out.star"
    write_relion_particles(poses, out)  # sizes remembered from the read
    assert read_star(out)["particles"].table.iloc[0, 1:4].tolist() == [-1414.8, -739.8, -135.0]


def test_relion5_odd_size_uses_half_float_centre(tmp_path: Path) -> None:
    """RELION de-centres with N / 2.0: an odd size gives a half-pixel centre."""
    path = particles_file(
        tmp_path,
        [
            "rlnTomoName",
            "rlnCenteredCoordinateXAngst",
            "rlnCenteredCoordinateYAngst",
            "rlnCenteredCoordinateZAngst",
        ],
        ["TS_01 0 0 0"],
        version=50001,
    )
    poses = read_relion_particles(path, tomograms={"TS_01": (511, 512, 201)})
    np.testing.assert_allclose(poses.position.values, [[255.5, 256.0, 100.5]])


def test_relion_euler_matrix_worked_example(tmp_path: Path) -> None:
    """CONVENTIONS 7: rot 10, tilt 20, psi 30 -> RELION's particle -> tomogram matrix."""
    path = particles_file(
        tmp_path,
        [
            "rlnTomoName",
            "rlnCoordinateX",
            "rlnCoordinateY",
            "rlnCoordinateZ",
            "rlnAngleRot",
            "rlnAngleTilt",
            "rlnAnglePsi",
        ],
        ["TS_01 0 0 0 10 20 30"],
    )
    matrix = read_relion_particles(path).cryo.rotation.as_matrix()[0]
    expected = [[0.7146, 0.6337, -0.2962], [-0.6131, 0.7713, 0.1710], [0.3368, 0.0594, 0.9397]]
    np.testing.assert_allclose(matrix, expected, atol=5e-5)


def test_relion5_projection_worked_example(tmp_path: Path) -> None:
    """CONVENTIONS 3.6: (1000, 1500, 400) -> (2515.4548, 1036.2880) through cryoxr.project."""
    path = tilt_series_files(tmp_path, alignment=[(0.0, 30.0, 85.0, 6.75, -13.5)])
    model = read_relion_tilt_series(path)
    poses = cryoxr.make_poseset([[1000.0, 1500.0, 400.0]], experiment_id="TS_01", pixel_spacing=1.35)
    xy = cryoxr.project(
        poses,
        model,
        tomogram_dimensions=model.attrs["tomogram_dimensions"],
        tilt_image_center=model.attrs["tilt_image_center"],
    )
    np.testing.assert_allclose(xy.values[0, 0], [2515.4548, 1036.2880], atol=1e-4)


# ----------------------------------------------------------------------------- oracles


def relion_projection(
    point: np.ndarray, size: np.ndarray, image: np.ndarray, px: float, row: np.ndarray
) -> np.ndarray:
    """CONVENTIONS 3.6 written out: S(c_img) S(shift/px) Rz Ry Rx S(-int(N/2))."""
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
    xy = cryoxr.project(
        poses,
        model,
        tomogram_dimensions=model.attrs["tomogram_dimensions"],
        tilt_image_center=model.attrs["tilt_image_center"],
    ).values
    rows = [np.array([round(v, 6) for v in row]) for row in alignment]  # as printed in the file
    expected = np.array(
        [[relion_projection(p, size, np.array([960, 1023]), 2.1, r) for r in rows] for p in points]
    )
    np.testing.assert_allclose(xy, expected, atol=1e-6)


def test_euler_angles_match_eulerangles(tmp_path: Path, rng: np.random.Generator) -> None:
    angles = np.column_stack(
        [rng.uniform(-180, 180, 50), rng.uniform(0, 180, 50), rng.uniform(-180, 180, 50)]
    )
    rows = [f"TS_01 0 0 0 {a:.12f} {b:.12f} {c:.12f}" for a, b, c in angles]
    path = particles_file(
        tmp_path,
        [
            "rlnTomoName",
            "rlnCoordinateX",
            "rlnCoordinateY",
            "rlnCoordinateZ",
            "rlnAngleRot",
            "rlnAngleTilt",
            "rlnAnglePsi",
        ],
        rows,
    )
    ours = read_relion_particles(path).cryo.rotation.as_matrix()
    parsed = read_star(path)["particles"].table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    passive = eulerangles.euler2matrix(parsed, axes="zyz", intrinsic=True, right_handed_rotation=True)
    np.testing.assert_allclose(ours, np.swapaxes(passive, 1, 2), atol=1e-12)
    out = tmp_path / "out.star"
    write_relion_particles(read_relion_particles(path), out, version=4)
    back = read_star(out)["particles"].table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    np.testing.assert_allclose(back, parsed, atol=1e-8)


def test_subtomogram_prerotation(tmp_path: Path) -> None:
    """RELION 4: orientation = A_sub A, position = coordinate - A_sub origin / px."""
    path = particles_file(
        tmp_path,
        [
            "rlnTomoName",
            "rlnCoordinateX",
            "rlnCoordinateY",
            "rlnCoordinateZ",
            "rlnOriginXAngst",
            "rlnOriginYAngst",
            "rlnOriginZAngst",
            "rlnAngleRot",
            "rlnAngleTilt",
            "rlnAnglePsi",
            "rlnTomoSubtomogramRot",
            "rlnTomoSubtomogramTilt",
            "rlnTomoSubtomogramPsi",
        ],
        ["TS_01 100 200 300 2.7 0 0 10 20 30 90 0 0"],
    )
    poses = read_relion_particles(path)
    a_sub = Rotation.from_euler("ZYZ", [90, 0, 0], degrees=True).inv()
    a = Rotation.from_euler("ZYZ", [10, 20, 30], degrees=True).inv()
    np.testing.assert_allclose(poses.cryo.rotation.as_matrix()[0], (a_sub * a).as_matrix(), atol=1e-12)
    # A_sub (a -90 deg turn about z) maps origin (2, 0, 0) px to (0, -2, 0)
    np.testing.assert_allclose((poses.position + poses["shift"]).values, [[100, 202, 300]], atol=1e-12)
    out = tmp_path / "out.star"
    write_relion_particles(poses, out, version=4)
    pd.testing.assert_frame_equal(read_star(out)["particles"].table, read_star(path)["particles"].table)


def test_starfile_reads_our_output_and_we_read_theirs(tmp_path: Path, rng: np.random.Generator) -> None:
    n = 20
    poses = cryoxr.make_poseset(
        rng.uniform(0, 4000, (n, 3)),
        shift=rng.normal(0, 3, (n, 3)),
        orientation=Rotation.random(n, random_state=3),
        experiment_id=np.where(rng.uniform(size=n) < 0.5, "TS_01", "TS_02"),
        pixel_spacing=1.35,
        extra={"rlnClassNumber": rng.integers(1, 4, n), "rlnLogLikeliContribution": rng.normal(size=n)},
    )
    out = tmp_path / "ours.star"
    write_relion_particles(poses, out, version=4)
    assert out.read_text().count("# version 30001") == 2
    theirs = starfile.read(out)
    df = theirs["particles"]
    np.testing.assert_allclose(
        df[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(),
        poses.position.values,
        atol=1e-9,
    )
    np.testing.assert_allclose(
        df[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy(),
        -poses["shift"].values * 1.35,
        atol=1e-9,
    )
    assert df.rlnClassNumber.tolist() == poses.rlnClassNumber.values.tolist()
    assert theirs["optics"].rlnTomoTiltSeriesPixelSize.tolist() == [1.35]
    # their writer as our input
    again = tmp_path / "theirs.star"
    starfile.write(theirs, again, float_format="%.12f")
    back = read_relion_particles(again)
    np.testing.assert_allclose(back.position.values, poses.position.values, atol=1e-9)
    np.testing.assert_allclose(back["shift"].values, poses["shift"].values, atol=1e-9)
    angle = np.rad2deg((back.cryo.rotation * poses.cryo.rotation.inv()).magnitude())
    np.testing.assert_allclose(angle, 0, atol=1e-8)


# ----------------------------------------------------------------------------- round trips

RELION5_FILE = """
# version 50001

data_general

_rlnTomoSubTomosAre2DStacks                       1


# version 50001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnSphericalAberration #3
_rlnVoltage #4
_rlnTomoTiltSeriesPixelSize #5
_rlnCtfDataAreCtfPremultiplied #6
_rlnImageDimensionality #7
_rlnTomoSubtomogramBinning #8
_rlnImagePixelSize #9
_rlnImageSize #10
_rlnAmplitudeContrast #11
           1 optics1     2.700000   300.000000     1.350000            1            2     2.000000     2.700000          128     0.100000


# version 50001

data_particles

loop_
_rlnTomoName #1
_rlnTomoParticleId #2
_rlnCenteredCoordinateXAngst #3
_rlnCenteredCoordinateYAngst #4
_rlnCenteredCoordinateZAngst #5
_rlnOriginXAngst #6
_rlnOriginYAngst #7
_rlnOriginZAngst #8
_rlnAngleRot #9
_rlnAngleTilt #10
_rlnAnglePsi #11
_rlnClassNumber #12
_rlnLogLikeliContribution #13
_rlnTomoParticleName #14
_rlnImageName #15
_rlnOpticsGroup #16
_rlnGroupNumber #17
_rlnRandomSubset #18
  TS_01            1  -1414.800000  -739.800000  -135.000000     1.350000    -2.700000     0.000000    10.000000    20.000000    30.000000            1 100012.345678    TS_01/1 Extract/job010/Subtomograms/TS_01/1_stack2d.mrcs            1            1            1
  TS_02            2   100.123456   -5.500000    60.250000    -0.675000     0.000000     1.350000  -170.500000   120.250000   -45.000000            2  99998.000001    TS_02/2 Extract/job010/Subtomograms/TS_02/2_stack2d.mrcs            1            1            2
"""


def test_read_write_gives_back_the_same_table(tmp_path: Path) -> None:
    path = tmp_path / "particles.star"
    path.write_text(RELION5_FILE)
    sizes = {"TS_01": (4096, 4096, 1000), "TS_02": (4000, 4000, 1200)}
    poses = read_relion_particles(path, tomograms=sizes)
    assert poses.rlnImageName.values[0] == "Extract/job010/Subtomograms/TS_01/1_stack2d.mrcs"
    assert poses.rlnClassNumber.dtype == np.int64
    out = tmp_path / "out.star"
    write_relion_particles(poses, out)
    original, written = read_star(path), read_star(out)
    assert list(written) == list(original) == ["general", "optics", "particles"]
    for name in original:
        assert written[name].version == original[name].version == 50001
        assert written[name].loop == original[name].loop
        pd.testing.assert_frame_equal(written[name].table, original[name].table)


def test_version_4_to_5_and_back(tmp_path: Path) -> None:
    path = tmp_path / "particles.star"
    path.write_text(RELION5_FILE)
    sizes = {"TS_01": (4096, 4096, 1000), "TS_02": (4000, 4000, 1200)}
    poses = read_relion_particles(path, tomograms=sizes)
    v4 = tmp_path / "v4.star"
    write_relion_particles(poses, v4, version=4)
    table4 = read_star(v4)["particles"].table
    assert list(table4.columns[2:5]) == ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]
    assert table4.rlnCoordinateX.tolist()[0] == 1000.0
    assert read_star(v4)["particles"].version == 30001
    v5 = tmp_path / "v5.star"
    write_relion_particles(read_relion_particles(v4), v5, tomograms=sizes)
    pd.testing.assert_frame_equal(read_star(v5)["particles"].table, read_star(path)["particles"].table)


def test_2d_particles(tmp_path: Path) -> None:
    path = tmp_path / "p2d.star"
    path.write_text(
        "\n# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnMicrographPixelSize #2\n1 0.885\n"
        "\n# version 30001\n\ndata_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnOriginXAngst #3\n"
        "_rlnOriginYAngst #4\n_rlnAnglePsi #5\n_rlnAngleRot #6\n_rlnAngleTilt #7\n_rlnMicrographName #8\n_rlnOpticsGroup #9\n"
        "100.0 200.0 0.885 -1.77 45.0 0.0 90.0 mics/a.mrc 1\n300.5 10.0 0.0 0.0 -30.0 12.0 90.0 mics/b.mrc 1\n"
    )
    poses = read_relion_particles(path)
    assert poses.attrs["pixel_spacing"] == 0.885
    np.testing.assert_allclose(poses.position.values, [[100, 200, 0], [300.5, 10, 0]])
    np.testing.assert_allclose(poses["shift"].values, [[-1, 2, 0], [0, 0, 0]], atol=1e-12)
    assert poses.experiment_id.values.tolist() == ["mics/a.mrc", "mics/b.mrc"]
    out = tmp_path / "out.star"
    write_relion_particles(poses, out)  # 2D sets stay in pixels whatever the version
    pd.testing.assert_frame_equal(read_star(out)["particles"].table, read_star(path)["particles"].table)


def test_dask_backed_read_and_streamed_write(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "particles.star"
    path.write_text(RELION5_FILE)
    sizes = {"TS_01": (4096, 4096, 1000), "TS_02": (4000, 4000, 1200)}
    poses = read_relion_particles(path, tomograms=sizes, chunks=1)
    assert isinstance(poses.position.data, da.Array)
    assert poses.chunks["particle"] == (1, 1)
    out = tmp_path / "out.star"
    from cryoxr.io import relion

    old = relion.WRITE_CHUNK_ROWS
    relion.WRITE_CHUNK_ROWS = 1  # several chunks
    try:
        write_relion_particles(poses, out)
    finally:
        relion.WRITE_CHUNK_ROWS = old
    pd.testing.assert_frame_equal(read_star(out)["particles"].table, read_star(path)["particles"].table)


tomo_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Z"), blacklist_characters="\"'#_"),
    min_size=1,
    max_size=6,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 8),
    version=st.sampled_from([4, 5]),
    names=st.lists(tomo_names, min_size=1, max_size=3, unique=True),
    seed=st.integers(0, 2**31),
    px=st.floats(0.5, 20),
)
def test_particles_round_trip_hypothesis(
    tmp_path: Path, n: int, version: int, names: list[str], seed: int, px: float
) -> None:
    rng = np.random.default_rng(seed)
    sizes = {name: tuple(int(v) for v in rng.integers(100, 5000, 3)) for name in names}
    ids = rng.choice(names, n)
    poses = cryoxr.make_poseset(
        rng.uniform(0, 4000, (n, 3)),
        shift=rng.normal(0, 5, (n, 3)),
        orientation=Rotation.random(n, random_state=seed),
        experiment_id=ids,
        pixel_spacing=px,
        extra={
            "rlnClassNumber": rng.integers(1, 10, n),
            "rlnMaxValueProbDistribution": rng.uniform(size=n),
            "rlnImageName": np.array(
                [f"{i:06d}@stacks/{name}.mrcs" for i, name in enumerate(ids)], dtype=object
            ),
            "myScore": rng.normal(size=n),
        },
    )
    path = tmp_path / "h.star"
    write_relion_particles(poses, path, version=version, tomograms=sizes, overwrite=True)
    back = read_relion_particles(path, tomograms=sizes)
    assert back.experiment_id.values.tolist() == ids.tolist()
    np.testing.assert_allclose(back.position.values, poses.position.values, atol=1e-6, rtol=0)
    np.testing.assert_allclose(back["shift"].values, poses["shift"].values, atol=1e-6, rtol=0)
    angle = np.rad2deg((back.cryo.rotation * poses.cryo.rotation.inv()).magnitude())
    np.testing.assert_allclose(angle, 0, atol=1e-9)
    for name in ("rlnClassNumber", "rlnMaxValueProbDistribution", "rlnImageName", "myScore"):
        assert back[name].values.tolist() == poses[name].values.tolist()
    # and the file itself round-trips unchanged
    again = tmp_path / "again.star"
    write_relion_particles(back, again, version=version, overwrite=True)
    assert again.read_bytes() == path.read_bytes()


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
        )
        for i, name in enumerate(names)
    ]
    model = pd.concat(models, ignore_index=True)
    sizes = {name: (4096, 4095, 1001) for name in names}
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    write_relion_tilt_series(model, folder / "tomograms.star", tomograms=sizes)
    back = read_relion_tilt_series(folder / "tomograms.star")
    cols = ["rotation_x", "rotation_y", "rotation_z", "dx", "dy", "pixel_spacing", "rlnMicrographPreExposure"]
    np.testing.assert_allclose(back[cols].to_numpy(float), model[cols].to_numpy(float), atol=1e-8)
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
    assert model.rlnMicrographPreExposure.tolist() == [0.0, 3.0]
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


def test_nan_angle_is_a_format_error(tmp_path: Path) -> None:
    path = particles_file(
        tmp_path,
        [
            "rlnTomoName",
            "rlnCoordinateX",
            "rlnCoordinateY",
            "rlnCoordinateZ",
            "rlnAngleRot",
            "rlnAngleTilt",
            "rlnAnglePsi",
        ],
        ["TS_01 0 0 0 10 20 30", "TS_01 0 0 0 10 nan 30"],
    )
    with pytest.raises(
        FormatError,
        match=r"particles.star, data_particles, row 2, column rlnAngleTilt: expected a finite number, found nan",
    ):
        read_relion_particles(path)


def test_text_in_coordinates(tmp_path: Path) -> None:
    path = particles_file(
        tmp_path,
        ["rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"],
        ["TS_01 0 0 0", "TS_01 1 two 3"],
    )
    with pytest.raises(
        FormatError, match=r"particles.star, line \d+, column rlnCoordinateY: expected a number, found 'two'"
    ):
        read_relion_particles(path)


def test_missing_pieces(tmp_path: Path) -> None:
    path = tmp_path / "no_optics.star"
    path.write_text("data_particles\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1 2\n")
    with pytest.raises(FormatError, match="expected a data_optics block"):
        read_relion_particles(path)
    path = particles_file(tmp_path, ["rlnTomoName", "rlnAngleRot"], ["TS_01 0"])
    with pytest.raises(FormatError, match="missing"):
        read_relion_particles(path)
    path = particles_file(
        tmp_path,
        [
            "rlnTomoName",
            "rlnCenteredCoordinateXAngst",
            "rlnCenteredCoordinateYAngst",
            "rlnCenteredCoordinateZAngst",
        ],
        ["TS_01 0 0 0"],
    )
    with pytest.raises(InvalidValueError, match="need the tomogram sizes"):
        read_relion_particles(path)
    with pytest.raises(InvalidValueError, match=r"no tomogram size for \['TS_01'\]"):
        read_relion_particles(path, tomograms={"TS_02": (1, 1, 1)})
    poses = cryoxr.make_poseset([[1.0, 2, 3]], experiment_id="a", pixel_spacing=1)
    with pytest.raises(InvalidValueError, match="needs the tomogram sizes"):
        write_relion_particles(poses, tmp_path / "x.star")
    with pytest.raises(InvalidValueError, match="version must be one of"):
        write_relion_particles(poses, tmp_path / "x.star", version=6)


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


def test_closed_form_euler_matches_scipy(rng: np.random.Generator) -> None:
    from cryoxr.io.relion import _relion_euler, _relion_quaternions

    angles = np.column_stack(
        [rng.uniform(-180, 180, 500), rng.uniform(0, 180, 500), rng.uniform(-180, 180, 500)]
    )
    angles[:3] = [[0, 0, 45], [30, 180, 0], [180, 90, -179.5]]
    ours = Rotation.from_quat(_relion_quaternions(angles))
    scipy = Rotation.from_euler("ZYZ", angles, degrees=True).inv()
    np.testing.assert_allclose(ours.as_matrix(), scipy.as_matrix(), atol=1e-14)
    back = _relion_euler(ours.as_quat())
    np.testing.assert_allclose(back, angles, atol=1e-9)  # canonical triples come back as they were
    assert back[0].tolist() == pytest.approx([0, 0, 45])
    assert back[1].tolist() == pytest.approx([30, 180, 0])
    gimbal = Rotation.from_quat(_relion_quaternions(np.array([[10.0, 0, 20], [10.0, 180, 20]])))
    again = Rotation.from_quat(_relion_quaternions(_relion_euler(gimbal.as_quat())))
    assert np.allclose((again * gimbal.inv()).magnitude(), 0, atol=1e-12)


def test_changed_pixel_spacing_updates_optics(tmp_path: Path) -> None:
    path = particles_file(
        tmp_path, ["rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"], ["TS_01 100 200 300"]
    )
    poses = read_relion_particles(path)
    binned = poses.assign(position=poses.position / 2)
    binned.attrs["pixel_spacing"] = 2.7
    out = tmp_path / "binned.star"
    write_relion_particles(binned, out, version=4)
    assert read_star(out)["optics"].table.rlnTomoTiltSeriesPixelSize.tolist() == [2.7]
    back = read_relion_particles(out)
    np.testing.assert_allclose(back.position.values * back.attrs["pixel_spacing"], [[135, 270, 405]])
