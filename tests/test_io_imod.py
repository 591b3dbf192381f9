"""IMOD .xf/.tlt/.xtilt <-> ProjectionModel: worked numbers, IMOD's geometry, oracles, bad files."""

from __future__ import annotations

import errno
import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cryoxr
from cryoxr.errors import (
    CryoxrError,
    CryoxrFileNotFoundError,
    FileExistsNoOverwriteError,
    FormatError,
    InvalidValueError,
    WriteError,
)
from cryoxr.io.imod import imod_centers, read_imod_alignment, write_imod_alignment

#: the reader with a pixel size (IMOD files store none: the tests of that are below)
read_imod = functools.partial(read_imod_alignment, pixel_spacing=1.0)

WORKED_XF = "0.0871557 0.9961947 -0.9961947 0.0871557 9.526 5.853"


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_worked_numbers_read(tmp_path: Path) -> None:
    # docs/CONVENTIONS.md §7: (0, 30, 85, dx=5, dy=-10) <=> this xf line and tlt 30
    df = read_imod(_write(tmp_path / "a.xf", WORKED_XF + "\n"), _write(tmp_path / "a.tlt", "30.0\n"))
    row = df.iloc[0]
    assert row.rotation_x == 0.0
    assert row.rotation_y == 30.0
    assert row.rotation_z == pytest.approx(85.0, abs=1e-5)
    assert row.dx == pytest.approx(5.0, abs=1e-3)
    assert row.dy == pytest.approx(-10.0, abs=1e-3)
    assert row.experiment_id == "a"
    assert df.attrs["format"] == "imod"
    assert df.attrs["tilt_image_center"] is None


def test_worked_numbers_write(tmp_path: Path) -> None:
    model = cryoxr.make_projection_model(
        rotation_y=30.0, rotation_z=85.0, dx=5.0, dy=-10.0, experiment_id="a", pixel_spacing=1.0
    )
    write_imod_alignment(model, tmp_path / "a.xf", tmp_path / "a.tlt")
    values = [float(v) for v in (tmp_path / "a.xf").read_text().split()]
    expected = [float(v) for v in WORKED_XF.split()]
    np.testing.assert_allclose(values[:4], expected[:4], atol=5e-8)
    np.testing.assert_allclose(values[4:], expected[4:], atol=5e-4)
    assert float((tmp_path / "a.tlt").read_text()) == 30.0
    assert not (tmp_path / "a.xtilt").exists()


def test_imod_centres() -> None:
    # settled: (n - 1) / 2, for even and odd sizes
    assert imod_centers((4096, 4095)) == {"tilt_image_center": (2047.5, 2047.0), "specimen_center": None}
    assert imod_centers(None, (10, 11, 3))["specimen_center"] == (4.5, 5.0, 1.0)
    with pytest.raises(InvalidValueError, match="image_size"):
        imod_centers((10,))


