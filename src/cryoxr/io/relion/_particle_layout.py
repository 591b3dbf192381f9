"""The layout of a RELION particle file: coordinate labels, blocks, pixel sizes, tomogram sizes.

What :mod:`cryoxr.io.relion.particles` reads and writes by, as data: the coordinate
layouts (:data:`PARTICLE_LAYOUTS`: RELION 3.1/4 pixels, RELION 5 centred Å), the origin,
angle and experiment labels, which optics labels give the pixel size, and the helpers that
find the particle block, the pixel size (``pixel_spacing=`` for RELION 3.0 files, which
have no optics block) and each particle's tomogram size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryoxr.errors import FormatError, InvalidValueError
from cryoxr.io.relion._common import TOMOGRAM_SIZE_LABELS, TomogramsInput, _finite, relion_tomograms_table
from cryoxr.io.star import StarBlock

__all__ = [
    "ANGLE_LABELS",
    "EXPERIMENT_LABELS",
    "ORIGIN_LABELS",
    "PARTICLE_LAYOUTS",
    "PIXEL_ORIGIN_LABELS",
    "PIXEL_SIZE_LABELS",
    "SUBTOMOGRAM_ANGLE_LABELS",
    "CoordinateLayout",
]


@dataclass(frozen=True)
class CoordinateLayout:
    """How particle positions are written in one RELION flavour."""

    labels: tuple[str, ...]  #: x, y(, z) labels
    unit: str  #: "pixel" (bin-1 tilt-series pixels) or "angstrom"
    centred: bool  #: relative to the tomogram centre ``size / 2.0`` (RELION 5)


#: the coordinate layouts, by name
PARTICLE_LAYOUTS: dict[str, CoordinateLayout] = {
    "pixel": CoordinateLayout(("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"), "pixel", False),
    "centred": CoordinateLayout(
        ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"),
        "angstrom",
        True,
    ),
}

ORIGIN_LABELS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
#: RELION 3.0 origins, in pixels of the particle images
PIXEL_ORIGIN_LABELS = ("rlnOriginX", "rlnOriginY", "rlnOriginZ")
ANGLE_LABELS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
SUBTOMOGRAM_ANGLE_LABELS = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
#: dimensionality -> labels that may hold the experiment id, in order of preference
EXPERIMENT_LABELS = {3: ("rlnTomoName", "rlnMicrographName"), 2: ("rlnMicrographName", "rlnTomoName")}
#: optics labels that may hold the pixel size of coordinates, in order of preference
PIXEL_SIZE_LABELS = ("rlnTomoTiltSeriesPixelSize", "rlnMicrographPixelSize", "rlnImagePixelSize")


def _tomogram_sizes(tomograms: TomogramsInput, where: str) -> dict[str, np.ndarray]:
    table = relion_tomograms_table(tomograms)
    missing = [label for label in ("rlnTomoName", *TOMOGRAM_SIZE_LABELS) if label not in table.columns]
    if missing:
        raise InvalidValueError(f"{where}: the tomogram table lacks {missing}; found {list(table.columns)}")
    sizes = table[list(TOMOGRAM_SIZE_LABELS)].to_numpy(dtype=np.float64)
    return {str(name): sizes[i] for i, name in enumerate(table["rlnTomoName"].astype(str))}


def _sizes_per_particle(sizes: Mapping[str, np.ndarray], ids: np.ndarray, where: str) -> np.ndarray:
    codes, names = pd.factorize(np.asarray(ids).reshape(-1))
    return _sizes_by_code(sizes, codes, np.asarray(names), where)


def _sizes_by_code(
    sizes: Mapping[str, np.ndarray], codes: np.ndarray, names: np.ndarray, where: str
) -> np.ndarray:
    """(n, 3) tomogram sizes of particles given as codes into the tomogram ``names``."""
    absent = [str(n) for n in names if str(n) not in sizes]
    if absent:
        raise InvalidValueError(
            f"{where}: no tomogram size for {absent[:5]} (tomograms known: {sorted(sizes)[:10]})"
        )
    if len(names) == 0:  # an empty set
        return np.zeros((0, 3))
    return np.stack([np.asarray(sizes[str(n)], dtype=np.float64) for n in names])[codes]


# ----------------------------------------------------------------------------- particles


def _image_pixel_size(path: Path, block: str, table: pd.DataFrame, px: float) -> np.ndarray:
    """(n, 1) Å per pixel of RELION 3.0 origins: ``1e4 * rlnDetectorPixelSize / rlnMagnification``, else ``px``."""
    if not {"rlnDetectorPixelSize", "rlnMagnification"} <= set(table.columns):
        return np.full((len(table), 1), px)
    detector, magnification = _finite(path, block, table, ["rlnDetectorPixelSize", "rlnMagnification"]).T
    if (magnification <= 0).any() or (detector <= 0).any():
        row = int(np.argmax((magnification <= 0) | (detector <= 0)))
        raise FormatError(
            f"{path}, data_{block}, row {row + 1}: expected positive rlnDetectorPixelSize and rlnMagnification, "
            f"found {detector[row]} and {magnification[row]}"
        )
    return (1e4 * detector / magnification)[:, None]


def _particles_block(path: Path, blocks: Mapping[str, StarBlock]) -> StarBlock:
    if "particles" in blocks:
        return blocks["particles"]
    loops = [b for b in blocks.values() if b.loop and b.name not in ("optics", "general")]
    if len(loops) != 1:
        raise FormatError(
            f"{path}: expected one data_particles loop block, found blocks {[b.name for b in blocks.values()]}"
        )
    return loops[0]


def _pixel_size(
    path: Path, blocks: Mapping[str, StarBlock], table: pd.DataFrame, pixel_spacing: float | None
) -> tuple[float, str | None]:
    """Å per pixel of the coordinates: ``pixel_spacing=``, else the optics block's."""
    if pixel_spacing is not None:
        value = float(pixel_spacing)
        if not (np.isfinite(value) and value > 0):
            raise InvalidValueError(
                f"{path}: pixel_spacing must be a positive number of Å, found {pixel_spacing!r}"
            )
        optics = blocks.get("optics")
        label = next(
            (lab for lab in PIXEL_SIZE_LABELS if optics is not None and lab in optics.table.columns), None
        )
        if optics is not None and label is not None:
            stored = sorted({float(v) for v in optics.table[label]})
            if not np.allclose(stored, value, rtol=1e-6):
                # a stored pixel size is what the coordinates mean: a different one would move them
                raise InvalidValueError(
                    f"{path}: this file stores its own pixel size ({label} = "
                    f"{', '.join(f'{v:g}' for v in stored)} Å); pixel_spacing={value:g} differs. "
                    "pixel_spacing= is only for files without one (RELION 3.0): leave it out, or "
                    "rescale the PoseSet after reading"
                )
        return value, label
    optics = blocks.get("optics")
    if optics is None:
        raise FormatError(
            f"{path}: expected a data_optics block with one of {list(PIXEL_SIZE_LABELS)} (RELION >= 3.1), found "
            f"blocks {list(blocks)}; a RELION 3.0 file has none: pass pixel_spacing= (Å per pixel of its "
            "coordinates)"
        )
    label = next((lab for lab in PIXEL_SIZE_LABELS if lab in optics.table.columns), None)
    if label is None:
        raise FormatError(
            f"{path}, data_optics: expected a column {' or '.join(PIXEL_SIZE_LABELS)}, "
            f"found {list(optics.table.columns)}"
        )
    values = _finite(path, "optics", optics.table, [label])[:, 0]
    if len(table) and "rlnOpticsGroup" in table.columns and "rlnOpticsGroup" in optics.table.columns:
        # only the optics groups particles use (an empty set keeps them all)
        used = set(pd.unique(table["rlnOpticsGroup"]).tolist())
        values = values[optics.table["rlnOpticsGroup"].isin(used).to_numpy()]
    distinct = np.unique(values)
    if distinct.size != 1 or distinct[0] <= 0:
        raise InvalidValueError(
            f"{path}, data_optics, column {label}: expected one positive pixel size for all particles, "
            f"found {distinct.tolist()} (split the set by optics group)"
        )
    return float(distinct[0]), label
