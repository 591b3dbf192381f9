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
from cryoxr.io.imod import read_imod_alignment, write_imod_alignment

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
    """docs/CONVENTIONS.md §8: ROT 85, TX 5, TY -10 gives the worked xf line, as AreTomo2's CSaveXF computes it."""
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


# --------------------------------------------------------------------------------------
# pixel size, per-tilt columns, side files (issue 15) and header refusals (issue 22)
# --------------------------------------------------------------------------------------
def test_pixel_spacing_is_required_never_invented(tmp_path: Path) -> None:
    aln = _write(tmp_path / "TS_01.aln", SAMPLE)
    with pytest.raises(
        InvalidValueError,
        match=r"TS_01\.aln: AreTomo \.aln files store no pixel size; pass pixel_spacing= \(Å per pixel of the tilt images\)",
    ):
        read_aretomo_alignment(aln)
    assert read_aretomo_alignment(aln, pixel_spacing=1.35).pixel_spacing.unique().tolist() == [1.35]


def test_per_tilt_columns_from_the_header(tmp_path: Path) -> None:
    df = read_aln(_write(tmp_path / "TS_01.aln", SAMPLE))
    assert df.image_size_x.tolist() == [4096] * 3
    assert df.image_size_y.tolist() == [4096] * 3
    assert df.tilt_image_center_x.tolist() == [2047.5] * 3  # AreTomo: (n - 1) / 2
    assert df.excluded.tolist() == [False] * 3  # the dark frame has no row


SIDE_CTF = """# Columns: #1 micrograph number; #2 - defocus 1 [A]; #3 - defocus 2; #4 - azimuth of astigmatism; #5 - additional phase shift [radian]; #6 - cross correlation; #7 - spacing (in Angstroms) up to which CTF rings were fit successfully
   1   40000.00  39000.00     10.00      0.00    0.0100   20.0000
   2   35000.00  34000.00     40.00      0.52    0.0312    8.2000
   3   35100.00  34100.00     41.00      0.00    0.0300    8.5000
   4   35200.00  34200.00     42.00      0.00    0.0290    8.6000
"""
#: the sample's 4 sections: tilt, acquisition index (1-based), dose of the image
SIDE_TLT = "-68.00  4  3.0\n-27.71  2  3.0\n30.00  1  2.0\n33.00  3  3.5\n"