def _random_xf(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    theta = np.deg2rad(rng.uniform(-180, 180, n))
    a = np.stack([np.cos(theta), -np.sin(theta), np.sin(theta), np.cos(theta)], -1).reshape(n, 2, 2)
    d = rng.normal(0, 40, (n, 2))
    tilts = rng.uniform(-70, 70, n)
    return a, d, tilts


def _write_xf(folder: Path, a: np.ndarray, d: np.ndarray, tilts: np.ndarray) -> tuple[Path, Path]:
    lines = [" ".join(repr(float(v)) for v in (*ai.reshape(-1), *di)) for ai, di in zip(a, d, strict=True)]
    xf = _write(folder / "ts.xf", "\n".join(lines) + "\n")
    tlt = _write(folder / "ts.tlt", "\n".join(repr(float(t)) for t in tilts) + "\n")
    return xf, tlt


@pytest.mark.parametrize(("nx", "ny"), [(4096, 4096), (927, 1023)])
def test_imod_geometry_independent_numpy_check(
    tmp_path: Path, rng: np.random.Generator, nx: int, ny: int
) -> None:
    """Aligned-image position (xf applied to cryoxr's raw projection) = pure Ry projection + centre."""
    a, d, tilts = _random_xf(rng, 7)
    xf, tlt = _write_xf(tmp_path, a, d, tilts)
    dims = (nx, ny, 301)
    df = read_imod(xf, tlt, image_size=(nx, ny), tomogram_dimensions=dims)
    points = rng.uniform(0, 1, (20, 3)) * np.asarray(dims)
    poses = cryoxr.make_poseset(points, experiment_id="ts", pixel_spacing=1.0)
    raw = cryoxr.project(
        poses,
        df,
        tomogram_dimensions=dims,
        tilt_image_center=df.attrs["tilt_image_center"],
        specimen_center=df.attrs["specimen_center"],
    ).values  # (particle, image, 2)
    # independent numpy: IMOD centres, xf x' = A (x - c) + D + c, Ry projection
    c = np.array([(nx - 1) / 2, (ny - 1) / 2])
    sc = (np.asarray(dims) - 1) / 2
    aligned = np.einsum("tij,ptj->pti", a, raw - c) + d + c
    rel = points - sc
    t = np.deg2rad(tilts)
    expected_x = rel[:, None, 0] * np.cos(t) + rel[:, None, 2] * np.sin(t) + c[0]
    expected_y = np.broadcast_to(rel[:, None, 1] + c[1], expected_x.shape)
    np.testing.assert_allclose(aligned[..., 0], expected_x, atol=1e-8)
    np.testing.assert_allclose(aligned[..., 1], expected_y, atol=1e-8)


def test_cryoet_alignment_oracle(tmp_path: Path, rng: np.random.Generator) -> None:
    pytest.importorskip("cryoet_alignment")
    from cryoet_alignment.io.cryoet_data_portal.alignment import Alignment
    from cryoet_alignment.io.imod import ImodAlignment

    a, d, tilts = _random_xf(rng, 15)
    xtilt = _write(tmp_path / "ts.xtilt", "\n".join(repr(float(v)) for v in rng.normal(0, 2, 15)) + "\n")
    xf, tlt = _write_xf(tmp_path, a, d, tilts)
    ours = read_imod(xf, tlt, xtilt=xtilt)
    oracle = Alignment.from_imod(ImodAlignment.read(xf_path=xf, tlt_path=tlt, xtilt_path=xtilt))
    params = oracle.per_section_alignment_parameters
    np.testing.assert_allclose(ours.rotation_z, [p.tilt_axis_rotation for p in params], atol=1e-9)
    np.testing.assert_allclose(ours.dx, [p.x_offset for p in params], atol=1e-9)
    np.testing.assert_allclose(ours.dy, [p.y_offset for p in params], atol=1e-9)
    np.testing.assert_allclose(ours.rotation_y, [p.tilt_angle for p in params], atol=1e-12)
    np.testing.assert_allclose(ours.rotation_x, [p.volume_x_rotation for p in params], atol=1e-12)


def test_options_offsets_and_xtilt(tmp_path: Path) -> None:
    xf = _write(tmp_path / "a.xf", "1 0 0 1 0 0\n1 0 0 1 0 0\n")
    tlt = _write(tmp_path / "a.tlt", "-10\n20\n")
    xtilt = _write(tmp_path / "a.xtilt", "1.5\n2.5\n")
    df = read_imod(
        xf, tlt, xtilt=xtilt, angle_offset=0.5, subtract_angle_offset=2.0, x_axis_tilt=1.0, pixel_spacing=2.7
    )
    assert df.rotation_y.tolist() == [-11.5, 18.5]
    assert df.rotation_x.tolist() == [0.5, 1.5]
    assert df.view.tolist() == [0, 1]
    assert df.pixel_spacing.tolist() == [2.7, 2.7]
    flipped = read_imod(xf, tlt, xtilt=xtilt, x_axis_tilt=1.0, xtilt_convention="flipyz")
    assert flipped.rotation_x.tolist() == [-0.5, -1.5]
    with pytest.raises(InvalidValueError, match="xtilt_convention"):
        read_imod(xf, tlt, xtilt_convention="bad")  # type: ignore[arg-type]


def test_writer_needs_xtilt_for_rotation_x(tmp_path: Path) -> None:
    model = cryoxr.make_projection_model(
        rotation_x=1.0, rotation_y=[0, 3], experiment_id="a", pixel_spacing=1
    )
    with pytest.raises(InvalidValueError, match="xtilt"):
        write_imod_alignment(model, tmp_path / "a.xf", tmp_path / "a.tlt")
    assert not (tmp_path / "a.xf").exists()
    # a global XAXISTILT equal to -rotation_x needs no .xtilt
    write_imod_alignment(model, tmp_path / "a.xf", tmp_path / "a.tlt", x_axis_tilt=-1.0)


def test_writer_refuses_overwrite_and_many_experiments(tmp_path: Path) -> None:
    model = cryoxr.make_projection_model(rotation_y=[0, 3], experiment_id="a", pixel_spacing=1)
    _write(tmp_path / "a.tlt", "old\n")
    with pytest.raises(FileExistsNoOverwriteError):
        write_imod_alignment(model, tmp_path / "a.xf", tmp_path / "a.tlt")
    assert not (tmp_path / "a.xf").exists()  # nothing written when one target exists
    assert (tmp_path / "a.tlt").read_text() == "old\n"
    write_imod_alignment(model, tmp_path / "a.xf", tmp_path / "a.tlt", overwrite=True)
    two = cryoxr.make_projection_model(rotation_y=[0, 3], experiment_id=["a", "b"], pixel_spacing=1)
    with pytest.raises(InvalidValueError, match="one tilt series"):
        write_imod_alignment(two, tmp_path / "b.xf", tmp_path / "b.tlt")


def test_failed_set_write_replaces_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = cryoxr.make_projection_model(rotation_y=[0, 3], experiment_id="a", pixel_spacing=1)
    xf, tlt = tmp_path / "a.xf", tmp_path / "a.tlt"
    write_imod_alignment(old, xf, tlt)
    before = (xf.read_bytes(), tlt.read_bytes())
    real_write_text = Path.write_text

    def disk_full_on_tlt(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.name.startswith(".a.tlt"):  # the .tlt temporary, written after the .xf one
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full_on_tlt)
    new = cryoxr.make_projection_model(
        rotation_y=[10, 20], rotation_z=[85, 86], dx=[3, 4], experiment_id="a", pixel_spacing=1
    )
    with pytest.raises(WriteError, match=r"a\.tlt: writing failed"):
        write_imod_alignment(new, xf, tlt, overwrite=True)
    assert (xf.read_bytes(), tlt.read_bytes()) == before  # the .xf was not replaced alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tlt", "a.xf"]  # no temporaries


angles = st.floats(-179.0, 179.0, allow_nan=False)
shifts = st.floats(-500.0, 500.0, allow_nan=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(angles, st.floats(-80, 80), angles, shifts, shifts), min_size=1, max_size=12),
    x_axis_tilt=st.floats(-5, 5),
    angle_offset=st.floats(-5, 5),
    convention=st.sampled_from(["rotx", "flipyz"]),
)
def test_roundtrip_hypothesis(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[float, float, float, float, float]],
    x_axis_tilt: float,
    angle_offset: float,
    convention: str,
) -> None:
    folder = tmp_path_factory.mktemp("imod")
    rx, ry, rz, dx, dy = (np.array(col) for col in zip(*rows, strict=True))
    model = cryoxr.make_projection_model(
        rotation_x=rx, rotation_y=ry, rotation_z=rz, dx=dx, dy=dy, experiment_id="TS_ü", pixel_spacing=1.35
    )
    options = {"x_axis_tilt": x_axis_tilt, "angle_offset": angle_offset, "xtilt_convention": convention}
    write_imod_alignment(model, folder / "t.xf", folder / "t.tlt", xtilt=folder / "t.xtilt", **options)  # type: ignore[arg-type]
    back = read_imod(
        folder / "t.xf",
        folder / "t.tlt",
        xtilt=folder / "t.xtilt",
        experiment_id="TS_ü",
        pixel_spacing=1.35,
        **options,  # type: ignore[arg-type]
    )
    for col in ("rotation_x", "rotation_y", "dx", "dy"):
        np.testing.assert_allclose(back[col], model[col], atol=1e-9, rtol=0)
    wrapped = (back.rotation_z - model.rotation_z + 180.0) % 360.0 - 180.0
    np.testing.assert_allclose(wrapped, 0.0, atol=1e-9)
    pd.testing.assert_series_equal(back.experiment_id, model.experiment_id)


