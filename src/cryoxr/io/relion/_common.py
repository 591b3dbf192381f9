"""What the RELION particle and tilt-series modules share.

- the writers' :data:`VERSIONS` and :data:`DECIMALS`, the tomogram-size labels;
- RELION's ZYZ Euler angles <-> cryoxr's quaternions (docs/CONVENTIONS.md §3), in
  closed form (vectorised);
- numeric columns checked (finite, numbers) and turned from Å into pixels, errors naming
  file, block, row and column;
- STAR blocks <-> plain lists and dicts, kept in ``attrs`` so they survive zarr;
- the tomogram table of a ``tomograms.star`` (:func:`relion_tomograms_table`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from cryoxr.errors import FormatError
from cryoxr.io.star import StarBlock, read_star

__all__ = ["DECIMALS", "TOMOGRAM_SIZE_LABELS", "VERSIONS", "TomogramsInput", "relion_tomograms_table"]

#: decimals kept of the values cryoxr computes when writing (Å, pixels, degrees)
DECIMALS = 10

#: writer version -> (``# version`` number, layout of 3D coordinates); 2D sets always use "pixel"
#: (layout names: :data:`cryoxr.io.relion.particles.PARTICLE_LAYOUTS`)
VERSIONS: dict[int, tuple[int, str]] = {3: (30001, "pixel"), 4: (30001, "pixel"), 5: (50001, "centred")}

TOMOGRAM_SIZE_LABELS = ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")

TomogramsInput = str | os.PathLike[str] | pd.DataFrame | Mapping[str, Sequence[float]]


def _in_pixels(
    path: Path, block: str, labels: Sequence[str], angstrom: np.ndarray, px: float, px_label: str
) -> np.ndarray:
    """``angstrom / px`` for (n, k) columns ``labels``; a non-finite quotient names row and column."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        pixels = np.asarray(angstrom, dtype=np.float64) / px
    bad = ~np.isfinite(pixels)
    if bad.any():
        row, col = np.argwhere(bad.reshape(len(pixels), -1))[0]
        raise FormatError(
            f"{path}, data_{block}, row {int(row) + 1}, column {labels[col]}: expected a finite number of "
            f"pixels, found {float(angstrom.reshape(len(pixels), -1)[row, col])!r} Å / {px_label} {px!r} Å"
        )
    return pixels


