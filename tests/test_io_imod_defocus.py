"""IMOD ctfplotter .defocus files (versions 2 and 3) <-> per-tilt CTF columns: hand-worked lines, refusals."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

import cryoxr
from cryoxr.errors import FormatError, InvalidValueError
from cryoxr.io.imod import read_imod_alignment, write_imod_alignment
from cryoxr.io.imod_defocus import defocus_file_lines, read_imod_defocus

read_imod = functools.partial(read_imod_alignment, pixel_spacing=1.0)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_version_2_single_defocus(tmp_path: Path) -> None:
    # ctfplotter 'version 2': the first line carries the version; nm -> Å
    path = _write(tmp_path / "a.defocus", "1\t1\t-60.00\t-60.00\t4185\t2\n2\t2\t-57.00\t-57.00\t4170\n")
    table = read_imod_defocus(path, n_views=3)
    assert table.columns.tolist() == ["defocus_u", "defocus_v"]
    assert table.defocus_u.tolist()[:2] == [41850.0, 41700.0]
    assert table.defocus_v.tolist()[:2] == [41850.0, 41700.0]  # no astigmatism: the one defocus
    assert np.isnan(table.defocus_u[2])  # view 3 has no value of its own: NaN, not interpolated


def test_version_3_astigmatism_phase_in_radians_and_cut_on(tmp_path: Path) -> None:
    # flags 1 + 4 + 8 + 32: astigmatism (degrees), phase shift in radians, cut-on frequency;
    # views 3..5 -> the middle view (2 + 4) // 2 = 3 (0-based), as ctfphaseflip assigns it
    path = _write(
        tmp_path / "a.defocus",
        "45 0 0.0 0.0 0.0 3\n3 5 -6.0 0.0 3500.5 3400.25 45.0 1.5707963267948966 0.02\n",
    )
    table = read_imod_defocus(path, n_views=6)
    row = table.iloc[3]
    assert row.tolist() == pytest.approx([35005.0, 34002.5, 45.0, 90.0, 0.02])
    assert table.columns.tolist() == [
        "defocus_u",
        "defocus_v",
        "defocus_angle",
        "phase_shift",
        "imod_cut_on_frequency",
    ]
    assert table.drop(index=3).isna().all(axis=None)
    radians = _write(tmp_path / "b.defocus", "3 0 0.0 0.0 0.0 3\n1 1 0 0 3500 3400 0.7853981633974483\n")
    assert read_imod_defocus(radians).defocus_angle.tolist() == pytest.approx([45.0])


def test_a_later_line_for_the_same_range_replaces_the_earlier(tmp_path: Path) -> None:
    # ctfplotter appends when a fit is saved again; ctfphaseflip keeps the last
    path = _write(tmp_path / "a.defocus", "1 1 -3 -3 3000 2\n1 1 -3 -3 3100\n")
    assert read_imod_defocus(path).defocus_u.tolist() == [31000.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 1 -3 -3 3000\n", r"line 1: expected a version number as sixth field .* off by one"),
        ("1 1 -3 -3 3000 7\n", r"line 1, field 6 \(version\): expected 2 or 3, found '7'"),
        ("64 0 0 0 0 3\n1 1 0 0 3000\n", r"line 1, field 1 \(flags\): expected an integer 0\.\.63"),
        ("1 0 0 0 0 3\n1 1 0 0 3000\n", r"line 2: expected 7 columns"),
        (
            "1 0 0 0 0 3\n0 0 0 0 3000 3000 0\n",
            r"line 2: expected view numbers 1 <= start <= end <= 4, found \[0\.0, 0\.0\]",
        ),
        ("1 0 0 0 0 3\n3 2 0 0 3000 3000 0\n", r"line 2: expected view numbers"),
        ("1 0 0 0 0 3\n9 9 0 0 3000 3000 0\n", r"line 2: expected view numbers 1 <= start <= end <= 4"),
        (
            "1 0 0 0 0 3\n1 3 0 0 3000 3000 0\n2 2 0 0 3000 3000 0\n",
            r"line 3: expected one range per middle view",
        ),
        (
            "1 0 0 0 0 3\n1 1 0 0 nan 3000 0\n",
            r"line 2, column 5 \(defocus1 \(nm\)\): expected a finite number",
        ),
    ],
)
def test_bad_defocus_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(FormatError, match=message) as info:
        read_imod_defocus(_write(tmp_path / "bad.defocus", text), n_views=4)
    assert "bad.defocus" in str(info.value)


def test_read_with_the_alignment_and_write_back(tmp_path: Path) -> None:
    xf = _write(tmp_path / "a.xf", "1 0 0 1 0 0\n1 0 0 1 0 0\n1 0 0 1 0 0\n")
    tlt = _write(tmp_path / "a.tlt", "-3\n0\n3\n")
    defocus = _write(
        tmp_path / "a.defocus", "5 0 0 0 0 3\n1 1 -3 -3 3500 3400 40 10\n3 3 3 3 3520 3390 42 12\n"
    )
    df = read_imod(xf, tlt, defocus=defocus)
    assert df.defocus_u.tolist()[::2] == [35000.0, 35200.0]
    assert np.isnan(df.defocus_u[1])
    assert df.phase_shift.tolist()[::2] == [10.0, 12.0]
    with pytest.raises(
        FormatError,
        match=r"a\.defocus, line 3: expected view numbers 1 <= start <= end <= 2, found \[3\.0, 3\.0\]",
    ):
        read_imod(
            _write(tmp_path / "b.xf", "1 0 0 1 0 0\n1 0 0 1 0 0\n"),
            _write(tmp_path / "b.tlt", "0\n1\n"),
            defocus=defocus,
        )
    write_imod_alignment(df, tmp_path / "c.xf", tmp_path / "c.tlt", defocus=tmp_path / "c.defocus")
    assert (tmp_path / "c.defocus").read_text().splitlines() == [
        "5 0 0.0 0.0 0.0 3",
        "1 1 -3.0 -3.0 3500.0 3400.0 40.0 10.0",
        "3 3 3.0 3.0 3520.0 3390.0 42.0 12.0",
    ]
    back = read_imod(tmp_path / "c.xf", tmp_path / "c.tlt", defocus=tmp_path / "c.defocus")
    for column in ("defocus_u", "defocus_v", "defocus_angle", "phase_shift"):
        np.testing.assert_array_equal(back[column].to_numpy(), df[column].to_numpy())


def test_writer_needs_an_angle_for_astigmatism() -> None:
    model = cryoxr.make_projection_model(
        rotation_y=[0.0],
        experiment_id="a",
        pixel_spacing=1.0,
        extra={"defocus_u": [3e4], "defocus_v": [2.9e4]},
    )
    with pytest.raises(InvalidValueError, match=r"differ .* no defocus_angle column"):
        defocus_file_lines(model, "a.defocus")
    with pytest.raises(InvalidValueError, match=r"needs column\(s\) \['defocus_v'\]"):
        defocus_file_lines(model.drop(columns="defocus_v"), "a.defocus")
