"""AreTomo .aln <-> ProjectionModel: worked numbers, the xf relation, cryoet-alignment oracle, bad files."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cryoxr
from cryoxr.errors import CryoxrError, FileExistsNoOverwriteError, FormatError, InvalidValueError
from cryoxr.io.aretomo import read_aretomo_alignment, write_aretomo_alignment
from cryoxr.io.imod import write_imod_alignment

#: the reader with a pixel size (AreTomo files store none: the tests of that are below)
read_aln = functools.partial(read_aretomo_alignment, pixel_spacing=1.0)

WORKED_XF = [0.0871557, 0.9961947, -0.9961947, 0.0871557, 9.526, 5.853]

SAMPLE = """# AreTomo Alignment / Priims bprmMn
# RawSize = 4096 4096 4
# NumPatches = 2
# DarkFrame =     0    0   -68.00
# AlphaOffset =    12.30
# BetaOffset =     0.00
# Thickness = 1910
# SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE     BASE     TILT
    1    84.4445    1.00000     13.382     21.802     1.00     1.00     1.00     0.00    -27.71
    2    85.0000    1.00000      5.000    -10.000     1.00     1.00     1.00     0.00     30.00
    3    84.9000    1.00000     -3.500      2.250     1.00     1.00     1.00     0.00     33.00
# Local Alignment
   0   0 -1537.16  -1363.14     -6.93    -36.22   1.0
   0   1  1537.16  -1363.14      1.93      6.22   0.0
   1   0 -1537.16  -1363.14     -6.93    -36.22   1.0
   1   1  1537.16  -1363.14      1.93      6.22   1.0
   2   0 -1537.16  -1363.14     -6.93    -36.22   1.0
   2   1  1537.16  -1363.14      1.93      6.22   1.0
"""


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_read_sample(tmp_path: Path) -> None:
    df = read_aln(_write(tmp_path / "TS_01.aln", SAMPLE), pixel_spacing=1.35)
    assert df.rotation_z.tolist() == [84.4445, 85.0, 84.9]
    assert df.rotation_y.tolist() == [-27.71, 30.0, 33.0]
    assert df.dx.tolist() == [13.382, 5.0, -3.5]
    assert df.dy.tolist() == [21.802, -10.0, 2.25]
    assert df.rotation_x.tolist() == [0.0, 0.0, 0.0]
    assert df.sec.tolist() == [1, 2, 3]
    assert df.experiment_id.unique().tolist() == ["TS_01"]
    meta = df.attrs["aretomo"]
    assert meta["raw_size"] == [4096, 4096, 4]
    assert meta["dark_frames"] == [[0, 0, -68.0]]
    assert (meta["alpha_offset"], meta["beta_offset"], meta["thickness"], meta["num_patches"]) == (
        12.3,
        0.0,
        1910,
        2,
    )
    assert meta["local_alignment"]["good"] == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert meta["local_alignment"]["tilt"] == [0, 0, 1, 1, 2, 2]
    assert df.attrs["tilt_image_center"] == (2047.5, 2047.5)
    assert df.attrs["specimen_center"] is None


def test_aretomo_to_xf_worked_numbers(tmp_path: Path) -> None:
    """CONVENTIONS 5: ROT 85, TX 5, TY -10 gives the worked xf line, as AreTomo2's CSaveXF computes it."""
    df = read_aln(_write(tmp_path / "a.aln", SAMPLE))
    one = df.iloc[[1]]
    with pytest.warns(
        UserWarning, match=r"a\.xf \(IMOD \.xf/\.tlt\) cannot store column\(s\) \['sec', 'gmag'"
    ):
        write_imod_alignment(one, tmp_path / "a.xf", tmp_path / "a.tlt")
    values = np.array([float(v) for v in (tmp_path / "a.xf").read_text().split()])
    np.testing.assert_allclose(values[:4], WORKED_XF[:4], atol=5e-8)
    np.testing.assert_allclose(values[4:], WORKED_XF[4:], atol=5e-4)
    # CSaveXF independently: A = R(-ROT), (DX, DY) = A (-TX, -TY)
    rot = np.deg2rad(-85.0)
    a = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    np.testing.assert_allclose(values[:4], a.reshape(-1), atol=1e-12)
    np.testing.assert_allclose(values[4:], a @ [-5.0, 10.0], atol=1e-12)