def test_aretomo3_ctf_and_tilt_files(tmp_path: Path) -> None:
    aln = _write(tmp_path / "TS_01.aln", SAMPLE)
    ctf = _write(tmp_path / "TS_01_CTF.txt", SIDE_CTF)
    tlt = _write(tmp_path / "TS_01_TLT.txt", SIDE_TLT)
    df = read_aln(aln, ctf=ctf, tilts=tlt)
    # 4 CTF rows for 3 aligned tilts + 1 dark frame (index 0 in the tilt-sorted series): row 1 dropped
    assert df.defocus_u.tolist() == [35000.0, 35100.0, 35200.0]
    assert df.defocus_v.tolist() == [34000.0, 34100.0, 34200.0]
    assert df.defocus_angle.tolist() == [40.0, 41.0, 42.0]
    assert df.phase_shift.tolist() == pytest.approx([np.rad2deg(0.52), 0.0, 0.0])
    assert df.aretomo_ctf_resolution.tolist() == [8.2, 8.5, 8.6]
    # sections 1, 2, 3 were acquired 2nd, 1st, 3rd; doses 3, 2, 3.5 (section 0, the dark one, last)
    assert df.acquisition_order.tolist() == [1, 0, 2]
    assert df.pre_exposure.tolist() == [2.0, 0.0, 5.0]
    assert df.aretomo_dose.tolist() == [3.0, 2.0, 3.5]
    # a CTF file of the aligned tilts only matches them in order
    lines = SIDE_CTF.splitlines(keepends=True)
    renumbered = [lines[0], *(f"   {k}" + line[4:] for k, line in enumerate(lines[2:], 1))]
    three = _write(tmp_path / "three_CTF.txt", "".join(renumbered))
    assert read_aln(aln, ctf=three).defocus_u.tolist() == [35000.0, 35100.0, 35200.0]
    two = _write(tmp_path / "two_CTF.txt", "".join(SIDE_CTF.splitlines(keepends=True)[:3]))
    with pytest.raises(
        FormatError,
        match=r"two_CTF\.txt: expected a CTF row per aligned tilt .* \(3\) or per tilt \(4\), found 2",
    ):
        read_aln(aln, ctf=two)
    with pytest.raises(FormatError, match=r"expected each of 1\.\.4 once"):
        read_aln(aln, tilts=_write(tmp_path / "bad_TLT.txt", SIDE_TLT.replace("  4  3.0", "  2  3.0")))
    with pytest.raises(FormatError, match=r"expected a row per section .* \(4\), found 3"):
        read_aln(aln, tilts=_write(tmp_path / "short_TLT.txt", "0 1 1\n0 2 1\n0 3 1\n"))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "RawSize = 4096 4096 4",
            "RawSize = -64 4096 4",
            r"line 2, header RawSize value 1: expected an integer in \[1, 2\.14748e\+09\], found '-64'",
        ),
        (
            "RawSize = 4096 4096 4",
            "RawSize = 0 4096 4",
            r"header RawSize value 1: expected an integer in \[1, .*found '0'",
        ),
        (
            "RawSize = 4096 4096 4",
            "RawSize = 1e20 4096 4",
            r"header RawSize value 1: expected an integer .*found '1e20'",
        ),
        ("# Local Alignment\n", "", r"expected tilts x NumPatches = 3 x 2 = 6 local alignment rows"),
        (
            "NumPatches = 2",
            "NumPatches = 0",
            r"expected tilts x NumPatches = 3 x 0 = 0 local alignment rows .*found 6",
        ),
        (
            "DarkFrame =     0    0",
            "DarkFrame =     0    2",
            r"expected the SEC values and DarkFrame sections to be distinct",
        ),
        (
            "\n    3    84.9000",
            "\n    9    84.9000",
            r"sections of the input stack \(0\.\.3\), found SEC \[1, 2, 9\]",
        ),
        (
            "  33.00\n",
            "  1e308\n",
            r"line 11, column 10 \(TILT\): expected an angle within ±360 deg, found 1e\+308",
        ),
    ],
)
def test_nonsense_headers_are_refused(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in SAMPLE
    # NumPatches = 2 but no local section at all: cut the file before it
    text = SAMPLE.split(old)[0] if old == "# Local Alignment\n" else SAMPLE.replace(old, new)
    with pytest.raises(FormatError, match=message) as info:
        read_aln(_write(tmp_path / "bad.aln", text))
    assert "bad.aln" in str(info.value)


def test_excluded_rows_become_dark_frames(tmp_path: Path) -> None:
    model = cryoxr.make_projection_model(
        rotation_y=[-3.0, 0.0, 3.0, 6.0],
        rotation_z=85.0,
        experiment_id="a",
        pixel_spacing=1.0,
        extra={"excluded": [False, True, False, False], "image_size_x": 100, "image_size_y": 80},
    )
    write_aretomo_alignment(model, tmp_path / "a.aln")  # RawSize from the size columns
    text = (tmp_path / "a.aln").read_text()
    assert "# RawSize = 100 80 4\n" in text
    assert "# DarkFrame = 1 1 0.0\n" in text  # frame 1 in tilt order, section 1, tilt 0
    back = read_aln(tmp_path / "a.aln")
    assert back.rotation_y.tolist() == [-3.0, 3.0, 6.0]
    assert back.sec.tolist() == [0, 2, 3]
    assert back.attrs["aretomo"]["dark_frames"] == [[1, 1, 0.0]]


def test_writer_warns_about_columns_an_aln_cannot_hold(tmp_path: Path) -> None:
    df = read_aln(_write(tmp_path / "TS_01.aln", SAMPLE), ctf=_write(tmp_path / "TS_01_CTF.txt", SIDE_CTF))
    with pytest.warns(
        UserWarning, match=r"b\.aln \(AreTomo \.aln\) cannot store column\(s\) \['defocus_u', 'defocus_v'"
    ):
        write_aretomo_alignment(df, tmp_path / "b.aln")
    fewer = df.iloc[:2]
    with pytest.warns(UserWarning, match=r"local alignment rows do not fit its 2 tilts x 2 patches"):
        write_aretomo_alignment(
            fewer.drop(columns=[c for c in df.columns if "ctf" in c or "defocus" in c or c == "phase_shift"]),
            tmp_path / "c.aln",
        )


def test_imod_views_become_sections(tmp_path: Path) -> None:
    xf = _write(tmp_path / "a.xf", "1 0 0 1 0 0\n1 0 0 1 0 0\n1 0 0 1 0 0\n")
    model = read_imod_alignment(xf, _write(tmp_path / "a.tlt", "-3\n0\n3\n"), pixel_spacing=1.0)
    # tilt 0 left out (excluded): its view 1 becomes the dark section, views 0 and 2 the SEC values
    model["excluded"] = [False, True, False]
    write_aretomo_alignment(model, tmp_path / "a.aln", image_size=(64, 64))
    back = read_aln(tmp_path / "a.aln")
    assert back.sec.tolist() == [0, 2]
    assert back.attrs["aretomo"]["dark_frames"] == [[1, 1, 0.0]]