BAD_XF = [
    ("1 0 0 1 0\n", "line 1: expected 6 columns .*found 5"),
    ("1 0 0 1 0 0\n1 0 0 abc 0 0\n", r"line 2, column 4 \(A22\): expected a number, found 'abc'"),
    ("1 0 0 1 0 nan\n", r"line 1, column 6 \(DY\): expected a finite number, found 'nan'"),
    ("", "empty file"),
    ("   \n\n", "empty file"),
    (b"1 0 0 1 0 0\n\xff\xfe 0 0 1 0 0\n", r"line 2: expected UTF-8 text .*0xff"),
    ("0 0 0 0 1 1\n", "line 1: expected an invertible"),
    # blank lines count: the message names the file's line, not the data row
    ("1 0 0 1 0 0\n\n  \n0 0 0 0 1 1\n", "line 4: expected an invertible"),
    ("\n1 0 0 1 0 0\n\n0.01 0 0 0.01 1e308 0\n", r"line 4: expected A11 A12 A21 A22 DX DY giving a finite"),
    (
        "1 0 0 1 0 0\n1.1 0 0 0.9 0 0\n",
        r"line 2: expected a rotation with at most a magnification .* off a rotation by",
    ),
    (
        "0 1 1 0 0 0\n",
        r"line 1: expected a rotation \(positive determinant\), not a mirror, found determinant -1",
    ),
]