def test_cryoet_alignment_oracle(tmp_path: Path, rng: np.random.Generator) -> None:
    pytest.importorskip("cryoet_alignment")
    from cryoet_alignment.io.aretomo3 import AreTomo3ALN
    from cryoet_alignment.io.cryoet_data_portal.alignment import Alignment

    n = 25
    model = cryoxr.make_projection_model(
        rotation_y=np.sort(rng.uniform(-60, 60, n)),
        rotation_z=rng.uniform(-180, 180, n),
        dx=rng.normal(0, 30, n),
        dy=rng.normal(0, 30, n),
        experiment_id="ts",
        pixel_spacing=1.0,
    )
    write_aretomo_alignment(model, tmp_path / "ts.aln", image_size=(1000, 900))
    parsed = AreTomo3ALN.from_file(tmp_path / "ts.aln")  # their parser reads our file
    params = Alignment.from_aretomo3(parsed).per_section_alignment_parameters
    ours = read_aln(tmp_path / "ts.aln")
    np.testing.assert_allclose(ours.rotation_z, [p.tilt_axis_rotation for p in params], atol=1e-9)
    np.testing.assert_allclose(ours.dx, [p.x_offset for p in params], atol=1e-12)
    np.testing.assert_allclose(ours.dy, [p.y_offset for p in params], atol=1e-12)
    np.testing.assert_allclose(ours.rotation_y, [p.tilt_angle for p in params], atol=1e-12)
    # and the sample with dark frames and local rows
    sample = AreTomo3ALN.from_file(_write(tmp_path / "s.aln", SAMPLE))
    ours = read_aln(tmp_path / "s.aln")
    assert [g.rot for g in sample.GlobalAlignments] == ours.rotation_z.tolist()
    assert len(sample.LocalAlignments or []) == len(ours.attrs["aretomo"]["local_alignment"]["x"])


def test_roundtrip_keeps_header_dark_frames_and_local_rows(tmp_path: Path) -> None:
    df = read_aln(_write(tmp_path / "a.aln", SAMPLE))
    write_aretomo_alignment(df, tmp_path / "b.aln")
    back = read_aln(tmp_path / "b.aln", experiment_id="a")
    for col in df.columns:
        if col != "source":
            assert back[col].tolist() == df[col].tolist(), col
    assert back.attrs["aretomo"] == df.attrs["aretomo"]
    with pytest.raises(FileExistsNoOverwriteError):
        write_aretomo_alignment(df, tmp_path / "b.aln")
    write_aretomo_alignment(df, tmp_path / "b.aln", overwrite=True)


def test_writer_refusals(tmp_path: Path) -> None:
    model = cryoxr.make_projection_model(rotation_y=[0, 3], experiment_id="a", pixel_spacing=1)
    with pytest.raises(InvalidValueError, match="image_size"):
        write_aretomo_alignment(model, tmp_path / "a.aln")
    tilted = cryoxr.make_projection_model(
        rotation_x=1.0, rotation_y=[0, 3], experiment_id="a", pixel_spacing=1
    )
    with pytest.raises(InvalidValueError, match="rotation_x must be 0"):
        write_aretomo_alignment(tilted, tmp_path / "a.aln", image_size=(10, 10))
    two = cryoxr.make_projection_model(rotation_y=[0, 3], experiment_id=["a", "b"], pixel_spacing=1)
    with pytest.raises(InvalidValueError, match="one tilt series"):
        write_aretomo_alignment(two, tmp_path / "a.aln", image_size=(10, 10))
    assert not (tmp_path / "a.aln").exists()


