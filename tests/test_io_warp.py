"""Warp/M tilt-series XML and Warp particle STAR, built from Warp's documented layout (TiltSeries.SaveMeta)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import starfile
from scipy.spatial.transform import Rotation

from cryoxr import validate_projection_model
from cryoxr.errors import CryoxrError, FormatError, InvalidValueError
from cryoxr.io import describe, read_alignment, read_poses, read_warp_particles, read_warp_tilt_series
from cryoxr.projection_model import projection_model_to_projection_matrices


def grid(name: str, values: list[float]) -> str:
    nodes = "".join(f'<Node X="0" Y="0" Z="{z}" Value="{v}" />' for z, v in enumerate(values))
    return f'<{name} Width="1" Height="1" Depth="{len(values)}" MarginX="0" MarginY="0" MarginZ="0">{nodes}</{name}>'


def warp_xml(
    *, inverted: str = "True", options: str = '<Param Name="PixelSize" Value="1.35" />', grids: bool = True
) -> str:
    lines = "\n".join
    body = [
        f'<?xml version="1.0" encoding="utf-8"?>\n<TiltSeries DataDirectory="" AreAnglesInverted="{inverted}" '
        'PlaneNormal="0, 0, 1" LevelAngleX="1.5" LevelAngleY="-0.5" Bfactor="0" Weight="1" '
        'ImageDimensionsAngstrom="5529.6, 5529.6" VolumeDimensionsAngstrom="5529.6, 5529.6, 1350">',
        f"\t<Angles>{lines(['-3', '0', '3'])}</Angles>",
        f"\t<Dose>{lines(['3', '0', '6'])}</Dose>",
        f"\t<UseTilt>{lines(['True', 'True', 'False'])}</UseTilt>",
        f"\t<AxisAngle>{lines(['85', '85', '85.5'])}</AxisAngle>",
        f"\t<AxisOffsetX>{lines(['13.5', '0', '-27'])}</AxisOffsetX>",
        f"\t<AxisOffsetY>{lines(['0', '2.7', '0'])}</AxisOffsetY>",
        f"\t<MoviePath>{lines(['a.tif', 'b.tif', 'c.tif'])}</MoviePath>",
        f"\t<OptionsCTF>{options}</OptionsCTF>",
        '\t<CTF><Param Name="PixelSize" Value="2.7" /><Param Name="Cs" Value="2.7" />'
        '<Param Name="Voltage" Value="300" /><Param Name="Amplitude" Value="0.07" /></CTF>',
    ]
    if grids:
        body += [
            grid("GridCTF", [3.0, 3.1, 3.2]),
            grid("GridCTFDefocusDelta", [0.2, 0.0, 0.1]),
            grid("GridCTFDefocusAngle", [45, 0, -30]),
            grid("GridCTFPhase", [0.5, 0, 0]),
        ]
    body.append(
        '<GridMovementX Width="1" Height="1" Depth="1"><Node X="0" Y="0" Z="0" Value="0" /></GridMovementX>'
    )
    return "\n".join([*body, "</TiltSeries>"]) + "\n"


@pytest.fixture
def xml(tmp_path: Path) -> Path:
    path = tmp_path / "TS_01.xml"
    path.write_text(warp_xml())
    return path


def test_xml_columns_hand_computed(xml: Path) -> None:
    model = read_warp_tilt_series(xml)
    validate_projection_model(model)
    assert model["experiment_id"].iloc[0] == "TS_01"
    assert model["pixel_spacing"].iloc[0] == 1.35
    # Warp's tilt sign is the opposite of cryotypes', level angles applied
    np.testing.assert_allclose(model["rotation_y"], [3.5, 0.5, -2.5])
    np.testing.assert_allclose(model["rotation_x"], 1.5)
    np.testing.assert_allclose(model["rotation_z"], [85, 85, 85.5])
    np.testing.assert_allclose(model["dx"], [10.0, 0.0, -20.0])  # Å / 1.35
    np.testing.assert_allclose(model["dy"], [0.0, 2.0, 0.0])
    assert model["excluded"].tolist() == [False, False, True]
    assert model["pre_exposure"].tolist() == [3.0, 0.0, 6.0]
    np.testing.assert_allclose(model["defocus_u"], [31000, 31000, 32500])  # (µm + delta/2) * 1e4
    np.testing.assert_allclose(model["defocus_v"], [29000, 31000, 31500])
    np.testing.assert_allclose(model["defocus_angle"], [45, 0, -30])
    np.testing.assert_allclose(model["phase_shift"], [90, 0, 0])
    assert (model["voltage"] == 300).all()
    assert (model["spherical_aberration"] == 2.7).all()
    assert (model["amplitude_contrast"] == 0.07).all()
    assert (model["defocus_handedness"] == 1).all()  # AreAnglesInverted True -> rlnTomoHand +1 (Warp)
    np.testing.assert_allclose(model[["tilt_image_center_x", "tilt_image_center_y"]], 2048.0)
    np.testing.assert_allclose(
        model[["specimen_center_x", "specimen_center_y", "specimen_center_z"]].iloc[0], [2048, 2048, 500]
    )


def _warp_euler(rot: float, tilt: float, psi: float) -> np.ndarray:
    """Warp's Matrix3.Euler (RELION's Euler_angles2matrix), radians."""
    ca, cb, cg = np.cos([rot, tilt, psi])
    sa, sb, sg = np.sin([rot, tilt, psi])
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array(
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ]
    )


def test_projection_equals_warps_own_formula(xml: Path) -> None:
    """Warp: M_t (c - V/2) + offset + I/2 in Å, M_t = Euler(0, angle + LevelY, -axis) RotateX(LevelX)."""
    model = read_warp_tilt_series(xml)
    px = 1.35
    rng = np.random.default_rng(0)
    points_A = rng.uniform(0, [5529.6, 5529.6, 1350], size=(5, 3))
    centre = model[["specimen_center_x", "specimen_center_y", "specimen_center_z"]].iloc[0].to_numpy()
    matrices = projection_model_to_projection_matrices(
        model, (2048.0, 2048.0), (4096, 4096, 1000), specimen_center=centre
    )
    angles, axes, offx = [-3, 0, 3], [85, 85, 85.5], [13.5, 0, -27]
    offy = [0, 2.7, 0]
    for t in range(3):
        c, s = np.cos(np.radians(1.5)), np.sin(np.radians(1.5))
        rot_x = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
        m = _warp_euler(0, np.radians(angles[t] - 0.5), -np.radians(axes[t])) @ rot_x
        warp = (m @ (points_A - [2764.8, 2764.8, 675]).T).T[:, :2] + [offx[t], offy[t]] + [2764.8, 2764.8]
        ours = (matrices[t] @ np.c_[points_A / px, np.ones(5)].T).T[:, :2] * px
        np.testing.assert_allclose(ours, warp, atol=1e-6)


def test_dispatch_and_sniff(xml: Path, tmp_path: Path) -> None:
    assert read_alignment(xml)["rotation_y"].tolist() == pytest.approx([3.5, 0.5, -2.5])
    other = tmp_path / "TS_01.meta"
    other.write_text(warp_xml())
    assert len(read_alignment(other)) == 3
    assert describe(xml)["kind"] == "alignment"


def test_pixel_size_asked_for_and_unfitted_ctf_absent(tmp_path: Path) -> None:
    path = tmp_path / "TS_02.xml"
    path.write_text(warp_xml(options="", grids=False, inverted="False"))
    with pytest.raises(InvalidValueError, match="pixel_spacing="):
        read_warp_tilt_series(path)
    model = read_warp_tilt_series(path, pixel_spacing=2.7)
    assert "defocus_u" not in model
    assert (model["defocus_handedness"] == -1).all()
    np.testing.assert_allclose(model["dx"], [5.0, 0.0, -10.0])


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("<Dose>3\n0\n6</Dose>", "<Dose>3\n0</Dose>", "one per angle"),
        ("<Angles>-3", "<Angles>x3", "expected a number"),
        ("True\nTrue\nFalse", "True\nyes\nFalse", "True or False"),
        ('Depth="3"', 'Depth="4"', "Depth = 3"),
        ("<TiltSeries ", "<Movie ", "TiltSeries"),
        ("</TiltSeries>", "", "well-formed"),
    ],
)
def test_bad_xml(tmp_path: Path, old: str, new: str, match: str) -> None:
    path = tmp_path / "TS_01.xml"
    text = warp_xml()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(FormatError, match=match) as err:
        read_warp_tilt_series(path)
    assert isinstance(err.value, CryoxrError)
    assert str(path) in str(err.value)


def test_entities_refused(tmp_path: Path) -> None:
    path = tmp_path / "TS_01.xml"
    path.write_text(
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><TiltSeries><Angles>&a;</Angles></TiltSeries>'
    )
    with pytest.raises(FormatError, match="DOCTYPE"):
        read_warp_tilt_series(path)


@pytest.fixture
def warp_star(tmp_path: Path) -> Path:
    import pandas as pd

    table = pd.DataFrame(
        {
            "rlnCoordinateX": [100.5, 110.0],
            "rlnCoordinateY": [200.0, 210.0],
            "rlnCoordinateZ": [50.0, 55.0],
            "rlnAngleRot": [10.0, 0.0],
            "rlnAngleTilt": [20.0, 0.0],
            "rlnAnglePsi": [30.0, 0.0],
            "rlnMicrographName": ["TS_01.tomostar", "TS_02.tomostar"],
            "rlnMagnification": [10000.0, 10000.0],
            "rlnDetectorPixelSize": [10.0, 10.0],
            "rlnAutopickFigureOfMerit": [0.31, 0.25],
        }
    )
    path = tmp_path / "matches.star"
    starfile.write(table, path)  # starfile writes RELION 3.0 style: one block, no optics
    return path


def test_warp_star(warp_star: Path) -> None:
    poses = read_poses(warp_star)
    assert poses.attrs["pixel_spacing"] == 10.0  # 1e4 * 10 / 10000
    assert poses["experiment_id"].values.tolist() == ["TS_01", "TS_02"]
    np.testing.assert_allclose(poses["position"].values[0], [100.5, 200.0, 50.0])
    np.testing.assert_allclose(poses["rlnAutopickFigureOfMerit"], [0.31, 0.25])
    # RELION's Euler convention (Warp uses the same): orientation = ZYZ(rot, tilt, psi)^-1
    expected = Rotation.from_euler("ZYZ", [10, 20, 30], degrees=True).inv()
    got = Rotation.from_quat(poses["orientation"].values[0])
    assert (got * expected.inv()).magnitude() < 1e-9
    with pytest.raises(InvalidValueError, match="contradicts"):
        read_warp_particles(warp_star, pixel_spacing=5.0)


def test_warp_star_without_pixel_size(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "p.star"
    starfile.write(
        pd.DataFrame(
            {
                "rlnCoordinateX": [1.0],
                "rlnCoordinateY": [2.0],
                "rlnCoordinateZ": [3.0],
                "rlnMicrographName": ["a.tomostar"],
            }
        ),
        path,
    )
    with pytest.raises(InvalidValueError, match="pixel_spacing="):
        read_warp_particles(path)
    assert read_warp_particles(path, pixel_spacing=4.0)["experiment_id"].values.tolist() == ["a"]