@pytest.mark.parametrize(("content", "message"), BAD_XF)
def test_bad_xf(tmp_path: Path, content: str | bytes, message: str) -> None:
    xf = _write(tmp_path / "bad.xf", content)
    tlt = _write(tmp_path / "bad.tlt", "0\n0\n")
    with pytest.raises(FormatError, match=message) as info:
        read_imod(xf, tlt)
    assert "bad.xf" in str(info.value)
    assert isinstance(info.value, CryoxrError)


def test_bad_tlt(tmp_path: Path) -> None:
    xf = _write(tmp_path / "a.xf", "1 0 0 1 0 0\n1 0 0 1 0 0\n")
    with pytest.raises(
        FormatError, match=r"a\.tlt: expected one tilt angle per view of a\.xf \(2\), found 3"
    ):
        read_imod(xf, _write(tmp_path / "a.tlt", "0\n1\n2\n"))
    with pytest.raises(
        FormatError, match=r"a\.tlt, line 2, column 1 \(angle\): expected a finite number, found 'NaN'"
    ):
        read_imod(xf, _write(tmp_path / "a.tlt", "0\nNaN\n"))
    with pytest.raises(FormatError, match=r"a\.tlt, line 1: expected 1 columns"):
        read_imod(xf, _write(tmp_path / "a.tlt", "0 1\n2 3\n"))
    with pytest.raises(FormatError, match=r"a\.xtilt: expected one x tilt per view"):
        read_imod(xf, _write(tmp_path / "a.tlt", "0\n1\n"), xtilt=_write(tmp_path / "a.xtilt", "0\n"))
    with pytest.raises(CryoxrFileNotFoundError, match=r"missing\.tlt"):
        read_imod(xf, tmp_path / "missing.tlt")


def test_crlf_and_trailing_blank_lines(tmp_path: Path) -> None:
    xf = _write(tmp_path / "a.xf", WORKED_XF + "\r\n" + WORKED_XF + "\r\n\r\n")
    tlt = _write(tmp_path / "a.tlt", "30\r\n-30\r\n")
    assert read_imod(xf, tlt).rotation_y.tolist() == [30.0, -30.0]


# --------------------------------------------------------------------------------------
# pixel size, magnification, per-tilt columns (issues 15, 21, 22)
# --------------------------------------------------------------------------------------
def test_pixel_spacing_is_required_never_invented(tmp_path: Path) -> None:
    xf, tlt = _write(tmp_path / "a.xf", WORKED_XF + "\n"), _write(tmp_path / "a.tlt", "30\n")
    with pytest.raises(
        InvalidValueError,
        match=r"a\.xf: IMOD \.xf files store no pixel size; pass pixel_spacing= \(Å per pixel of the tilt images\)",
    ):
        read_imod_alignment(xf, tlt)
    for bad in (0.0, -1.35, float("nan"), float("inf"), "abc"):
        with pytest.raises(InvalidValueError, match=r"a\.xf: pixel_spacing must be"):
            read_imod_alignment(xf, tlt, pixel_spacing=bad)  # type: ignore[arg-type]
    assert read_imod_alignment(xf, tlt, pixel_spacing=2.7).pixel_spacing.tolist() == [2.7]


def test_magnification_kept_as_a_column_warned_and_written_back(tmp_path: Path) -> None:
    # A = 1.01 Rz2(-90): rotation_z = 90, m = 1.01; D = (2.02, 0) -> (dx, dy) = -A^-1 D = (0, -2)
    xf = _write(tmp_path / "m.xf", "1 0 0 1 0 0\n0 1.01 -1.01 0 2.02 0\n")
    tlt = _write(tmp_path / "m.tlt", "0\n30\n")
    with pytest.warns(
        UserWarning,
        match=r"m\.xf: the \.xf holds magnifications 1\.\.1\.01; kept in column 'imod_magnification'",
    ):
        df = read_imod(xf, tlt)
    assert df.imod_magnification.tolist() == pytest.approx([1.0, 1.01], abs=1e-15)
    assert df.rotation_z.tolist() == pytest.approx([0.0, 90.0], abs=1e-12)
    assert df[["dx", "dy"]].values.tolist()[1] == pytest.approx([0.0, -2.0], abs=1e-12)
    write_imod_alignment(df, tmp_path / "b.xf", tmp_path / "b.tlt")
    written = np.loadtxt(tmp_path / "b.xf")
    np.testing.assert_allclose(written, [[1, 0, 0, 1, 0, 0], [0, 1.01, -1.01, 0, 2.02, 0]], atol=1e-12)
    with pytest.raises(InvalidValueError, match="'imod_magnification' must be finite and > 0"):
        write_imod_alignment(df.assign(imod_magnification=[1.0, 0.0]), tmp_path / "c.xf", tmp_path / "c.tlt")


