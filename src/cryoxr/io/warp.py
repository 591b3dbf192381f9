"""Warp/M tilt-series XML -> ProjectionModel, and Warp's particle STAR -> PoseSet.

**Tilt-series XML** (what Warp's ``TiltSeries.SaveMeta`` writes; facts from
``WarpLib/TiltSeries/TiltSeries.cs``)::

    <TiltSeries AreAnglesInverted="True" LevelAngleX="1.5" LevelAngleY="-0.5"
                ImageDimensionsAngstrom="5529.6, 5529.6" VolumeDimensionsAngstrom="...">
      <Angles>-3\\n0\\n3</Angles>           per tilt, degrees, one value a line (stack order)
      <Dose>2.5\\n0\\n5</Dose>              per tilt, accumulated dose before it, e/Å²
      <UseTilt>True\\nTrue\\nFalse</UseTilt>
      <AxisAngle>85\\n85\\n85</AxisAngle>   per tilt, degrees
      <AxisOffsetX>..</AxisOffsetX>         per tilt, Å, in the tilt image
      <AxisOffsetY>..</AxisOffsetY>
      <CTF><Param Name="Voltage" Value="300" /> ... Cs (mm), Amplitude, PixelSize</CTF>
      <OptionsCTF><Param Name="PixelSize" Value="1.35" /> ...</OptionsCTF>
      <GridCTF Width="1" Height="1" Depth="3"><Node X="0" Y="0" Z="0" Value="3.1" />...
      <GridCTFDefocusDelta .../> <GridCTFDefocusAngle .../> <GridCTFPhase .../>
    </TiltSeries>

Geometry. Warp projects a point ``c`` (Å) of the volume with
``M_t (c - V/2) + (AxisOffsetX, AxisOffsetY) + I/2``, ``M_t = Euler(0, angle + LevelAngleY,
-AxisAngle) · RotateX(LevelAngleX)`` in RELION's Euler convention; that matrix equals
cryotypes' ``Rz(AxisAngle) · Ry(-(angle + LevelAngleY)) · Rx(LevelAngleX)`` exactly, so
(:data:`XML_PER_TILT`) ``rotation_z = AxisAngle``, ``rotation_y = -(Angles + LevelAngleY)``
(Warp's tilt sign is the opposite of cryotypes'), ``rotation_x = LevelAngleX``,
``dx, dy = AxisOffsetX/Y / pixel size``. The centres are Warp's: ``tilt_image_center`` =
``ImageDimensionsAngstrom / 2`` and ``specimen_center`` = ``VolumeDimensionsAngstrom / 2``,
in pixels (per-tilt columns). Optics (:data:`XML_GRIDS`, :data:`XML_CTF_PARAMS`): per-tilt
``GridCTF`` defocus (µm) and ``GridCTFDefocusDelta`` become ``defocus_u/v = (defocus ±
delta / 2) · 10⁴`` Å (as Warp's own RELION export), ``GridCTFDefocusAngle`` the
astigmatism angle, ``GridCTFPhase`` (units of π) the phase shift in degrees; ``Dose`` is
``pre_exposure``, ``UseTilt = False`` is ``excluded``, and ``AreAnglesInverted`` gives
``defocus_handedness = +1`` (else -1), as Warp writes ``rlnTomoHand``. Warp keeps geometry
in Å, so the pixel size only names the unit of ``dx``/``dy``: ``OptionsCTF``'s
``PixelSize`` (the raw data's) unless ``pixel_spacing=`` says otherwise; a file with neither
is refused. Grids of more than one node per tilt (not per-tilt values) are refused.

**Particle STAR** (Warp 1 / WarpTools, RELION 3.0 style): ``rlnCoordinateX/Y/Z`` in pixels,
``rlnAngleRot/Tilt/Psi`` (RELION's convention, as Warp's), ``rlnMicrographName`` =
``TS_01.tomostar``; the pixel size of the coordinates is ``rlnPixelSize`` or
``1e4 · rlnDetectorPixelSize / rlnMagnification`` (the pair Warp 1 writes), else
``pixel_spacing=``. Read by :func:`cryoxr.io.relion.read_relion_particles`; the experiment id
drops ``.tomostar``.

Examples
--------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "TS_01.xml").write_text('''<TiltSeries AreAnglesInverted="False" LevelAngleX="0"
...   LevelAngleY="0" ImageDimensionsAngstrom="1000, 800" VolumeDimensionsAngstrom="1000, 800, 300">
... <Angles>-3
... 3</Angles><Dose>3
... 0</Dose><UseTilt>True
... False</UseTilt><AxisAngle>85
... 85</AxisAngle><OptionsCTF><Param Name="PixelSize" Value="10" /></OptionsCTF></TiltSeries>''')
>>> model = read_warp_tilt_series(folder / "TS_01.xml")
>>> model[["rotation_y", "rotation_z", "pre_exposure", "excluded", "tilt_image_center_x"]].values.tolist()
[[3.0, 85.0, 3.0, False, 50.0], [-3.0, 85.0, 0.0, True, 50.0]]
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from cryoxr.errors import FormatError, InvalidValueError
from cryoxr.io._paths import TEXT_MAX_BYTES, PathLike, read_bytes
from cryoxr.io.plaintext import file_model, require_pixel_spacing
from cryoxr.projection_model import PMDL, PTC

__all__ = ["XML_CTF_PARAMS", "XML_GRIDS", "XML_PER_TILT", "read_warp_particles", "read_warp_tilt_series"]


@dataclass(frozen=True)
class XmlList:
    """A per-tilt element holding one value a line: ``column = value * scale``."""

    element: str
    column: str
    kind: str = "float"  # or "bool"
    scale: float = 1.0
    required: bool = False


#: per-tilt elements -> intermediate columns (angles are converted afterwards)
XML_PER_TILT: tuple[XmlList, ...] = (
    XmlList("Angles", "warp_angle", required=True),
    XmlList("Dose", PTC.PRE_EXPOSURE),
    XmlList("UseTilt", "use_tilt", kind="bool"),
    XmlList("AxisAngle", PMDL.ROTATION_Z),
    XmlList("AxisOffsetX", "axis_offset_x"),
    XmlList("AxisOffsetY", "axis_offset_y"),
)

#: per-tilt CubicGrid elements (1 x 1 x n nodes) -> columns, with their scale to cryoxr units
XML_GRIDS: dict[str, tuple[str, float]] = {
    "GridCTF": ("warp_defocus", 1e4),  # µm -> Å, mean defocus
    "GridCTFDefocusDelta": ("warp_defocus_delta", 1e4),  # µm -> Å, U - V
    "GridCTFDefocusAngle": (PTC.DEFOCUS_ANGLE, 1.0),
    "GridCTFPhase": (PTC.PHASE_SHIFT, 180.0),  # units of π -> degrees
}

#: ``<CTF><Param Name=... Value=...>`` -> per-experiment columns
XML_CTF_PARAMS: dict[str, str] = {
    "Voltage": PTC.VOLTAGE,
    "Cs": PTC.SPHERICAL_ABERRATION,
    "Amplitude": PTC.AMPLITUDE_CONTRAST,
}


def _float(path: Path, where: str, text: str | None) -> float:
    try:
        value = float(text) if text is not None else float("nan")
    except ValueError:
        raise FormatError(f"{path}, {where}: expected a number, found {text!r}") from None
    if not np.isfinite(value):
        raise FormatError(f"{path}, {where}: expected a finite number, found {text!r}")
    return value


def _values(path: Path, element: ET.Element, spec: XmlList) -> np.ndarray:
    tokens = [t.strip() for t in (element.text or "").split("\n") if t.strip()]
    if spec.kind == "bool":
        bad = [t for t in tokens if t.lower() not in ("true", "false")]
        if bad:
            raise FormatError(f"{path}, <{spec.element}>: expected True or False per line, found {bad[0]!r}")
        return np.array([t.lower() == "true" for t in tokens])
    return np.array([_float(path, f"<{spec.element}>", t) * spec.scale for t in tokens])


def _params(path: Path, root: ET.Element, block: str) -> dict[str, str]:
    node = root.find(block)
    if node is None:
        return {}
    return {p.get("Name", ""): p.get("Value", "") for p in node.findall("Param")}


def _grid(path: Path, root: ET.Element, name: str, n: int) -> np.ndarray | None:
    node = root.find(name)
    if node is None:
        return None
    dims = [int(_float(path, f"<{name}> {a}", node.get(a, "1"))) for a in ("Width", "Height", "Depth")]
    nodes = node.findall("Node")
    if dims[:2] != [1, 1] and nodes:
        raise FormatError(f"{path}, <{name}>: expected a per-tilt grid (Width = Height = 1), found {dims}")
    if not nodes or (dims[2] == 1 and n > 1):
        return None  # Warp's empty default grid: nothing fitted
    if dims[2] != n:
        raise FormatError(f"{path}, <{name}>: expected Depth = {n} (one node per tilt), found {dims[2]}")
    values = np.zeros(n)
    for item in nodes:
        z = int(_float(path, f"<{name}> Node Z", item.get("Z")))
        if not 0 <= z < n:
            raise FormatError(f"{path}, <{name}>: Node Z must be in 0..{n - 1}, found {z}")
        values[z] = _float(path, f"<{name}> Node Value", item.get("Value"))
    return values


def _pair(path: Path, root: ET.Element, name: str, size: int) -> np.ndarray | None:
    text = root.get(name)
    if text is None:
        return None
    parts = [t for t in text.replace(",", " ").split() if t]
    if len(parts) != size:
        raise FormatError(f"{path}, attribute {name}: expected {size} numbers, found {text!r}")
    values = np.array([_float(path, f"attribute {name}", t) for t in parts])
    if not (values > 0).all():
        raise FormatError(f"{path}, attribute {name}: expected sizes > 0 Å, found {text!r}")
    return values


def _root(path: Path) -> ET.Element:
    data = read_bytes(path, what="Warp tilt-series XML", max_bytes=TEXT_MAX_BYTES)
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise FormatError(
            f"{path}: expected a Warp tilt-series XML, found a DOCTYPE/ENTITY declaration (refused)"
        )
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise FormatError(f"{path}: expected well-formed XML (Warp tilt series), found {err}") from None
    if root.tag != "TiltSeries":
        raise FormatError(f"{path}: expected a <TiltSeries> root element (Warp), found <{root.tag}>")
    return root


def read_warp_tilt_series(
    path: PathLike, *, pixel_spacing: float | None = None, experiment_id: str | None = None
) -> pd.DataFrame:
    """Read a Warp/M tilt-series XML into a ProjectionModel with per-tilt optics.

    Parameters
    ----------
    path
        The ``TS_01.xml`` Warp writes beside the tilt series' ``.tomostar``.
    pixel_spacing
        Å per pixel for ``dx``/``dy`` and the centres; default ``OptionsCTF``'s
        ``PixelSize``. Warp stores geometry in Å, so this only chooses the unit.
    experiment_id
        Default: the file's stem.

    Returns
    -------
    pandas.DataFrame
        One row per tilt in stack order (excluded tilts kept, flagged ``excluded``).

    Raises
    ------
    FormatError
        Not a Warp tilt-series XML, per-tilt lists of different lengths, a value that is not
        a number, a grid that is not per tilt.
    InvalidValueError
        No pixel size in the file and no ``pixel_spacing=``.
    """
    p = Path(path)
    root = _root(p)
    columns: dict[str, np.ndarray] = {}
    for spec in XML_PER_TILT:
        node = root.find(spec.element)
        if node is None:
            if spec.required:
                raise FormatError(f"{p}: expected a <{spec.element}> element (Warp tilt series), found none")
            continue
        columns[spec.column] = _values(p, node, spec)
    n = len(columns["warp_angle"])
    if n == 0:
        raise FormatError(f"{p}: expected at least one tilt in <Angles>, found none")
    wrong = {c: len(v) for c, v in columns.items() if len(v) != n}
    if wrong:
        raise FormatError(
            f"{p}: expected {n} values (one per angle) in every per-tilt element, found {wrong}"
        )
    options = _params(p, root, "OptionsCTF")
    if pixel_spacing is None and options.get("PixelSize"):
        pixel_spacing = _float(p, "OptionsCTF PixelSize", options["PixelSize"])
    spacing = require_pixel_spacing(pixel_spacing, p, "Warp XML without OptionsCTF PixelSize")
    level_x = _float(p, "attribute LevelAngleX", root.get("LevelAngleX", "0"))
    level_y = _float(p, "attribute LevelAngleY", root.get("LevelAngleY", "0"))
    inverted = root.get("AreAnglesInverted", "False").strip().lower()
    if inverted not in ("true", "false"):
        raise FormatError(f"{p}, attribute AreAnglesInverted: expected True or False, found {inverted!r}")
    extra: dict[str, Any] = {}
    if PTC.PRE_EXPOSURE in columns:
        extra[PTC.PRE_EXPOSURE] = columns[PTC.PRE_EXPOSURE]
    extra[PTC.EXCLUDED] = ~columns["use_tilt"] if "use_tilt" in columns else np.zeros(n, bool)
    image = _pair(p, root, "ImageDimensionsAngstrom", 2)
    if image is not None:
        extra.update(dict(zip(PTC.TILT_IMAGE_CENTER, image / 2 / spacing, strict=True)))
    volume = _pair(p, root, "VolumeDimensionsAngstrom", 3)
    if volume is not None:
        extra.update(dict(zip(PTC.SPECIMEN_CENTER, volume / 2 / spacing, strict=True)))
    grids = {
        column: (values * scale)
        for name, (column, scale) in XML_GRIDS.items()
        if (values := _grid(p, root, name, n)) is not None
    }
    if "warp_defocus" in grids:
        delta = grids.pop("warp_defocus_delta", np.zeros(n))
        mean = grids.pop("warp_defocus")
        extra[PTC.DEFOCUS_U], extra[PTC.DEFOCUS_V] = mean + delta / 2, mean - delta / 2
        extra.update(grids)
    ctf = _params(p, root, "CTF")
    for name, column in XML_CTF_PARAMS.items():
        if ctf.get(name):
            extra[column] = _float(p, f"CTF {name}", ctf[name])
    extra[PTC.DEFOCUS_HANDEDNESS] = 1.0 if inverted == "true" else -1.0
    geometry = {
        PMDL.ROTATION_X: level_x,
        PMDL.ROTATION_Y: -(columns["warp_angle"] + level_y),
        PMDL.ROTATION_Z: columns.get(PMDL.ROTATION_Z, 0.0),
        PMDL.SHIFT_X: columns.get("axis_offset_x", np.zeros(n)) / spacing,
        PMDL.SHIFT_Y: columns.get("axis_offset_y", np.zeros(n)) / spacing,
    }
    return file_model(
        p,
        geometry,
        experiment_id=experiment_id,
        pixel_spacing=spacing,
        extra=extra,
        attrs={
            "format": "warp-xml",
            "level_angles": (level_x, level_y),
            "are_angles_inverted": inverted == "true",
        },
    )


#: particle-STAR columns that give the coordinates' pixel size, tried in order
PIXEL_SIZE_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("rlnPixelSize",),
    ("rlnDetectorPixelSize", "rlnMagnification"),
)


def read_warp_particles(
    path: PathLike, *, pixel_spacing: float | None = None, chunks: int | None = None
) -> xr.Dataset:
    """Read a Warp particle STAR (RELION 3.0 style, pixel coordinates) into a PoseSet.

    Parameters
    ----------
    path
        The STAR file (template matching or ``ts_export_particles`` output).
    pixel_spacing
        Å per pixel of the coordinates, for a file without ``rlnPixelSize`` or
        ``rlnDetectorPixelSize`` + ``rlnMagnification``; refused when it contradicts them.
    chunks
        Particles per chunk (a dask-backed PoseSet).

    Returns
    -------
    xarray.Dataset
        The PoseSet; ``experiment_id`` is ``rlnMicrographName`` (or ``rlnTomoName``)
        without ``.tomostar``; every other column is kept as a data variable.
    """
    from cryoxr.io.relion import read_relion_particles
    from cryoxr.io.star import read_star

    p = Path(path)
    blocks = read_star(p)
    table = next((b.table for b in blocks.values() if b.loop and "rlnCoordinateX" in b.table), None)
    if table is None:
        raise FormatError(f"{p}: expected a loop with rlnCoordinateX/Y/Z (Warp particle STAR), found none")
    if not len(table):
        raise FormatError(f"{p}: expected at least one particle row, found none")
    stored: float | None = None
    for labels in PIXEL_SIZE_COLUMNS:
        if all(label in table for label in labels):
            values = pd.to_numeric(table[labels[0]], errors="coerce").to_numpy(float)
            if len(labels) == 2:
                values = 1e4 * values / pd.to_numeric(table[labels[1]], errors="coerce").to_numpy(float)
            if not (np.isfinite(values).all() and (values > 0).all()) or np.ptp(values) > 1e-6 * values.max():
                raise FormatError(
                    f"{p}: expected one pixel size > 0 in {list(labels)}, found {sorted(set(values))[:5]}"
                )
            stored = float(values[0])
            break
    if (
        stored is not None
        and pixel_spacing is not None
        and not np.isclose(stored, float(pixel_spacing), rtol=1e-6)
    ):
        raise InvalidValueError(f"{p}: pixel_spacing={pixel_spacing} contradicts the file's {stored} Å")
    spacing = (
        stored
        if stored is not None
        else require_pixel_spacing(pixel_spacing, p, "Warp particle STAR without rlnPixelSize")
    )
    ds = read_relion_particles(p, pixel_spacing=spacing, chunks=chunks)
    if "experiment_id" in ds.coords:
        names = np.asarray(ds["experiment_id"].values).astype(str)
        ds = ds.assign_coords(experiment_id=("particle", np.char.replace(names, ".tomostar", "")))
    ds.attrs["source"] = str(p)
    ds.attrs["format"] = "warp-star"
    return ds