def _finite(path: Path, block: str, table: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    """The columns as an (n, k) float64 array; NaN/inf is a FormatError naming row and column."""
    values = np.empty((len(table), len(labels)))
    for j, label in enumerate(labels):
        column = table[label]
        if not pd.api.types.is_numeric_dtype(column.dtype):
            raise FormatError(f"{path}, data_{block}, column {label}: expected numbers, found text")
        values[:, j] = column.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise FormatError(
            f"{path}, data_{block}, row {int(row) + 1}, column {labels[col]}: expected a finite number, "
            f"found {values[row, col]}"
        )
    return values


def _block_to_json(block: StarBlock) -> dict[str, Any]:
    return {
        "name": block.name,
        "loop": block.loop,
        "version": block.version,
        "columns": {str(k): block.table[k].tolist() for k in block.table.columns},
    }


def _block_from_json(data: Mapping[str, Any], version: int | None) -> StarBlock:
    return StarBlock(str(data["name"]), pd.DataFrame(dict(data["columns"])), bool(data["loop"]), version)


def _relion_quaternions(angles: np.ndarray) -> np.ndarray:
    """(n, 4) xyzw quaternions of ``Rotation.from_euler("ZYZ", angles, degrees=True).inv()``.

    Closed form of ``q_z(rot) q_y(tilt) q_z(psi)``, conjugated (vectorised; scipy's
    ``from_euler`` is ~20x slower for 10^6 particles). Tested against scipy and eulerangles.
    """
    angles = np.asarray(angles, dtype=np.float64).reshape(-1, 3)
    out = np.empty((len(angles), 4))
    step = 1 << 16  # blocks of rows: the temporaries stay in cache, not (n,)-sized
    for start in range(0, len(angles), step):
        half = np.deg2rad(angles[start : start + step]) / 2
        a, b, c = half[:, 0], half[:, 1], half[:, 2]
        sb, cb = np.sin(b), np.cos(b)
        block = out[start : start + step]
        np.multiply(-sb, np.sin(c - a), out=block[:, 0])
        np.multiply(-sb, np.cos(a - c), out=block[:, 1])
        np.multiply(-cb, np.sin(a + c), out=block[:, 2])
        np.multiply(cb, np.cos(a + c), out=block[:, 3])
    return out


def _rotation_from_relion(angles: np.ndarray) -> Rotation:
    return Rotation.from_quat(_relion_quaternions(angles))


def _wrap(degrees: np.ndarray) -> np.ndarray:
    return 180.0 - np.mod(180.0 - degrees, 360.0)  # into (-180, 180]


def _relion_euler(quaternions: np.ndarray) -> np.ndarray:
    """(n, 3) rot, tilt, psi (degrees) of orientations given as (n, 4) xyzw quaternions.

    The inverse of :func:`_relion_quaternions`: tilt in [0, 180], rot and psi in
    (-180, 180]. At tilt 0 the whole in-plane angle goes to psi (rot = 0); at tilt 180
    to rot (psi = 0).
    """
    q = np.asarray(quaternions, dtype=np.float64).reshape(-1, 4)
    x, y, z, w = -q[:, 0], -q[:, 1], -q[:, 2], q[:, 3]  # the passive (RELION) rotation
    sin_half, cos_half = np.hypot(x, y), np.hypot(z, w)
    total = np.arctan2(z, w)  # (rot + psi) / 2
    diff = np.arctan2(-x, y)  # (rot - psi) / 2
    diff = np.where(sin_half < 1e-12, -total, diff)
    total = np.where(cos_half < 1e-12, diff, total)
    rot, psi = np.rad2deg(total + diff), np.rad2deg(total - diff)
    tilt = np.rad2deg(2 * np.arctan2(sin_half, cos_half))
    return np.column_stack([_wrap(rot), tilt, _wrap(psi)])


def _clean(values: np.ndarray) -> np.ndarray:
    return np.round(values, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def relion_tomograms_table(tomograms: TomogramsInput) -> pd.DataFrame:
    """The RELION tomogram table (``data_global`` of ``tomograms.star``) as a DataFrame.

    Parameters
    ----------
    tomograms
        A ``tomograms.star`` path, a table with ``rlnTomoName`` and ``rlnTomoSizeX/Y/Z``,
        a ProjectionModel with ``tomogram_size_x/_y/_z`` columns (as
        :func:`~cryoxr.io.relion.read_relion_tilt_series` returns, also after ``pd.concat``
        or parquet), or a mapping ``{tomo_name: (X, Y, Z)}`` of bin-1 sizes.

    Returns
    -------
    pandas.DataFrame
        One row per tomogram, RELION labels as columns.

    Examples
    --------
    >>> relion_tomograms_table({"TS_01": (4096, 4096, 1000)}).to_dict("list")
    {'rlnTomoName': ['TS_01'], 'rlnTomoSizeX': [4096], 'rlnTomoSizeY': [4096], 'rlnTomoSizeZ': [1000]}
    """
    if isinstance(tomograms, pd.DataFrame):
        if "rlnTomoName" in tomograms.columns:
            return tomograms
        relion = tomograms.attrs.get("relion")
        table = pd.DataFrame(dict(relion["tomograms"])) if relion is not None else None
        sizes = _model_sizes(tomograms)
        if table is None:
            return tomograms if sizes is None else sizes
        if sizes is not None:  # the columns are the model's own, current values
            merged = table.merge(sizes, on="rlnTomoName", how="left", suffixes=("_read", ""))
            for label in TOMOGRAM_SIZE_LABELS:
                if f"{label}_read" in merged.columns:
                    merged[label] = merged[label].fillna(merged.pop(f"{label}_read"))
            table = merged[[*table.columns, *(c for c in TOMOGRAM_SIZE_LABELS if c not in table.columns)]]
        return table
    if isinstance(tomograms, Mapping):
        names = [str(k) for k in tomograms]
        given = np.asarray([list(v) for v in tomograms.values()], dtype=np.int64).reshape(-1, 3)
        return pd.DataFrame(
            {"rlnTomoName": names, **{label: given[:, i] for i, label in enumerate(TOMOGRAM_SIZE_LABELS)}}
        )
    path = Path(tomograms)
    return _tomograms_block(path, read_star(path)).table


def _model_sizes(model: pd.DataFrame) -> pd.DataFrame | None:
    """``rlnTomoName`` and sizes from a ProjectionModel's ``tomogram_size_x/_y/_z`` columns, or None."""
    columns = ["tomogram_size_x", "tomogram_size_y", "tomogram_size_z"]
    if not {"experiment_id", *columns} <= set(model.columns):
        return None
    first = model.groupby(model["experiment_id"].astype(str), sort=False)[columns].first().dropna()
    return pd.DataFrame(
        {
            "rlnTomoName": first.index.astype(str),
            **{
                label: first[c].to_numpy().astype(np.int64)
                for label, c in zip(TOMOGRAM_SIZE_LABELS, columns, strict=True)
            },
        }
    )


def _tomograms_block(path: Path, blocks: Mapping[str, StarBlock]) -> StarBlock:
    """The tomogram table of a ``tomograms.star``: ``data_global``, else its first loop block."""
    block = blocks.get("global") or next((b for b in blocks.values() if b.loop), None)
    if block is None:
        raise FormatError(
            f"{path}: expected a data_global loop block of tomograms, found blocks {list(blocks)}"
        )
    return block