finite = st.floats(-1e4, 1e4, allow_nan=False)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(st.floats(-80, 80), st.floats(-180, 180), finite, finite, st.floats(0.5, 2)),
        min_size=1,
        max_size=10,
    ),
    name=st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=10),
)
def test_roundtrip_hypothesis(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[float, float, float, float, float]], name: str
) -> None:
    folder = tmp_path_factory.mktemp("aln")
    ry, rz, dx, dy, gmag = (np.array(c) for c in zip(*rows, strict=True))
    model = cryoxr.make_projection_model(
        rotation_y=ry,
        rotation_z=rz,
        dx=dx,
        dy=dy,
        experiment_id=name,
        pixel_spacing=2.0,
        extra={"gmag": gmag},
    )
    write_aretomo_alignment(model, folder / "t.aln", image_size=(512, 511))
    back = read_aln(folder / "t.aln", experiment_id=name, pixel_spacing=2.0)
    for col in (
        "rotation_x",
        "rotation_y",
        "rotation_z",
        "dx",
        "dy",
        "gmag",
        "experiment_id",
        "pixel_spacing",
    ):
        assert back[col].tolist() == model[col].tolist(), col
    assert back.sec.tolist() == list(range(len(rows)))
    assert back.attrs["tilt_image_center"] == (255.5, 255.0)


GOOD_HEAD = "# AreTomo Alignment / Priims bprmMn\n# RawSize = 10 10 1\n# NumPatches = 0\n"
COLS = "# SEC ROT GMAG TX TY SMEAN SFIT SCALE BASE TILT\n"
BAD_ALN = [
    ("", "empty file"),
    ("hello\n", r"line 1: expected '# AreTomo Alignment'"),
    ("# AreTomo Alignment\n" + COLS + "0 1 1 1 1 1 1 1 1 1\n", "RawSize"),
    (GOOD_HEAD + COLS + "0 85 1 5 -10 1 1 1 0\n", "line 5: expected 10 columns .*found 9"),
    (
        GOOD_HEAD + COLS + "0 85 1 five -10 1 1 1 0 30\n",
        r"line 5, column 4 \(TX\): expected a number, found 'five'",
    ),
    (
        GOOD_HEAD + COLS + "0 85 1 5 -10 1 1 1 0 nan\n",
        r"line 5, column 10 \(TILT\): expected a finite number",
    ),
    (
        GOOD_HEAD + COLS + "0 85 1 5 -10 1 1 1 0 30\n1 85 1 5 -10 1 1 1 0 30\n",
        "expected RawSize.* = 1 global .*found 2",
    ),
    (GOOD_HEAD.replace("10 10 1", "10 x 1") + COLS, r"line 2, header RawSize value 2: expected a number"),
    (GOOD_HEAD + "0 85 1 5 -10 1 1 1 0 30\n", r"line 4: expected a '# SEC ROT \.\.\.' column line"),
    (GOOD_HEAD + "# SEC ROT TX\n", r"line 4: expected columns"),
    ((GOOD_HEAD + COLS).encode() + b"0 85 1 5 -10 1 1 1 0 \xe930\n", "line 5: expected UTF-8 text"),
]


@pytest.mark.parametrize(("content", "message"), BAD_ALN)
def test_bad_aln(tmp_path: Path, content: str | bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message) as info:
        read_aln(_write(tmp_path / "bad.aln", content))
    assert "bad.aln" in str(info.value)
    assert isinstance(info.value, CryoxrError)


def test_bad_local_rows(tmp_path: Path) -> None:
    text = SAMPLE.replace("   2   1  1537.16  -1363.14      1.93      6.22   1.0\n", "")
    with pytest.raises(
        FormatError,
        match=r"tilts x NumPatches = 3 x 2 = 6 local alignment rows \(a '# Local Alignment' section\), found 5",
    ):
        read_aln(_write(tmp_path / "a.aln", text))
