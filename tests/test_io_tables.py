"""Format dispatch (read_poses / read_alignment), shared parsing, and cross-format round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import cryoxr
from cryoxr.errors import CryoxrFileNotFoundError, FormatError, InvalidValueError, UnknownFormatError
from cryoxr.io.aretomo import write_aretomo_alignment
from cryoxr.io.dynamo import read_dynamo_table, write_dynamo_table
from cryoxr.io.imod import write_imod_alignment
from cryoxr.io.relion import read_relion_particles, write_relion_particles, write_relion_tilt_series
from cryoxr.io.tables import read_alignment, read_poses

TBL_ROW = " ".join(["1"] * 19 + ["3"] + ["0"] * 3 + ["10", "20", "30"] + ["0"] * 9 + ["1.35"]) + "\n"
WORKED_XF = "0.0871557 0.9961947 -0.9961947 0.0871557 9.526 5.853\n"


def test_read_poses_by_suffix_and_kwargs(tmp_path: Path) -> None:
    (tmp_path / "p.tbl").write_text(TBL_ROW)
    ds = read_poses(tmp_path / "p.tbl", origin="corner")
    assert ds.position.values.tolist() == [[9.5, 19.5, 29.5]]
    assert ds.experiment_id.values.tolist() == ["3"]


def test_read_poses_by_content(tmp_path: Path) -> None:
    (tmp_path / "particles.txt").write_text(TBL_ROW * 2)
    assert read_poses(tmp_path / "particles.txt").sizes["particle"] == 2


def test_read_alignment_imod_with_siblings(tmp_path: Path) -> None:
    (tmp_path / "TS.xf").write_text(WORKED_XF)
    with pytest.raises(
        CryoxrFileNotFoundError, match=r"expected the sibling TS\.tlt or TS\.rawtlt, found neither"
    ):
        read_alignment(tmp_path / "TS.xf")
    (tmp_path / "TS.tlt").write_text("30\n")
    df = read_alignment(tmp_path / "TS.xf", pixel_spacing=1.35)
    assert df.rotation_z.round(4).tolist() == [85.0]
    assert df.rotation_x.tolist() == [0.0]
    (tmp_path / "TS.xtilt").write_text("2.0\n")
    assert read_alignment(tmp_path / "TS.xf", pixel_spacing=1.35).rotation_x.tolist() == [2.0]
    assert read_alignment(tmp_path / "TS.xf", pixel_spacing=1.35, xtilt=None).rotation_x.tolist() == [0.0]
    (tmp_path / "TS.defocus").write_text("1 1 30 30 3500 2\n")  # ctfplotter's: read when given
    assert "defocus_u" not in read_alignment(tmp_path / "TS.xf", pixel_spacing=1.35)
    given = read_alignment(tmp_path / "TS.xf", pixel_spacing=1.35, defocus=tmp_path / "TS.defocus")
    assert given.defocus_u.tolist() == [35000.0]


def test_read_alignment_imod_rawtlt_when_no_tlt(tmp_path: Path) -> None:
    """Issue 21: an .xf with only a .rawtlt (the nominal angles) beside it reads."""
    (tmp_path / "TS.xf").write_text(WORKED_XF)
    (tmp_path / "TS.rawtlt").write_text("29.5\n")
    df = read_alignment(tmp_path / "TS.xf", pixel_spacing=1.35)
    assert df.rotation_y.tolist() == [29.5]
    assert df.attrs["tilt_angles"].endswith("TS.rawtlt")
    (tmp_path / "TS.tlt").write_text("30\n")  # tiltalign's solved angles win when present
    assert read_alignment(tmp_path / "TS.xf", pixel_spacing=1.35).rotation_y.tolist() == [30.0]
    assert read_alignment(
        tmp_path / "TS.xf", pixel_spacing=1.35, tlt=tmp_path / "TS.rawtlt"
    ).rotation_y.tolist() == [29.5]


def test_pixel_spacing_through_dispatch(tmp_path: Path) -> None:
    """Issue 15: no invented 1.0 Å; the advice names the argument; RELION refuses an override."""
    (tmp_path / "TS.xf").write_text(WORKED_XF)
    (tmp_path / "TS.tlt").write_text("30\n")
    with pytest.raises(
        InvalidValueError, match=r"TS\.xf: IMOD \.xf files store no pixel size; pass pixel_spacing="
    ):
        read_alignment(tmp_path / "TS.xf")
    model = cryoxr.make_projection_model(rotation_y=[0.0], experiment_id="TS_01", pixel_spacing=1.35)
    written = write_relion_tilt_series(
        model, tmp_path / "tomograms.star", tomograms={"TS_01": (100, 100, 50)}
    )
    assert read_alignment(written[0]).pixel_spacing.tolist() == [1.35]
    with pytest.raises(
        InvalidValueError, match=r"tomograms\.star: this file stores its own pixel size .* only for files"
    ):
        read_alignment(written[0], pixel_spacing=2.0)
    with pytest.raises(InvalidValueError, match=r"stores its own pixel size"):
        read_poses(_star_particles(tmp_path), pixel_spacing=2.0)


def _star_particles(folder: Path) -> Path:
    poses = cryoxr.make_poseset([[1.0, 2.0, 3.0]], experiment_id="TS_01", pixel_spacing=1.35)
    write_relion_particles(poses, folder / "particles.star", version=4)
    return folder / "particles.star"


def test_aretomo_side_files_found_beside_the_aln(tmp_path: Path) -> None:
    model = cryoxr.make_projection_model(
        rotation_y=[0.0, 3.0], rotation_z=85, experiment_id="a", pixel_spacing=1
    )
    write_aretomo_alignment(model, tmp_path / "TS.aln", image_size=(10, 10))
    (tmp_path / "TS_CTF.txt").write_text("# Columns\n1 30000 29000 5 0 0.1 9\n2 31000 30000 6 0 0.1 9\n")
    (tmp_path / "TS_TLT.txt").write_text("0 2 3\n3 1 3\n")
    df = read_alignment(tmp_path / "TS.aln", pixel_spacing=1.0)
    assert df.defocus_u.tolist() == [30000.0, 31000.0]
    assert df.pre_exposure.tolist() == [3.0, 0.0]
    assert "defocus_u" not in read_alignment(tmp_path / "TS.aln", pixel_spacing=1.0, ctf=None)


def test_read_alignment_aretomo_and_content(tmp_path: Path) -> None:
    model = cryoxr.make_projection_model(
        rotation_y=[0.0, 3.0], rotation_z=85, experiment_id="a", pixel_spacing=1
    )
    write_aretomo_alignment(model, tmp_path / "a.aln", image_size=(10, 10))
    assert read_alignment(tmp_path / "a.aln", pixel_spacing=1.0).rotation_y.tolist() == [0.0, 3.0]
    (tmp_path / "a.dat").write_text((tmp_path / "a.aln").read_text())
    assert read_alignment(tmp_path / "a.dat", pixel_spacing=1.0).rotation_y.tolist() == [0.0, 3.0]
    write_imod_alignment(model, tmp_path / "b.txt", tmp_path / "b.tlt")
    assert read_alignment(tmp_path / "b.txt", pixel_spacing=1.0).rotation_z.round(9).tolist() == [85.0, 85.0]


def test_unknown_and_missing(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("hello world\n")
    with pytest.raises(UnknownFormatError, match=r"known: \.star \(relion\), \.tbl \(dynamo\)"):
        read_poses(tmp_path / "notes.md")
    with pytest.raises(UnknownFormatError, match=r"known: .*\.xf \(imod\), \.aln \(aretomo\)"):
        read_alignment(tmp_path / "notes.md")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(UnknownFormatError):
        read_poses(tmp_path / "empty.bin")
    # an .xf-like file is an alignment, not poses
    (tmp_path / "x.dat").write_text(WORKED_XF)
    with pytest.raises(UnknownFormatError, match=r"looks like \.xf"):
        read_poses(tmp_path / "x.dat")
    with pytest.raises(CryoxrFileNotFoundError, match=r"nothing\.tbl"):
        read_poses(tmp_path / "nothing.tbl")
    assert (
        read_poses(_empty(tmp_path / "e.tbl"), pixel_spacing=1.0).sizes["particle"] == 0
    )  # Dynamo: 0 particles
    with pytest.raises(FormatError, match="empty file"):
        read_alignment(_empty(tmp_path / "e.aln"), pixel_spacing=1.0)


def _empty(path: Path) -> Path:
    path.write_text("")
    return path


def test_relion_dynamo_relion_roundtrip(tmp_path: Path, rng: np.random.Generator) -> None:
    """RELION -> cryoxr -> Dynamo -> cryoxr -> RELION keeps positions to 1e-6 px, rotations to 1e-9 deg."""
    n = 200
    ids = np.where(rng.uniform(size=n) < 0.5, "TS_01", "TS_02")
    poses = cryoxr.make_poseset(
        rng.uniform(0, 4000, (n, 3)),
        shift=rng.normal(0, 3, (n, 3)),
        orientation=Rotation.random(n, random_state=7),
        experiment_id=ids,
        pixel_spacing=1.35,
    )
    write_relion_particles(poses, tmp_path / "in.star", version=4)
    from_relion = read_relion_particles(tmp_path / "in.star")
    write_dynamo_table(from_relion, tmp_path / "p.tbl", tomogram_map=tmp_path / "p.doc")
    from_dynamo = read_dynamo_table(tmp_path / "p.tbl", tomogram_map=tmp_path / "p.doc", pixel_spacing=1.35)
    write_relion_particles(from_dynamo, tmp_path / "out.star", version=4)
    back = read_relion_particles(tmp_path / "out.star")
    assert np.asarray(back.experiment_id.values).tolist() == ids.tolist()
    assert read_poses(tmp_path / "out.star").sizes["particle"] == n  # dispatch of .star
    total = (back.position + back["shift"]).values
    np.testing.assert_allclose(total, (poses.position + poses["shift"]).values, atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.position.values, poses.position.values, atol=1e-6, rtol=0)
    angle = np.rad2deg((back.cryo.rotation * poses.cryo.rotation.inv()).magnitude())
    np.testing.assert_allclose(angle, 0.0, atol=1e-9)
