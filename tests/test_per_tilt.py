"""Per-tilt columns: every rule, with the unit mistakes named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cryoxr
from cryoxr.errors import CryoxrError, InvalidValueError, SchemaError
from cryoxr.per_tilt import COLUMN_RULES, PER_TILT_COLUMNS, PTC, check_per_tilt_columns


def _model(**columns: object) -> pd.DataFrame:
    df = cryoxr.make_projection_model(rotation_y=[0.0, 3.0], experiment_id="a", pixel_spacing=1.0)
    return df.assign(**columns)


def test_every_column_has_a_rule_and_a_unit() -> None:
    assert set(COLUMN_RULES) | {PTC.EXCLUDED} == set(PER_TILT_COLUMNS)
    assert PER_TILT_COLUMNS[PTC.DEFOCUS_U][0] == "Å"
    assert PER_TILT_COLUMNS[PTC.VOLTAGE][0] == "kV"


def test_plausible_values_pass_and_nan_means_not_known() -> None:
    good = _model(
        tomogram_size_x=4096,
        tomogram_size_y=4096,
        tomogram_size_z=1000.0,
        image_size_x=[4096, np.nan],
        tilt_image_center_x=2047.5,
        defocus_u=[35000.0, -2000.0],
        defocus_v=0.0,
        defocus_angle=[-89.5, 360.0],
        phase_shift=90.0,
        voltage=300.0,
        spherical_aberration=[2.7, 0.001],
        amplitude_contrast=[0.07, 1.0],
        ctf_scale=1.0,
        ctf_bfactor=-50.0,
        pre_exposure=[0.0, 3.5],
        acquisition_order=[1, 0],
        excluded=[True, False],
        defocus_handedness=[-1, -1],
    )
    assert cryoxr.validate_projection_model(good) is good
    after_concat = pd.concat(
        [good, _model(experiment_id="b")], ignore_index=True
    )  # NaN / None where b lacks them
    assert after_concat.excluded.dtype == object
    cryoxr.validate_projection_model(after_concat)


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        (
            "defocus_u",
            3.5,
            "must be in [-1000000.0, 1000000.0] and not within 100 Å of 0, found 3.5 at row 0: "
            "this is almost certainly µm",
        ),
        ("defocus_v", -2.0, "almost certainly µm"),
        ("defocus_u", 5e6, "more than 100 µm"),
        ("defocus_u", np.inf, "found inf"),
        (
            "voltage",
            300000.0,
            "(kV) must be in [60.0, 1000.0], found 300000.0 at row 0: this looks like volts",
        ),
        ("voltage", 30.0, "found 30.0"),
        ("spherical_aberration", 2700.0, "looks like µm"),
        ("amplitude_contrast", 7.0, "looks like a percentage"),
        ("amplitude_contrast", -0.1, "in [0.0, 1.0]"),
        ("pre_exposure", -1.0, "'pre_exposure' (e/Å²) must be in [0.0, inf]"),
        ("ctf_scale", -1.0, "'ctf_scale'"),
        ("defocus_angle", 400.0, "in [-360.0, 360.0]"),
        ("phase_shift", 1e308, "in [-360.0, 360.0]"),
        ("acquisition_order", 1.5, "a whole number"),
        ("acquisition_order", -1, "found -1.0"),
        ("defocus_handedness", 0.5, "one of [-1.0, 1.0]"),
        ("tomogram_size_x", 0, "'tomogram_size_x' (px) must be in [1, 10000000.0] and a whole number"),
        ("image_size_y", 1023.5, "a whole number"),
        ("tilt_image_center_x", np.inf, "must be finite"),
    ],
)
def test_bad_values_are_named(column: str, value: float, words: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        cryoxr.validate_projection_model(_model(**{column: value}))
    assert isinstance(info.value, CryoxrError)
    assert f"'{column}'" in str(info.value)
    assert words in str(info.value)


def test_types() -> None:
    with pytest.raises(SchemaError, match=r"'defocus_u' \(Å\) must be numeric, found dtype"):
        check_per_tilt_columns(_model(defocus_u="35000"), "x.star")
    with pytest.raises(SchemaError, match=r"'excluded' must be bool .*astype\(bool\)"):
        check_per_tilt_columns(_model(excluded=[0, 1]), "x.star")
    with pytest.raises(SchemaError, match="must hold True/False"):
        check_per_tilt_columns(_model(excluded=[True, "yes"]), "x.star")
    with pytest.raises(SchemaError, match="'voltage'"):
        check_per_tilt_columns(_model(voltage=True), "x.star")


def test_tomogram_size_is_one_per_experiment() -> None:
    with pytest.raises(
        InvalidValueError, match=r"experiment 'a' must have one tomogram_size_z, found \[10, 20\]"
    ):
        cryoxr.validate_projection_model(_model(tomogram_size_z=[10, 20]))


def test_rotations_beyond_a_turn_are_refused() -> None:
    """Issue 22: tilt angles of 1e308 were accepted."""
    with pytest.raises(
        InvalidValueError,
        match=r"'rotation_y' \(degrees\) must be within \[-360, 360\], found 1e\+308 at row 1",
    ):
        cryoxr.validate_projection_model(_model(rotation_y=[0.0, 1e308]))
    cryoxr.validate_projection_model(_model(rotation_z=[-360.0, 360.0]))


def test_make_projection_model_takes_per_tilt_columns() -> None:
    df = cryoxr.make_projection_model(
        rotation_y=[-3.0, 0.0, 3.0],
        experiment_id="TS_01",
        pixel_spacing=1.35,
        voltage=300.0,
        defocus_u=[30000.0, 31000.0, 32000.0],
        acquisition_order=[1, 0, 2],
        excluded=False,
        extra={"tilt_index": [2, 0, 1]},
    )
    assert list(df.columns)[8:] == ["defocus_u", "voltage", "acquisition_order", "excluded", "tilt_index"]
    assert df.voltage.tolist() == [300.0] * 3
    assert df.acquisition_order.dtype == np.int64
    assert df.excluded.dtype == bool
    with pytest.raises(InvalidValueError, match=r"unknown per-tilt column\(s\) \['dose'\].*extra="):
        cryoxr.make_projection_model(experiment_id="a", pixel_spacing=1.0, dose=3.0)
    with pytest.raises(InvalidValueError, match="disagree in length"):
        cryoxr.make_projection_model(
            rotation_y=[0.0, 1.0], experiment_id="a", pixel_spacing=1.0, defocus_u=[1e4] * 3
        )
    with pytest.raises(InvalidValueError, match="almost certainly µm"):
        cryoxr.make_projection_model(experiment_id="a", pixel_spacing=1.0, defocus_u=3.5)
