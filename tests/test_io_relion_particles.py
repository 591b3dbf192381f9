"""RELION particles: worked numbers, independent oracles, round trips, bad files."""

from __future__ import annotations

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
from cryoxr.errors import FormatError, InvalidValueError
from cryoxr.io.relion import (
    read_relion_particles,
    write_relion_particles,
)
from cryoxr.io.star import read_star

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


# ----------------------------------------------------------------------------- worked numbers


def test_relion4_origin_worked_example(tmp_path: Path) -> None:
    """docs/CONVENTIONS.md §6.1: coordinate (1000, 1500, 400), origin (1.35, -2.70, 0) Å, 1.35 Å/px."""
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
    """docs/CONVENTIONS.md §6.1: (-1414.8, -739.8, -135.0) Å in a 4096 x 4096 x 1000 tomogram -> (1000, 1500, 400)."""
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
    """docs/CONVENTIONS.md §3: rot 10, tilt 20, psi 30 -> RELION's particle -> tomogram matrix."""
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


# ----------------------------------------------------------------------------- oracles
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
    write_relion_particles(read_relion_particles(v4), v5, version=5, tomograms=sizes)
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
    from cryoxr.io.relion import particles

    old = particles.WRITE_CHUNK_ROWS
    particles.WRITE_CHUNK_ROWS = 1  # several chunks
    try:
        write_relion_particles(poses, out)
    finally:
        particles.WRITE_CHUNK_ROWS = old
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


# ----------------------------------------------------------------------------- what peers hand over


def test_relion5_set_finds_its_tomograms_star(tmp_path: Path) -> None:
    path = tmp_path / "particles.star"
    path.write_text(RELION5_FILE)
    with pytest.raises(InvalidValueError, match=r"no tomograms\.star beside the file: pass tomograms="):
        read_relion_particles(path)
    model = cryoxr.make_projection_model(
        rotation_y=[0.0, 0.0, 0.0],
        experiment_id=["TS_01", "TS_02", "TS_02"],
        pixel_spacing=1.35,
        tomogram_size_x=[4096, 4000, 4000],
        tomogram_size_y=[4096, 4000, 4000],
        tomogram_size_z=[1000, 1200, 1200],
    )
    cryoxr.io.write_relion_tilt_series(model, tmp_path / "tomograms.star")
    found = read_relion_particles(path)
    given = read_relion_particles(path, tomograms={"TS_01": (4096, 4096, 1000), "TS_02": (4000, 4000, 1200)})
    np.testing.assert_array_equal(found.position.values, given.position.values)
    np.testing.assert_allclose(found.position.values[0], [1000, 1500, 400], atol=1e-9)
    # a model (columns only: attrs dropped by concat / parquet) also gives the sizes
    plain = model.copy()
    plain.attrs = {}
    np.testing.assert_array_equal(
        read_relion_particles(path, tomograms=plain).position.values, given.position.values
    )


@pytest.mark.parametrize("version", [30001, 50001])
def test_read_and_write_back_without_arguments_gives_the_same_table(tmp_path: Path, version: int) -> None:
    sizes = {"TS_01": (4096, 4096, 1000), "TS_02": (4000, 4000, 1200)}
    five = tmp_path / "five.star"
    five.write_text(RELION5_FILE)
    path = five
    if version == 30001:  # a RELION 4 file: pixel coordinates
        path = tmp_path / "four.star"
        write_relion_particles(read_relion_particles(five, tomograms=sizes), path, version=4)
    poses = read_relion_particles(path, tomograms=sizes)
    out = tmp_path / "out.star"
    write_relion_particles(poses, out)
    original, written = starfile.read(path, always_dict=True), starfile.read(out, always_dict=True)
    assert list(written) == list(original)
    for name in original:  # starfile as the oracle: loops as DataFrames, simple blocks as dicts
        if isinstance(original[name], dict):
            assert written[name] == original[name]
        else:
            pd.testing.assert_frame_equal(written[name], original[name])
    assert all(block.version == version for block in read_star(out).values())


RELION30 = """
data_

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnCoordinateZ #3
_rlnOriginX #4
_rlnOriginY #5
_rlnOriginZ #6
_rlnAngleRot #7
_rlnAngleTilt #8
_rlnAnglePsi #9
_rlnMicrographName #10
_rlnMagnification #11
_rlnDetectorPixelSize #12
1000.0 1500.0 400.0 1.0 -2.0 0.0 10.0 20.0 30.0 tomo1.mrc 10000.0 2.7
"""


def test_relion30_needs_a_pixel_spacing(tmp_path: Path) -> None:
    path = tmp_path / "old.star"
    path.write_text(RELION30)
    with pytest.raises(FormatError, match=r"a RELION 3.0 file has none: pass pixel_spacing="):
        read_relion_particles(path)
    poses = read_relion_particles(path, pixel_spacing=1.35)
    assert poses.attrs["pixel_spacing"] == 1.35
    np.testing.assert_allclose(poses.position.values, [[1000, 1500, 400]])
    # origins are pixels of the images: 1e4 * 2.7 / 10000 = 2.7 Å, i.e. 2 coordinate pixels of 1.35 Å
    np.testing.assert_allclose(poses["shift"].values, [[-2.0, 4.0, 0.0]], atol=1e-12)
    expected = Rotation.from_euler("ZYZ", [10, 20, 30], degrees=True).inv()
    assert (poses.cryo.rotation[0] * expected.inv()).magnitude() < 1e-9
    assert poses.experiment_id.values.tolist() == ["tomo1.mrc"]
    assert "rlnOriginX" not in poses.data_vars
    # written back as RELION 3.1, with the optics block it lacked, and read without arguments
    out = tmp_path / "new.star"
    write_relion_particles(poses, out)
    again = read_relion_particles(out)
    assert list(read_star(out)) == ["optics", "particles"]
    np.testing.assert_allclose((again.position + again["shift"]).values, [[998, 1504, 400]], atol=1e-9)
    assert read_star(out)["particles"].table.rlnOriginXAngst.tolist() == [2.7]