def test_sizes_and_centres_as_columns(tmp_path: Path) -> None:
    xf, tlt = _write(tmp_path / "a.xf", WORKED_XF + "\n"), _write(tmp_path / "a.tlt", "30\n")
    df = read_imod(xf, tlt, image_size=(4096, 4095), tomogram_dimensions=(4096, 4096, 1000))
    row = df.iloc[0]
    assert (row.image_size_x, row.image_size_y) == (4096, 4095)
    assert (row.tilt_image_center_x, row.tilt_image_center_y) == (2047.5, 2047.0)  # IMOD: (n - 1) / 2
    assert (row.tomogram_size_x, row.tomogram_size_y, row.tomogram_size_z) == (4096, 4096, 1000)
    assert (row.specimen_center_x, row.specimen_center_y, row.specimen_center_z) == (2047.5, 2047.5, 499.5)
    bare = read_imod(xf, tlt)
    assert not {"image_size_x", "tilt_image_center_x", "tomogram_size_x"} & set(bare.columns)


def test_columns_alone_project_about_imods_centres(tmp_path: Path, rng: np.random.Generator) -> None:
    """Issue 15: geometry travels as columns; IMOD's (n - 1) / 2 survives attrs being dropped."""
    a, d, tilts = _random_xf(rng, 5)
    xf, tlt = _write_xf(tmp_path, a, d, tilts)
    dims = (928, 1024, 300)  # even sizes: IMOD's (n - 1) / 2 differs from n // 2 by half a pixel
    df = read_imod(xf, tlt, image_size=dims[:2], tomogram_dimensions=dims)
    points = rng.uniform(0, 1, (30, 3)) * np.asarray(dims)
    poses = cryoxr.make_poseset(points, experiment_id="ts", pixel_spacing=1.0)
    explicit = cryoxr.project(
        poses,
        df,
        tomogram_dimensions=dims,
        tilt_image_center=df.attrs["tilt_image_center"],
        specimen_center=df.attrs["specimen_center"],
    ).values
    bare = df.copy()
    bare.attrs = {}
    from_columns = cryoxr.project(poses, bare).values
    np.testing.assert_allclose(from_columns, explicit, atol=1e-9)


def test_tilt_angles_beyond_a_turn_are_refused(tmp_path: Path) -> None:
    xf = _write(tmp_path / "a.xf", "1 0 0 1 0 0\n1 0 0 1 0 0\n")
    with pytest.raises(
        FormatError, match=r"a\.tlt, line 2: expected an angle within ±360 deg, found 1e\+308"
    ):
        read_imod(xf, _write(tmp_path / "a.tlt", "0\n1e308\n"))


def test_writer_warns_about_columns_it_cannot_store(tmp_path: Path) -> None:
    model = cryoxr.make_projection_model(
        rotation_y=[0.0, 3.0],
        experiment_id="a",
        pixel_spacing=1.0,
        extra={"pre_exposure": [0.0, 3.0], "defocus_u": [3e4, 3e4], "defocus_v": [3e4, 3e4], "view": [0, 1]},
    )
    with pytest.warns(
        UserWarning, match=r"cannot store column\(s\) \['pre_exposure', 'defocus_u', 'defocus_v'\]"
    ):
        write_imod_alignment(model, tmp_path / "a.xf", tmp_path / "a.tlt")
    # with a .defocus path the defocus goes there; only the dose is left over
    with pytest.warns(
        UserWarning, match=r"cannot store column\(s\) \['pre_exposure'\]: they are not written"
    ):
        write_imod_alignment(model, tmp_path / "b.xf", tmp_path / "b.tlt", defocus=tmp_path / "b.defocus")
    back = read_imod(tmp_path / "b.xf", tmp_path / "b.tlt", defocus=tmp_path / "b.defocus")
    assert back.defocus_u.tolist() == [3e4, 3e4]
