"""AreTomo3 _CTF.txt and _TLT.txt: hand-worked rows, units, refusals (matching to .aln rows: test_io_aretomo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryoxr.errors import FormatError
from cryoxr.io.aretomo_ctf import pre_exposure, read_aretomo_ctf, read_aretomo_tilts

HEADER = "# Columns: #1 micrograph number; #2 - defocus 1 [A]; #3 - defocus 2; ...\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_ctf_units_and_columns(tmp_path: Path) -> None:
    # AreTomo3 writes the phase shift in radians: pi / 2 -> 90 degrees; defoci stay in Å
    table = read_aretomo_ctf(
        _write(tmp_path / "a_CTF.txt", HEADER + "1 35000.5 34000 -12.5 1.5707963267948966 0.03 8.2\n")
    )
    assert table.iloc[0].tolist() == pytest.approx([1, 35000.5, 34000.0, -12.5, 90.0, 0.03, 8.2])
    assert table.micrograph.dtype == np.int64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEADER + "1 35000 34000 0 0 0.03\n", r"line 2: expected 7 columns"),
        (
            HEADER + "2 35000 34000 0 0 0.03 8\n",
            r"expected micrograph numbers 1, 2, 3, \.\.\. in order, found 2 in row 1",
        ),
        (
            HEADER + "1 35000 nan 0 0 0.03 8\n",
            r"line 2, column 3 \(defocus 2 \(Å\)\): expected a finite number",
        ),
        (HEADER, r"expected rows of numbers"),
    ],
)
def test_bad_ctf_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(FormatError, match=message) as info:
        read_aretomo_ctf(_write(tmp_path / "bad_CTF.txt", text))
    assert "bad_CTF.txt" in str(info.value)


def test_tilt_table_widths_and_acquisition_base(tmp_path: Path) -> None:
    assert read_aretomo_tilts(_write(tmp_path / "one.txt", "-3\n0\n3\n")).columns.tolist() == ["tilt"]
    two = read_aretomo_tilts(_write(tmp_path / "two.txt", "-3 2\n0 1\n3 3\n"))
    assert two.acquisition_order.tolist() == [1, 0, 2]  # AreTomo3's 1-based index, 0-based here
    zero = read_aretomo_tilts(_write(tmp_path / "zero.txt", "-3 1 2.5\n0 0 2.5\n3 2 3.0\n"))
    assert zero.acquisition_order.tolist() == [1, 0, 2]  # already 0-based: kept
    assert zero.dose.tolist() == [2.5, 2.5, 3.0]
    with pytest.raises(FormatError, match=r"column 2 \(acquisition index\): expected each of 1\.\.3 once"):
        read_aretomo_tilts(_write(tmp_path / "dup.txt", "-3 1\n0 1\n3 2\n"))
    with pytest.raises(FormatError, match=r"expected at most 3 columns"):
        read_aretomo_tilts(_write(tmp_path / "wide.txt", "-3 1 2 9\n"))


def test_pre_exposure_sums_earlier_doses() -> None:
    # acquired 3rd, 1st, 2nd with doses 3, 3, 4 e/Å²: before them 3 + 4, 0, 3
    assert pre_exposure(np.array([2, 0, 1]), np.array([3.0, 3.0, 4.0])).tolist() == [7.0, 0.0, 3.0]