def test_empty_tomogram_name_names_the_file(tmp_path: Path) -> None:
    path = particles_file(
        tmp_path,
        ["rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"],
        ["TS_01 1 2 3", '"" 4 5 6'],
    )
    with pytest.raises(
        FormatError, match=r"particles.star, data_particles, row 2, column rlnTomoName: expected a"
    ):
        read_relion_particles(path)


@pytest.mark.parametrize(
    "names",
    [
        ["a@TS_01/stack.mrcs", "000123@TS_01/Subtomograms/long_name_stack2d.mrcs", "b"],
        ["ä@TS_01.mrcs", "b", "c"],  # not ASCII: the general conversion
    ],
)
def test_text_extra_columns_are_variable_width_strings(tmp_path: Path, names: list[str]) -> None:
    path = particles_file(
        tmp_path,
        [
            "rlnTomoName",
            "rlnCoordinateX",
            "rlnCoordinateY",
            "rlnCoordinateZ",
            "rlnImageName",
            "rlnOpticsGroup",
        ],
        [f"TS_01 1 2 3 {name} 1" for name in names],
    )
    poses = read_relion_particles(path)
    values = poses["rlnImageName"].values
    assert values.dtype == np.dtypes.StringDType()  # not <U<longest>: 4 bytes a character
    assert values.tolist() == names
    assert poses.experiment_id.dtype.kind == "U"  # labels stay fixed-width (astype(str) works)
    assert poses["rlnOpticsGroup"].values.tolist() == [1, 1, 1]


def test_ascii_bytes_from_arrow_buffers_equals_str(rng: np.random.Generator) -> None:
    import pyarrow as pa

    from cryoxr.io.relion.particles import _ascii_bytes

    words = ["".join(rng.choice(list("abc/@_.0123"), size=rng.integers(0, 12))) for _ in range(200)]
    array = pa.array(words).slice(7, 143)  # a slice: buffers with an offset
    got = _ascii_bytes(array)
    assert got is not None
    assert got.dtype == np.dtype(f"S{max(len(w) for w in words[7:150])}")
    assert got.astype(np.dtypes.StringDType()).tolist() == words[7:150]
    assert _ascii_bytes(pa.array(["é", "a"])) is None


def test_text_columns_convert_in_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of a column (several arrow chunks, ASCII and not) land in order."""
    import cryoxr.io.relion.particles as particles

    monkeypatch.setattr(particles, "_TEXT_ROWS", 2)
    names = ["a", "bb@x.mrcs", "ü", "", "'q'", "d e"]
    column = pd.Series(pd.array(names, dtype="string[pyarrow]"))
    got = particles._extra_values(column)
    assert got.dtype == np.dtypes.StringDType()
    assert got.tolist() == names


odd_text = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp"), exclude_characters="\x85"
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(odd_text, min_size=1, max_size=6))
def test_odd_text_round_trips_unchanged(tmp_path: Path, values: list[str]) -> None:
    """Quotes, blanks, unicode and empty strings come back exactly, as StringDType."""
    n = len(values)
    poses = cryoxr.make_poseset(
        np.arange(3.0 * n).reshape(n, 3),
        experiment_id=["TS 1"] * n,
        pixel_spacing=1.0,
        extra={"rlnImageName": np.array(values, dtype=object).astype(str), "rlnNote": values},
    )
    assert poses["rlnImageName"].dtype == np.dtypes.StringDType()
    path = tmp_path / "odd.star"
    write_relion_particles(poses, path, version=4, overwrite=True)
    back = read_relion_particles(path)
    for name in ("rlnImageName", "rlnNote"):
        assert back[name].dtype == np.dtypes.StringDType()
        assert back[name].values.tolist() == values
    assert back.experiment_id.values.tolist() == ["TS 1"] * n
    again = tmp_path / "again.star"
    write_relion_particles(back, again, overwrite=True)
    assert again.read_bytes() == path.read_bytes()


def test_text_survives_zarr_and_convert(tmp_path: Path) -> None:
    """StringDType text through the other writers: a PoseSet stored as zarr (format 2, as
    cryoxr's commands write) and ``convert`` STAR -> STAR give back the same text."""
    names = ["000001@Subtomograms/TS 01.mrcs", "", "ü'x\"", "b"]
    poses = cryoxr.make_poseset(
        np.arange(12.0).reshape(4, 3),
        experiment_id=["TS_01", "TS_01", "TS_02", "TS_02"],
        pixel_spacing=1.5,
        extra={"rlnImageName": names},
    )
    star = tmp_path / "p.star"
    write_relion_particles(poses, star, version=4)
    read = read_relion_particles(star)
    store = tmp_path / "p.zarr"
    read.to_zarr(store, zarr_format=2)
    import xarray as xr

    back = xr.open_zarr(store).compute()
    assert back["rlnImageName"].values.tolist() == names
    write_relion_particles(back, tmp_path / "from_zarr.star")
    assert (tmp_path / "from_zarr.star").read_bytes() == star.read_bytes()
    cryoxr.io.convert(star, tmp_path / "converted.star")
    assert read_relion_particles(tmp_path / "converted.star")["rlnImageName"].values.tolist() == names
