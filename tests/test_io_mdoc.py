"""SerialEM .mdoc: per-tilt table, nominal ProjectionModel, merge by tilt angle; mdocfile as oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryoxr import make_projection_model, validate_projection_model
from cryoxr.errors import CryoxrError, FormatError, InvalidValueError, SchemaError
from cryoxr.io import describe, merge_mdoc, read_alignment, read_mdoc, read_mdoc_alignment

# a dose-symmetric series 0, +3, -3, -6, +6 written in stack order (sorted by angle), as
# SerialEM's "sort by tilt angle" leaves it; the times give the recording order
ANGLES = [-6.0, -3.0, 0.0, 3.0, 6.0]
TIMES = ["15:30:40", "15:30:20", "15:29:45", "15:30:00", "15:31:00"]  # order 3, 2, 0, 1, 4


def mdoc_text(*, axis: bool = True, spacing: bool = True, dose: float = 2.5, prior: bool = False) -> str:
    head = ["PixelSpacing = 1.35" if spacing else "DataMode = 1", "Voltage = 300", "ImageFile = TS_01.mrc"]
    head.append("ImageSize = 4096 4096")
    head.append("")
    head.append("[T = SerialEM: Digitized on Krios                 14-Nov-23  15:29:40    ]")
    if axis:
        head.append("[T =     Tilt axis angle = 85.3, binning = 1  spot = 8  camera = 0]")
    order = [3, 2, 0, 1, 4]
    for z, (angle, time) in enumerate(zip(ANGLES, TIMES, strict=True)):
        head += ["", f"[ZValue = {z}]", f"TiltAngle = {angle}", "StagePosition = 10.5 -20.25"]
        head += [f"ExposureDose = {dose}", "TargetDefocus = -3.5", f"Defocus = {-3.5 + 0.1 * z:.1f}"]
        if spacing:
            head.append("PixelSpacing = 1.35")
        if prior:
            head.append(f"PriorRecordDose = {dose * order[z]}")
        head.append(f"DateTime = 14-Nov-23  {time}")
    return "\n".join(head) + "\n"


@pytest.fixture
def mdoc(tmp_path: Path) -> Path:
    path = tmp_path / "TS_01.mrc.mdoc"
    path.write_text(mdoc_text())
    return path


def test_table_matches_mdocfile(mdoc: Path) -> None:
    mdocfile = pytest.importorskip("mdocfile")
    oracle = mdocfile.read(mdoc)
    table = read_mdoc(mdoc)
    np.testing.assert_array_equal(table["tilt_angle"], oracle["TiltAngle"])
    np.testing.assert_array_equal(table["exposure_dose"], oracle["ExposureDose"])
    np.testing.assert_array_equal(table["z_value"], oracle["ZValue"])
    np.testing.assert_allclose(table["defocus"], -1e4 * oracle["Defocus"])
    np.testing.assert_array_equal(table["pixel_spacing"], oracle["PixelSpacing"])


def test_order_dose_defocus_hand_computed(mdoc: Path) -> None:
    table = read_mdoc(mdoc)
    assert table["acquisition_order"].tolist() == [3, 2, 0, 1, 4]
    # dose before each tilt: 2.5 e/Å² per earlier tilt in recording order
    assert table["pre_exposure"].tolist() == [7.5, 5.0, 0.0, 2.5, 10.0]
    assert table["nominal_defocus"].tolist() == [35000.0] * 5  # TargetDefocus -3.5 µm
    assert table.attrs["tilt_axis"] == 85.3
    assert table["experiment_id"].iloc[0] == "TS_01"


def test_prior_record_dose_wins(tmp_path: Path) -> None:
    path = tmp_path / "TS_02.mdoc"
    path.write_text(mdoc_text(prior=True, dose=2.0).replace("PriorRecordDose = 8.0", "PriorRecordDose = 8.5"))
    assert read_mdoc(path)["pre_exposure"].tolist() == [6.0, 4.0, 0.0, 2.0, 8.5]


def test_no_dose_is_unknown_not_zero(tmp_path: Path) -> None:
    path = tmp_path / "TS_01.mdoc"
    path.write_text(mdoc_text(dose=0.0))
    assert read_mdoc(path)["pre_exposure"].isna().all()
    assert read_mdoc(path, dose_per_tilt=3.0)["pre_exposure"].tolist() == [9.0, 6.0, 0.0, 3.0, 12.0]


def test_nominal_alignment(mdoc: Path) -> None:
    model = read_alignment(mdoc)
    validate_projection_model(model)
    assert model["rotation_y"].tolist() == ANGLES
    assert (model["rotation_z"] == 85.3).all()
    assert (model[["dx", "dy", "rotation_x"]] == 0).all().all()
    assert model["pixel_spacing"].iloc[0] == 1.35
    assert model["experiment_id"].iloc[0] == "TS_01"
    assert model["acquisition_order"].tolist() == [3, 2, 0, 1, 4]
    assert model["pre_exposure"].tolist() == [7.5, 5.0, 0.0, 2.5, 10.0]
    assert describe(mdoc)["kind"] == "alignment"


def test_a_tilt_angle_the_model_refuses_names_the_file(tmp_path: Path) -> None:
    # found by the fuzz suite: the ProjectionModel's range check used to speak without the file
    path = tmp_path / "TS_01.mrc.mdoc"
    path.write_text(mdoc_text().replace(f"TiltAngle = {ANGLES[0]}", "TiltAngle = 1e308", 1))
    with pytest.raises(CryoxrError, match="rotation_y") as err:
        read_alignment(path)
    assert str(path) in str(err.value)


def test_sniffed_without_suffix(tmp_path: Path) -> None:
    path = tmp_path / "TS_01.txt"
    path.write_text(mdoc_text())
    assert read_alignment(path)["rotation_y"].tolist() == ANGLES


def test_missing_axis_and_pixel_size_are_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "TS_01.mdoc"
    path.write_text(mdoc_text(axis=False, spacing=False))
    with pytest.raises(InvalidValueError, match="pixel_spacing="):
        read_mdoc_alignment(path, tilt_axis=85.0)
    with pytest.raises(InvalidValueError, match="tilt_axis="):
        read_mdoc_alignment(path, pixel_spacing=1.0)
    model = read_mdoc_alignment(path, pixel_spacing=2.0, tilt_axis=-95.0)
    assert model["rotation_z"].iloc[0] == -95.0
    assert model["pixel_spacing"].iloc[0] == 2.0


def test_contradicting_pixel_spacing_refused(mdoc: Path) -> None:
    with pytest.raises(InvalidValueError, match="contradicts"):
        read_mdoc(mdoc, pixel_spacing=2.7)


def test_merge_by_angle(mdoc: Path) -> None:
    # an alignment that dropped -6 and refined angles by +0.2 (AngleOffset)
    model = make_projection_model(
        rotation_y=[-2.8, 0.2, 3.2, 6.2], rotation_z=84.0, experiment_id="TS_01", pixel_spacing=1.35
    )
    merged = merge_mdoc(model, read_mdoc(mdoc))
    assert merged["pre_exposure"].tolist() == [5.0, 0.0, 2.5, 10.0]
    assert merged["acquisition_order"].tolist() == [2, 0, 1, 4]
    with pytest.raises(InvalidValueError, match=r"no mdoc tilt within 0\.1"):
        merge_mdoc(model, read_mdoc(mdoc), tolerance=0.1)
    assert merge_mdoc(model, read_mdoc(mdoc), tolerance=0.1, angle_offset=0.2)["pre_exposure"].iloc[0] == 5.0
    with pytest.raises(SchemaError, match="replace=True"):
        merge_mdoc(merged, read_mdoc(mdoc))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("PixelSpacing = 1\n", "ZValue"),
        ("[ZValue = 0]\nTiltAngle = abc\n", "TiltAngle: expected a number"),
        ("[ZValue = 0]\nTiltAngle = 1\n[ZValue = 2]\nTiltAngle = 2\n", "ZValue 0..1"),
        ("[MontSection = 0]\n", "montage"),
        ("[ZValue = 0]\nExposureDose = 1\n", "TiltAngle"),
        ("[ZValue = 0]\nTiltAngle = inf\n", "finite"),
        ("[ZValue = 0]\njunk line\n", "key = value"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.mdoc"
    path.write_text(text)
    with pytest.raises(FormatError, match=match) as err:
        read_mdoc(path, pixel_spacing=1.0)
    assert isinstance(err.value, CryoxrError)
    assert str(path) in str(err.value)


def test_table_is_dataframe(mdoc: Path) -> None:
    assert isinstance(read_mdoc(mdoc), pd.DataFrame)
