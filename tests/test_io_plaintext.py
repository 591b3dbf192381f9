"""Shared text parsing (rows, complex cells), the pixel-size rule, and what writers cannot store."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest

import cryoxr
from cryoxr.errors import FormatError, InvalidValueError
from cryoxr.io.plaintext import (
    file_model,
    parse_numeric_rows,
    read_numeric_table,
    require_pixel_spacing,
    warn_unstored_columns,
)


def test_parse_numeric_rows_messages(tmp_path: Path) -> None:
    p = tmp_path / "f.txt"
    rows = parse_numeric_rows(p, [(1, "1 2"), (2, ""), (3, "3 4")], names=["a", "b"], what="pairs")
    assert rows.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(FormatError, match=r"f\.txt, line 3, column 2 \(b\): expected a number, found 'x'"):
        parse_numeric_rows(p, [(1, "1 2"), (3, "3 x")], names=["a", "b"], what="pairs")
    with pytest.raises(FormatError, match="found none"):
        parse_numeric_rows(p, [(1, "  ")], names=["a"], what="pairs")


def test_complex_cells_only_where_asked(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("1 0+1.2074e-06i\n")
    assert read_numeric_table(path, names=["a", "b"], what="t", complex_cells=True)[1].tolist() == [
        [1.0, 0.0]
    ]
    with pytest.raises(
        FormatError, match=r"line 1, column 2 \(b\): expected a number, found '0\+1\.2074e-06i'"
    ):
        read_numeric_table(path, names=["a", "b"], what="t")


def test_require_pixel_spacing_names_file_and_unit() -> None:
    with pytest.raises(
        InvalidValueError,
        match=r"^a\.tbl: Dynamo tables files store no pixel size; pass pixel_spacing= \(Å per pixel of the tomograms\)$",
    ):
        require_pixel_spacing(None, "a.tbl", "Dynamo tables", of="the tomograms")
    assert require_pixel_spacing(2, "a.xf", "IMOD .xf") == 2.0
    with pytest.raises(
        InvalidValueError, match=r"a\.xf: pixel_spacing must be a finite number of Å > 0, found -2"
    ):
        require_pixel_spacing(-2, "a.xf", "IMOD .xf")


def test_warn_unstored_columns_names_them_and_only_them() -> None:
    model = cryoxr.make_projection_model(
        rotation_y=[0.0], experiment_id="a", pixel_spacing=1.0, extra={"sec": [0], "dose": [3.0]}
    )
    with pytest.warns(
        UserWarning, match=r"^out\.aln cannot store column\(s\) \['dose'\]: they are not written$"
    ):
        assert warn_unstored_columns(model, ["sec"], "out.aln") == ["dose"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_unstored_columns(model, ["sec", "dose"], "out.aln") == []


def test_file_model_takes_the_stem_unless_given(tmp_path: Path) -> None:
    geometry = {"rotation_y": [0.0, 3.0]}
    df = file_model(
        tmp_path / "TS_07.aln",
        geometry,
        experiment_id=None,
        pixel_spacing=1.35,
        extra={},
        attrs={"format": "x"},
    )
    assert df.experiment_id.tolist() == ["TS_07", "TS_07"]
    assert df.source.tolist() == [str(tmp_path / "TS_07.aln")] * 2
    assert df.attrs == {"format": "x"}
    assert isinstance(df, pd.DataFrame)
    named = file_model(
        tmp_path / "TS_07.aln", geometry, experiment_id="b", pixel_spacing=1.35, extra={}, attrs={}
    )
    assert named.experiment_id.tolist() == ["b", "b"]
