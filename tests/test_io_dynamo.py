"""Dynamo .tbl / .doc <-> PoseSet: worked Euler matrix, eulerangles oracle, columns, origin, bad files."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import eulerangles
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

import cryoxr
from cryoxr.errors import CryoxrError, FileExistsNoOverwriteError, FormatError, InvalidValueError, WriteError
from cryoxr.io.dynamo import (
    DYNAMO_COLUMNS,
    read_dynamo_table,
    read_tomogram_map,
    write_dynamo_table,
    write_tomogram_map,
)


def _row(
    *,
    tag: int = 1,
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0),
    eulers: tuple[float, ...] = (0.0, 0.0, 0.0),
    tomo: int = 1,
    xyz: tuple[float, float, float] = (0.0, 0.0, 0.0),
    n: int = 36,
    apix: float = 1.0,
) -> list[float]:
    row = [0.0] * n
    row[0] = tag
    row[3:6] = shift
    row[6:9] = eulers
    row[19] = tomo
    row[23:26] = xyz
    if n >= 36:
        row[35] = apix
    return row


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _write_rows(path: Path, rows: list[list[float]]) -> Path:
    path.write_text("".join(" ".join(repr(float(v)) for v in r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_column_table_is_complete() -> None:
    assert [c.number for c in DYNAMO_COLUMNS] == list(range(1, 43))
    assert len({c.name for c in DYNAMO_COLUMNS}) == 42


def test_worked_euler_matrix(tmp_path: Path) -> None:
    # docs/CONVENTIONS.md §3: Dynamo tdrot=10, tilt=20, narot=30
    ds = read_dynamo_table(_write_rows(tmp_path / "a.tbl", [_row(eulers=(10, 20, 30))]))
    expected = [[0.7713, 0.6337, 0.0594], [-0.6131, 0.7146, 0.3368], [0.1710, -0.2962, 0.9397]]
    np.testing.assert_allclose(ds.cryo.rotation.as_matrix()[0], expected, atol=5e-5)


def test_eulerangles_oracle_random(tmp_path: Path, rng: np.random.Generator) -> None:
    eulers = np.stack(
        [rng.uniform(-180, 180, 200), rng.uniform(0, 180, 200), rng.uniform(-180, 180, 200)], -1
    )
    ds = read_dynamo_table(_write_rows(tmp_path / "a.tbl", [_row(eulers=tuple(e)) for e in eulers]))
    # eulerangles' Dynamo metadata: zxz, extrinsic, right-handed, passive -> orientation = its inverse
    passive = eulerangles.euler2matrix(eulers, axes="zxz", intrinsic=False, right_handed_rotation=True)
    np.testing.assert_allclose(ds.cryo.rotation.as_matrix(), np.transpose(passive, (0, 2, 1)), atol=1e-12)
    # and the RELION <-> Dynamo cross-check: RELION (10, 20, 30) == Dynamo (-60, 20, 100)
    assert np.allclose(
        eulerangles.convert_eulers(np.array([10.0, 20, 30]), "relion", "dynamo"), [-60, 20, 100]
    )
    relion = Rotation.from_euler("ZYZ", [10, 20, 30], degrees=True).inv()
    dyn = read_dynamo_table(_write_rows(tmp_path / "b.tbl", [_row(eulers=(-60, 20, 100))]))
    np.testing.assert_allclose(dyn.cryo.rotation.as_matrix()[0], relion.as_matrix(), atol=1e-12)
    # the writer inverts exactly: angles come back (tilt in (0, 180) keeps the triple unique)
    write_dynamo_table(ds, tmp_path / "c.tbl")
    written = np.loadtxt(tmp_path / "c.tbl")[:, 6:9]
    np.testing.assert_allclose(written, eulers, atol=1e-9)


@pytest.mark.parametrize(("origin", "offset"), [("none", 0.0), ("corner", 0.5), ("one_based", 1.0)])
def test_origin_keyword(tmp_path: Path, origin: str, offset: float) -> None:
    tbl = _write_rows(tmp_path / "a.tbl", [_row(xyz=(10, 20, 30), shift=(1, -1, 0.5))])
    ds = read_dynamo_table(tbl, origin=origin)  # type: ignore[arg-type]
    assert ds.position.values.tolist() == [[10 - offset, 20 - offset, 30 - offset]]
    assert ds["shift"].values.tolist() == [[1.0, -1.0, 0.5]]
    assert ds.attrs["origin"] == origin
    write_dynamo_table(ds, tmp_path / "b.tbl", origin=origin)  # type: ignore[arg-type]
    assert np.loadtxt(tmp_path / "b.tbl")[23:26].tolist() == [10.0, 20.0, 30.0]
    with pytest.raises(InvalidValueError, match="origin must be one of"):
        read_dynamo_table(tbl, origin="centre")  # type: ignore[arg-type]


def test_every_column_kept_and_written_back(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = rng.integers(1, 9, size=(5, 45)).astype(float)
    rows[:, 9] = rng.normal(size=5)  # cc, a float column
    rows[:, 7] = rng.uniform(1, 179, 5)  # tilt away from gimbal lock: angles come back as written
    rows[:, 35] = 2.7  # apix
    tbl = _write_rows(tmp_path / "a.tbl", rows.tolist())
    ds = read_dynamo_table(tbl)
    assert ds.attrs["n_columns"] == 45
    assert ds.attrs["pixel_spacing"] == 2.7
    for name in ("tag", "aligned", "cc", "class", "annotation", "otag", "apix", "eig2", "col33", "col45"):
        assert name in ds.data_vars, name
    assert ds["tag"].dtype == np.int64
    assert ds["cc"].dtype == np.float64
    assert ds.experiment_id.values.tolist() == [str(int(t)) for t in rows[:, 19]]
    write_dynamo_table(ds, tmp_path / "b.tbl")
    np.testing.assert_allclose(np.loadtxt(tmp_path / "b.tbl"), rows, atol=1e-9)


def test_defaults_when_writing_foreign_poses(tmp_path: Path) -> None:
    poses = cryoxr.make_poseset(
        np.zeros((2, 3)), experiment_id="7", pixel_spacing=1.35, extra={"rlnClassNumber": [1, 2]}
    )
    write_dynamo_table(poses, tmp_path / "a.tbl")
    table = np.loadtxt(tmp_path / "a.tbl")
    assert table.shape == (2, 43)  # Dynamo's 42, then the user's column (issue 22: kept, not dropped)
    assert table[:, 35].tolist() == [1.35, 1.35]  # apix carries the pixel size
    assert table[:, 0].tolist() == [1, 2]  # tag
    assert table[:, 1].tolist() == [1, 1]  # aligned
    assert table[:, 19].tolist() == [7, 7]  # tomo
    assert table[:, 35 - 1].tolist() == [0, 0]  # sref
    assert table[:, 42].tolist() == [1, 2]  # rlnClassNumber
    assert read_dynamo_table(tmp_path / "a.tbl")["col43"].values.tolist() == [1, 2]


def test_tomogram_map(tmp_path: Path) -> None:
    doc = tmp_path / "t.doc"
    write_tomogram_map({3: "/data/Tomo Ω 3.mrc", 1: "TS_01"}, doc)
    assert read_tomogram_map(doc) == {1: "TS_01", 3: "/data/Tomo Ω 3.mrc"}
    tbl = _write_rows(tmp_path / "a.tbl", [_row(tomo=3), _row(tomo=1), _row(tomo=3)])
    ds = read_dynamo_table(tbl, tomogram_map=doc)
    assert ds.experiment_id.values.tolist() == ["/data/Tomo Ω 3.mrc", "TS_01", "/data/Tomo Ω 3.mrc"]
    assert ds.tomo.values.tolist() == [3, 1, 3]
    assert read_dynamo_table(tbl, tomogram_map={1: "a", 3: "b"}).experiment_id.values.tolist() == [
        "b",
        "a",
        "b",
    ]
    with pytest.raises(
        FormatError, match=r"line 2, column 20 \(tomo\): expected a tomogram number of the map"
    ):
        read_dynamo_table(tbl, tomogram_map={3: "x"})
    with pytest.raises(InvalidValueError, match="one-line name"):
        write_tomogram_map({1: " padded"}, tmp_path / "u.doc")
    (tmp_path / "bad.doc").write_text("one TS_01\n")
    with pytest.raises(
        FormatError, match=r"bad\.doc, line 1, column 1 \(tomogram number\): expected an integer"
    ):
        read_tomogram_map(tmp_path / "bad.doc")


def test_names_need_a_map(tmp_path: Path) -> None:
    poses = cryoxr.make_poseset(np.zeros((2, 3)), experiment_id=["TS_01", "TS_02"], pixel_spacing=1.0)
    with pytest.raises(InvalidValueError, match="pass tomogram_map"):
        write_dynamo_table(poses, tmp_path / "a.tbl")
    assert not (tmp_path / "a.tbl").exists()
    clash = poses.assign(tomo=("particle", np.array([1, 1])))
    with pytest.raises(InvalidValueError, match="one experiment_id and back"):
        write_dynamo_table(clash, tmp_path / "a.tbl", tomogram_map=tmp_path / "a.doc")


def test_overwrite_refused(tmp_path: Path) -> None:
    poses = cryoxr.make_poseset(np.zeros((1, 3)), experiment_id=["TS_01"], pixel_spacing=1.0)
    (tmp_path / "a.doc").write_text("old\n")
    with pytest.raises(FileExistsNoOverwriteError):
        write_dynamo_table(poses, tmp_path / "a.tbl", tomogram_map=tmp_path / "a.doc")
    assert not (tmp_path / "a.tbl").exists()
    write_dynamo_table(poses, tmp_path / "a.tbl", tomogram_map=tmp_path / "a.doc", overwrite=True)
    assert (tmp_path / "a.doc").read_text() == "1 TS_01\n"


def test_failed_write_replaces_neither_table_nor_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tbl, doc = tmp_path / "a.tbl", tmp_path / "a.doc"
    old = cryoxr.make_poseset(np.zeros((1, 3)), experiment_id=["TS_01"], pixel_spacing=1.0)
    write_dynamo_table(old, tbl, tomogram_map=doc)
    before = (tbl.read_bytes(), doc.read_bytes())
    real_write_text = Path.write_text

    def disk_full_on_map(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.name.startswith(".a.doc"):  # the map's temporary, written after the table's
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full_on_map)
    new = cryoxr.make_poseset(np.ones((2, 3)), experiment_id=["TS_02", "TS_03"], pixel_spacing=1.0)
    with pytest.raises(WriteError, match=r"a\.doc: writing failed"):
        write_dynamo_table(new, tbl, tomogram_map=doc, overwrite=True)
    assert (tbl.read_bytes(), doc.read_bytes()) == before  # the table was not replaced alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.doc", "a.tbl"]  # no temporaries


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=1, max_size=12
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 30),
    tomos=st.lists(names, min_size=1, max_size=4, unique=True),
    origin=st.sampled_from(["none", "corner", "one_based"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_roundtrip_hypothesis(
    tmp_path_factory: pytest.TempPathFactory, n: int, tomos: list[str], origin: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    folder = tmp_path_factory.mktemp("dyn")
    ids = [tomos[i] for i in rng.integers(0, len(tomos), n)]
    poses = cryoxr.make_poseset(
        rng.uniform(0, 4000, (n, 3)),
        shift=rng.normal(0, 3, (n, 3)),
        orientation=Rotation.random(n, random_state=seed),
        experiment_id=ids,
        pixel_spacing=1.35,
        extra={"cc": rng.normal(size=n), "class": rng.integers(1, 5, n)},
    )
    write_dynamo_table(poses, folder / "p.tbl", tomogram_map=folder / "p.doc", origin=origin)  # type: ignore[arg-type]
    back = read_dynamo_table(folder / "p.tbl", tomogram_map=folder / "p.doc", origin=origin)  # type: ignore[arg-type]
    np.testing.assert_allclose(back.position, poses.position, atol=1e-9, rtol=0)
    np.testing.assert_allclose(back["shift"], poses["shift"], atol=1e-12, rtol=0)
    angle = (back.cryo.rotation * poses.cryo.rotation.inv()).magnitude()
    np.testing.assert_allclose(np.rad2deg(angle), 0.0, atol=1e-9)
    assert back.experiment_id.values.tolist() == ids
    np.testing.assert_array_equal(back["class"], poses["class"])
    np.testing.assert_allclose(back["cc"], poses["cc"], rtol=0, atol=0)


BAD_TBL = [
    (" ".join(["1"] * 20) + "\n", "line 1: expected at least 26 columns .*found 20"),
    (" ".join(["1"] * 35) + "\n" + " ".join(["1"] * 34) + "\n", "line 2: expected 35 columns .*found 34"),
    (
        " ".join(["1"] * 6 + ["abc"] + ["1"] * 28) + "\n",
        r"line 1, column 7 \(tdrot\): expected a number, found 'abc'",
    ),
    (
        " ".join(["1"] * 7 + ["NaN"] + ["1"] * 27) + "\n",
        r"line 1, column 8 \(tilt\): expected a finite number",
    ),
    ((" ".join(["1"] * 35) + "\n").encode() + b"\xc3\x28 1\n", r"line 2: expected UTF-8 text"),
    (" ".join(["1"] * 19 + ["1.5"] + ["1"] * 15) + "\n", r"line 1, column 20 \(tomo\): expected an integer"),
    # blank lines count: the message names the file's line, not the data row
    (
        "\n" + " ".join(["1"] * 35) + "\n \n" + " ".join(["1"] * 19 + ["1.5"] + ["1"] * 15) + "\n",
        r"line 4, column 20 \(tomo\): expected an integer",
    ),
]


@pytest.mark.parametrize(("content", "message"), BAD_TBL)
def test_bad_tables(tmp_path: Path, content: str | bytes, message: str) -> None:
    tbl = tmp_path / "bad.tbl"
    if isinstance(content, bytes):
        tbl.write_bytes(content)
    else:
        tbl.write_text(content)
    with pytest.raises(FormatError, match=message) as info:
        read_dynamo_table(tbl)
    assert "bad.tbl" in str(info.value)
    assert isinstance(info.value, CryoxrError)


def test_empty_table_is_an_empty_set(tmp_path: Path) -> None:
    empty = cryoxr.make_poseset(np.zeros((0, 3)), experiment_id="TS_01", pixel_spacing=1.35)
    write_dynamo_table(empty, tmp_path / "e.tbl", tomogram_map=tmp_path / "e.doc")
    assert (tmp_path / "e.tbl").read_text().strip() == ""
    with pytest.raises(
        InvalidValueError,
        match=r"e\.tbl: a Dynamo table with no rows holds no pixel size; pass pixel_spacing=",
    ):
        read_dynamo_table(tmp_path / "e.tbl", tomogram_map=tmp_path / "e.doc")
    back = read_dynamo_table(tmp_path / "e.tbl", tomogram_map=tmp_path / "e.doc", pixel_spacing=1.35)
    assert back.sizes["particle"] == 0
    assert read_dynamo_table(tmp_path / "e.tbl", pixel_spacing=1.35).attrs["pixel_spacing"] == 1.35


def test_chunked_poses_and_chunked_read(tmp_path: Path, rng: np.random.Generator) -> None:
    poses = cryoxr.make_poseset(
        rng.uniform(0, 100, (50, 3)),
        experiment_id="2",
        pixel_spacing=1.0,
        chunks=20,
        extra={"cc": rng.normal(size=50)},
    )
    write_dynamo_table(poses, tmp_path / "a.tbl")
    back = read_dynamo_table(tmp_path / "a.tbl", chunks=20)
    assert back.chunks["particle"] == (20, 20, 10)
    np.testing.assert_allclose(back.position.values, poses.position.values, atol=1e-12)
    np.testing.assert_array_equal(back["cc"].values, poses["cc"].values)


# --------------------------------------------------------------------------------------
# real tables (issue 15) and refusals (issue 22)
# --------------------------------------------------------------------------------------
#: rows 1, 2, 7 and 9 of test/data/t_complex.tbl (41 columns, MATLAB complex cells in column 28
#: "daxis") and line 587 (tomogram 4), and the first lines of test/data/tmap_complex.doc, from
#: the source distribution of dynamotable 0.3.0 (BSD-3-Clause, (c) 2020 CCP-EM); the full files
#: read to the same values as dynamotable.read (checked by hand, all 42 and 35 columns)
REAL_COMPLEX_TBL = """\
2 1 1 -1.4197 0.57826 1.5785 -44.606 4.5303 -14.579 0.052575 0 0 0 0 0 0 0 0 0 1 0 0 0 1018.9 759.36 641.59 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0
4 1 1 -1.4208 0.58177 0.57748 -60.966 7.3549 61.67 0.050439 0 0 0 0 0 0 0 0 0 1 0 0 0 1006.9 751.05 641.53 0 0+1.2074e-06i 0 0 0 0 0 1 0 0 0 0 0 0 0
14 1 1 -1.416 -0.42004 -0.58151 151.52 6.5871 -151.3 0.10674 0 0 0 0 0 0 0 0 0 1 0 0 0 1057.2 725.07 644.18 0 8.5377e-07 0 0 0 0 0 1 0 0 0 0 0 0 0
18 1 1 -0.41975 0.13167 2.5774 136.93 3.4496 -136.09 0.076749 0 0 0 0 0 0 0 0 0 1 0 0 0 1055.5 753.69 645.33 0 0+1.2074e-06i 0 0 0 0 0 1 0 0 0 0 0 0 0
1190 1 1 -1.4198 -0.41486 -0.65825 -46.936 83.851 160.51 0.086898 0 0 0 0 0 0 0 0 0 4 0 0 0 401.63 748.71 493.31 0 0+1.7075e-06i 0 0 0 0 0 1 0 0 0 0 0 0 0
"""
REAL_TMAP = "1\ttomo_ts01.mrc_15.00Apx.mrc\n2\ttomo_ts02.mrc_15.00Apx.mrc\n4\ttomo_ts04.mrc_15.00Apx.mrc\n"
#: rows 1-3 of test/data/t_double.tbl of the same distribution (35 columns, no apix)
REAL_DOUBLE_TBL = """\
1 1 0 2.5178 -3.523 2.1043 175.66 90.681 -129.51 0.15858 0.30415 0 1 -60 60 0 0 0 0 1 1 9 0 141.28 114.71 163.08 0 0 0 0 0 0 0 0 5
2 1 0 3.2463 1.4558 0.36336 -118.64 88.127 -86.353 0.15606 0.1739 0 1 -60 60 0 0 0 0 1 2 2 0 161.92 97.211 121.46 0 0 0 0 0 0 0 0 4
3 1 0 -2.9841 -3.6606 2.5777 -87.195 157.87 -148.75 0.26147 0.39155 0 1 -60 60 0 0 0 0 1 3 2 0 22.251 289.97 35.935 0 0 0 0 0 0 0 0 4
"""


def test_real_dynamotable_files_read(tmp_path: Path) -> None:
    tbl = _write(tmp_path / "t_complex.tbl", REAL_COMPLEX_TBL)
    doc = _write(tmp_path / "tmap_complex.doc", REAL_TMAP)
    with pytest.raises(InvalidValueError, match=r"t_complex\.tbl: a Dynamo table with apix values \[0\.0\]"):
        read_dynamo_table(tbl, tomogram_map=doc)  # its apix column is 0: no pixel size to take
    ds = read_dynamo_table(tbl, tomogram_map=doc, pixel_spacing=15.0)
    assert ds.sizes["particle"] == 5
    assert ds.attrs["n_columns"] == 41
    # the complex cells read as their real part (0), the real 8.5377e-07 as itself
    assert ds["daxis"].values.tolist() == [0.0, 0.0, 8.5377e-07, 0.0, 0.0]
    assert ds["tag"].values.tolist() == [2, 4, 14, 18, 1190]
    assert ds.position.values[1].tolist() == [1006.9, 751.05, 641.53]
    assert ds["shift"].values[0].tolist() == [-1.4197, 0.57826, 1.5785]
    assert ds.experiment_id.values.tolist() == ["tomo_ts01.mrc_15.00Apx.mrc"] * 4 + [
        "tomo_ts04.mrc_15.00Apx.mrc"
    ]
    expected = Rotation.from_euler("zxz", [-44.606, 4.5303, -14.579], degrees=True).inv()
    assert (ds.cryo.rotation[0] * expected.inv()).magnitude() < 1e-12
    double = read_dynamo_table(_write(tmp_path / "t_double.tbl", REAL_DOUBLE_TBL), pixel_spacing=10.0)
    assert double["class"].values.tolist() == [9, 2, 2]
    assert double["sref"].values.tolist() == [5, 4, 4]


@pytest.mark.parametrize(
    ("cell", "value"),
    [("0+1.2074e-06i", 0.0), ("-3.5-2e-07i", -3.5), ("2.5+1e-4j", 2.5), ("1e-06i", 0.0), ("+7-0.001i", 7.0)],
)
def test_complex_cells_read_as_real_part(tmp_path: Path, cell: str, value: float) -> None:
    row = (
        " ".join(map(repr, _row(xyz=(1, 2, 3))[:9]))
        + f" {cell} "
        + " ".join(map(repr, _row(xyz=(1, 2, 3))[10:]))
    )
    ds = read_dynamo_table(_write(tmp_path / "a.tbl", row + "\n"))
    assert ds["cc"].values.tolist() == [value]


def test_complex_cell_with_a_real_imaginary_part_is_refused(tmp_path: Path) -> None:
    row = _row()
    text = " ".join(map(repr, row[:27])) + " 1+0.5i " + " ".join(map(repr, row[28:]))
    with pytest.raises(
        FormatError, match=r"a\.tbl, line 1, column 28: expected a real number .* found '1\+0\.5i'"
    ):
        read_dynamo_table(_write(tmp_path / "a.tbl", text + "\n"))


@pytest.mark.parametrize("tomo", [0, -3])
def test_tomogram_numbers_below_one_are_refused(tmp_path: Path, tomo: int) -> None:
    tbl = _write_rows(tmp_path / "a.tbl", [_row(tomo=1), _row(tomo=tomo)])
    with pytest.raises(
        FormatError, match=rf"a\.tbl, line 2, column 20 \(tomo\): expected an integer >= 1 .*{tomo}"
    ):
        read_dynamo_table(tbl)
    with pytest.raises(
        FormatError, match=r"t\.doc, line 1, column 1 \(tomogram number\): expected a number >= 1"
    ):
        read_tomogram_map(_write(tmp_path / "t.doc", f"{tomo} TS_00\n"))
    with pytest.raises(InvalidValueError, match="numbers tomograms from 1"):
        write_tomogram_map({tomo: "TS_00"}, tmp_path / "u.doc")
    poses = cryoxr.make_poseset(
        np.zeros((1, 3)), experiment_id=str(tomo), pixel_spacing=1.0, extra={"tomo": [tomo]}
    )
    with pytest.raises(InvalidValueError, match="tomo must hold integers >= 1"):
        write_dynamo_table(poses, tmp_path / "b.tbl")
    # an experiment id "0" is no Dynamo number: numbered 1 with the map, never written as 0
    named = cryoxr.make_poseset(np.zeros((1, 3)), experiment_id=str(tomo), pixel_spacing=1.0)
    with pytest.raises(InvalidValueError, match="pass tomogram_map="):
        write_dynamo_table(named, tmp_path / "c.tbl")
    write_dynamo_table(named, tmp_path / "c.tbl", tomogram_map=tmp_path / "c.doc")
    back = read_dynamo_table(tmp_path / "c.tbl", tomogram_map=tmp_path / "c.doc")
    assert back.tomo.values.tolist() == [1]
    assert back.experiment_id.values.tolist() == [str(tomo)]


def test_pixel_spacing_from_apix_or_required(tmp_path: Path) -> None:
    assert read_dynamo_table(_write_rows(tmp_path / "a.tbl", [_row(apix=2.7)])).attrs["pixel_spacing"] == 2.7
    for name, rows in (
        ("none.tbl", [_row(n=35)]),
        ("zero.tbl", [_row(apix=0)]),
        ("mixed.tbl", [_row(apix=1), _row(apix=2)]),
    ):
        tbl = _write_rows(tmp_path / name, rows)
        with pytest.raises(InvalidValueError, match=rf"{name}: a Dynamo table with .* pass pixel_spacing="):
            read_dynamo_table(tbl)
        assert read_dynamo_table(tbl, pixel_spacing=5.0).attrs["pixel_spacing"] == 5.0


def test_user_columns_kept_after_dynamos_and_text_warned(tmp_path: Path) -> None:
    poses = cryoxr.make_poseset(
        np.zeros((2, 3)),
        experiment_id="3",
        pixel_spacing=2.0,
        extra={
            "score": [0.5, 0.25],
            "col50": [7.0, 8.0],
            "rlnMicrographName": ["a.mrc", "b.mrc"],
            "eig1": [1.0, 2.0],
        },
    )
    with pytest.warns(UserWarning, match=r"data variable\(s\) \['rlnMicrographName'\] are not written"):
        write_dynamo_table(poses, tmp_path / "a.tbl")
    table = np.loadtxt(tmp_path / "a.tbl")
    assert table.shape == (2, 51)  # col50 stays in 50, the user's score after it
    assert table[:, 40].tolist() == [1.0, 2.0]  # eig1 in its own column 41
    assert table[:, 49].tolist() == [7.0, 8.0]
    assert table[:, 50].tolist() == [0.5, 0.25]
    back = read_dynamo_table(tmp_path / "a.tbl")
    assert back["col51"].values.tolist() == [0.5, 0.25]
