"""RELION tilt series (``tomograms.star`` and its per-tilt-series files) <-> ProjectionModel.

:func:`read_relion_tilt_series` reads a RELION 5 ``tomograms.star`` and every per-tilt-series
STAR file it lists (``rlnTomoXTilt/YTilt/ZRot`` -> ``rotation_x/y/z``,
``rlnTomoX/YShiftAngst / px`` -> ``dx, dy``), or a RELION 4 / Warp ``tomograms.star`` whose
per-tilt blocks carry ``rlnTomoProjX/Y/Z/W`` matrix rows (converted to angles and shifts).
It returns one ProjectionModel for all tilt series; per-tilt columns cryoxr does not model
are kept as columns, and ``model.attrs`` holds (choice: attrs, like the other alignment
readers, so :func:`cryoxr.io.tables.read_alignment` can return it as is):

- ``tomogram_dimensions``: ``{tomo_name: [X, Y, Z]}`` bin-1 pixels,
- ``specimen_center``: ``{tomo_name: [X // 2, Y // 2, Z // 2]}`` (RELION's ``int(N / 2)``),
- ``tilt_image_center``: ``{tomo_name: [nx // 2, ny // 2]}`` of the tilt images, assumed
  ``(X, Y)`` unless ``tilt_image_size`` says otherwise,
- ``relion``: the ``tomograms.star`` table (sizes, binning, pixel sizes, ...) as
  ``{label: [values]}`` -- :func:`relion_tomograms_table` turns it into a DataFrame -- and
  the per-file layout needed to write the files back.

The three centre mappings go straight into :func:`cryoxr.project`.

Paths inside STAR files are resolved relative to the folder of the file that names them,
then relative to that folder's ancestors (RELION writes paths relative to its project
folder), then the current directory.

Examples
--------
See :func:`read_relion_tilt_series`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from cryoxr.errors import CryoxrFileNotFoundError, FileExistsNoOverwriteError, FormatError, InvalidValueError
from cryoxr.io.relion._common import (
    TOMOGRAM_SIZE_LABELS,
    VERSIONS,
    TomogramsInput,
    _block_to_json,
    _clean,
    _finite,
    _in_pixels,
    _tomograms_block,
    relion_tomograms_table,
)
from cryoxr.io.star import StarBlock, read_star, write_star
from cryoxr.projection_model import PMDL, make_projection_model, validate_projection_model

__all__ = ["TILT_ALIGNMENT_LABELS", "read_relion_tilt_series", "write_relion_tilt_series"]

#: ProjectionModel column -> (per-tilt RELION 5 label, multiply the model value by the pixel size)
TILT_ALIGNMENT_LABELS: dict[str, tuple[str, bool]] = {
    PMDL.ROTATION_X: ("rlnTomoXTilt", False),
    PMDL.ROTATION_Y: ("rlnTomoYTilt", False),
    PMDL.ROTATION_Z: ("rlnTomoZRot", False),
    PMDL.SHIFT_X: ("rlnTomoXShiftAngst", True),
    PMDL.SHIFT_Y: ("rlnTomoYShiftAngst", True),
}
#: RELION 4 / Warp per-tilt projection-matrix rows
PROJECTION_ROW_LABELS = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")


# ----------------------------------------------------------------------------- paths named in STAR files


def _exists(path: Path) -> bool:
    """``path.exists()``, False for names the OS refuses (too long: ENAMETOOLONG; a NUL byte)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _resolve(reference: Path, name: str, root: Path | None = None) -> Path:
    """A path named inside ``reference``: its folder, then the folder's ancestors, then cwd.

    With ``root``, only places inside ``root`` are searched and the result (symlinks
    resolved) must lie inside it: a STAR file cannot lead the reader elsewhere.
    """
    candidate = Path(name)
    folder = reference.resolve().parent
    if root is None:
        if candidate.is_absolute():
            return candidate
        for base in (folder, *folder.parents):
            if _exists(base / candidate):
                return base / candidate
        if _exists(candidate):
            return candidate.resolve()
        return folder / candidate
    fence = root.resolve()
    bases = [b for b in (folder, *folder.parents) if b.is_relative_to(fence)]
    options = [candidate] if candidate.is_absolute() else [b / candidate for b in bases]
    for option in options:
        if _exists(option) and option.resolve().is_relative_to(fence):
            return option.resolve()
    escaped = [str(o) for o in options if _exists(o)]
    where = f"it resolves to {escaped[0]!r}, outside" if escaped else "it is not found inside"
    raise FormatError(f"{reference}: path {name!r}: {where} the allowed root {str(fence)!r}")


# ----------------------------------------------------------------------------- tilt series


def _projection_rows(path: Path, block: str, table: pd.DataFrame) -> np.ndarray:
    """(n, 4, 4) matrices from RELION 4 ``rlnTomoProjX/Y/Z/W`` text rows ``[a,b,c,d]``."""
    out = np.empty((len(table), 4, 4))
    for r, label in enumerate(PROJECTION_ROW_LABELS):
        for i, text in enumerate(table[label].astype(str)):
            try:
                row = [float(v) for v in text.strip().strip("[]").split(",")]
            except ValueError:
                row = []
            if len(row) != 4:
                raise FormatError(
                    f"{path}, data_{block}, row {i + 1}, column {label}: expected '[a,b,c,d]', found {text!r}"
                )
            out[i, r] = row
    return out


def _angles_from_matrices(path: Path, block: str, matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (rx, ry, rz) degrees and translation of RELION 4 projection matrices."""
    top = matrices[:, :2, :3]
    third = np.cross(top[:, 0], top[:, 1])
    rotation = np.concatenate([top, third[:, None, :]], axis=1)
    error = np.abs(rotation @ np.swapaxes(rotation, 1, 2) - np.eye(3)).max(axis=(1, 2))
    if (error > 1e-5).any():
        i = int(np.argmax(error > 1e-5))
        raise FormatError(
            f"{path}, data_{block}, row {i + 1}: rlnTomoProjX/Y rows are not those of a rotation "
            f"(|R R^T - I| = {error[i]:.2g})"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Gimbal lock detected", category=UserWarning)
        xyz = Rotation.from_matrix(rotation).as_euler("xyz", degrees=True)
    return np.asarray(xyz).reshape(-1, 3), rotation


def _tilt_series_block(path: Path, blocks: Mapping[str, StarBlock], name: str) -> StarBlock:
    if name in blocks:
        return blocks[name]
    loops = [b for b in blocks.values() if b.loop and b.name != "global"]
    if len(loops) == 1:
        return loops[0]
    raise FormatError(f"{path}: expected a block data_{name}, found blocks {list(blocks)}")


def read_relion_tilt_series(
    tomograms_star: str | os.PathLike[str],
    *,
    tilt_image_size: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    root: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Read a RELION ``tomograms.star`` and its tilt series into one ProjectionModel.

    Parameters
    ----------
    tomograms_star
        RELION 5 (``data_global`` with ``rlnTomoTiltSeriesStarFile``; per-tilt-series
        files with ``rlnTomoXTilt/YTilt/ZRot``, ``rlnTomoX/YShiftAngst``) or RELION 4 /
        Warp (per-tomogram blocks in the same file with ``rlnTomoProjX/Y/Z/W``).
    tilt_image_size
        (nx, ny) of the tilt images (or ``{tomo_name: (nx, ny)}``); RELION projects
        about ``(nx // 2, ny // 2)``. Default: the tomogram's ``(rlnTomoSizeX, rlnTomoSizeY)``.
    root
        Folder that per-tilt-series files must lie in (symlinks resolved); a path in the
        STAR file that leads outside it is a :class:`~cryoxr.errors.FormatError`. Default:
        no restriction (RELION's own lookup: the file's folder, its parents, the cwd).

    Returns
    -------
    pandas.DataFrame
        The ProjectionModel (``experiment_id`` = ``rlnTomoName``, ``pixel_spacing`` =
        ``rlnTomoTiltSeriesPixelSize``, ``source`` = per-tilt-series file), other per-tilt
        columns kept; ``attrs`` as described in the module docstring.

    Raises
    ------
    FormatError
        Missing columns or blocks, NaN alignment values, non-rotation matrices.
    CryoxrFileNotFoundError
        A per-tilt-series STAR file that does not exist.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import cryoxr
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> model = cryoxr.make_projection_model(rotation_y=[0.0, 30.0], rotation_z=85.0, dx=5.0,
    ...                                      experiment_id="TS_01", pixel_spacing=1.35)
    >>> written = write_relion_tilt_series(model, folder / "tomograms.star", tomograms={"TS_01": (4096, 4096, 1000)})
    >>> back = read_relion_tilt_series(folder / "tomograms.star")
    >>> back[["rotation_y", "rotation_z", "dx"]].values.tolist()
    [[0.0, 85.0, 5.0], [30.0, 85.0, 5.0]]
    >>> back.attrs["tilt_image_center"], back.attrs["specimen_center"]
    ({'TS_01': [2048.0, 2048.0]}, {'TS_01': [2048.0, 2048.0, 500.0]})
    """
    path = Path(tomograms_star)
    blocks = read_star(path)
    global_block = _tomograms_block(path, blocks)
    table = global_block.table
    for label in ("rlnTomoName", "rlnTomoTiltSeriesPixelSize"):
        if label not in table.columns:
            raise FormatError(f"{path}, data_global: expected a column {label}, found {list(table.columns)}")
    pixel_sizes = _finite(path, global_block.name, table, ["rlnTomoTiltSeriesPixelSize"])[:, 0]
    if (pixel_sizes <= 0).any():
        row = int(np.argmax(pixel_sizes <= 0))
        raise FormatError(
            f"{path}, data_{global_block.name}, row {row + 1}, column rlnTomoTiltSeriesPixelSize: expected a "
            f"positive pixel size, found {float(pixel_sizes[row])!r}"
        )
    has_sizes = all(label in table.columns for label in TOMOGRAM_SIZE_LABELS)
    sizes = _finite(path, global_block.name, table, TOMOGRAM_SIZE_LABELS) if has_sizes else None
    models: list[pd.DataFrame] = []
    layout: dict[str, Any] = {}
    dims: dict[str, list[float]] = {}
    specimen: dict[str, list[float]] = {}
    image_centre: dict[str, list[float]] = {}
    for row, name in enumerate(table["rlnTomoName"].astype(str)):
        px = float(pixel_sizes[row])
        if "rlnTomoTiltSeriesStarFile" in table.columns:
            star_name = str(table["rlnTomoTiltSeriesStarFile"].iloc[row])
            ts_path = _resolve(path, star_name, None if root is None else Path(root))
            if not (_exists(ts_path) and ts_path.is_file()):
                raise CryoxrFileNotFoundError(
                    f"{path}, data_global, row {row + 1}, rlnTomoTiltSeriesStarFile: {star_name!r} not found "
                    f"(looked in {path.resolve().parent}, its parent folders and the current directory)"
                )
            ts_blocks = read_star(ts_path)
        else:
            star_name, ts_path, ts_blocks = None, path, blocks
        ts_block = _tilt_series_block(ts_path, ts_blocks, name)
        ts = ts_block.table
        if len(ts) == 0:
            raise FormatError(f"{ts_path}, data_{ts_block.name}: expected at least one tilt row, found none")
        if sizes is not None:
            dims[name] = [float(v) for v in sizes[row]]
            specimen[name] = [float(v // 2) for v in sizes[row]]
        if tilt_image_size is None:
            nxy = sizes[row][:2] if sizes is not None else None
        elif isinstance(tilt_image_size, Mapping):
            nxy = np.asarray(tilt_image_size[name], dtype=np.float64)
        else:
            nxy = np.asarray(tilt_image_size, dtype=np.float64)
        centre = None if nxy is None else np.floor(np.asarray(nxy, dtype=np.float64) / 2)
        if centre is not None:
            image_centre[name] = [float(v) for v in centre]
        if all(label in ts.columns for label, _ in TILT_ALIGNMENT_LABELS.values()):
            values = {
                column: _in_pixels(
                    ts_path, ts_block.name, [label], _finite(ts_path, ts_block.name, ts, [label]),
                    px if scaled else 1.0, "rlnTomoTiltSeriesPixelSize" if scaled else "1",
                )[:, 0]
                for column, (label, scaled) in TILT_ALIGNMENT_LABELS.items()
            }  # fmt: skip
            modelled = {label for label, _ in TILT_ALIGNMENT_LABELS.values()}
        elif all(label in ts.columns for label in PROJECTION_ROW_LABELS):
            if sizes is None or centre is None:
                raise FormatError(
                    f"{path}, data_global: RELION 4 projection matrices need {list(TOMOGRAM_SIZE_LABELS)}"
                )
            matrices = _projection_rows(ts_path, ts_block.name, ts)
            xyz, rotation = _angles_from_matrices(ts_path, ts_block.name, matrices)
            # P = S(c_img) S(d) R S(-c_spec)  =>  d = t - c_img + (R c_spec)[:2]
            d = matrices[:, :2, 3] - centre + (rotation @ np.asarray(specimen[name]))[:, :2]
            values = {
                PMDL.ROTATION_X: xyz[:, 0],
                PMDL.ROTATION_Y: xyz[:, 1],
                PMDL.ROTATION_Z: xyz[:, 2],
                PMDL.SHIFT_X: d[:, 0],
                PMDL.SHIFT_Y: d[:, 1],
            }
            modelled = set(PROJECTION_ROW_LABELS)
        else:
            raise FormatError(
                f"{ts_path}, data_{ts_block.name}: expected columns "
                f"{[label for label, _ in TILT_ALIGNMENT_LABELS.values()]} or {list(PROJECTION_ROW_LABELS)}, "
                f"found {list(ts.columns)}"
            )
        extra = {label: ts[label].to_numpy() for label in ts.columns if label not in modelled}
        models.append(
            make_projection_model(
                **values, experiment_id=name, pixel_spacing=px, source=str(ts_path), extra=extra
            )
        )
        layout[name] = {
            "file": star_name,
            "block": ts_block.name,
            "columns": [str(c) for c in ts.columns],
        }
    if not models:
        raise FormatError(f"{path}, data_global: expected at least one tomogram, found none")
    model = pd.concat(models, ignore_index=True)
    model.attrs = {
        "tomogram_dimensions": dims,
        "specimen_center": specimen,
        "tilt_image_center": image_centre,
        "relion": {
            "version": global_block.version,
            "block": global_block.name,
            "tomograms": _block_to_json(global_block)["columns"],
            "tilt_series": layout,
        },
    }
    return model


def write_relion_tilt_series(
    model: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    tomograms: TomogramsInput | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write a ProjectionModel as a RELION 5 ``tomograms.star`` plus per-tilt-series files.

    Parameters
    ----------
    model
        A ProjectionModel; one tilt series per ``experiment_id``.
    path
        The ``tomograms.star`` to write. Per-tilt-series files go where the model's
        ``rlnTomoTiltSeriesStarFile`` says (relative to ``path``'s folder), else to
        ``tilt_series/<name>.star`` next to it.
    tomograms
        The tomogram table or sizes (as for :func:`read_relion_particles`); default: the
        table the model was read with (``model.attrs["relion"]``), else
        ``model.attrs["tomogram_dimensions"]``.
    overwrite
        Replace existing files.

    Notes
    -----
    Always writes the RELION 5 layout (angles and shifts, ``# version 50001``); a model
    read from RELION 4 projection matrices loses its ``rlnTomoProjX/Y/Z/W`` columns. Extra
    model columns are written when their name is a RELION label (``rln...``).

    Returns
    -------
    list of pathlib.Path
        The files written: ``path``, then one per-tilt-series STAR per tilt series.

    Raises
    ------
    InvalidValueError
        No tomogram sizes for a tilt series.
    FileExistsNoOverwriteError
        A file exists and ``overwrite`` is false.
    """
    validate_projection_model(model)
    path = Path(path)
    relion: Mapping[str, Any] = model.attrs.get("relion") or {}
    if tomograms is not None:
        table = relion_tomograms_table(tomograms).copy()
    elif relion.get("tomograms"):
        table = pd.DataFrame(dict(relion["tomograms"]))
    elif model.attrs.get("tomogram_dimensions"):
        table = relion_tomograms_table(model.attrs["tomogram_dimensions"]).copy()
    else:
        table = pd.DataFrame({"rlnTomoName": pd.unique(model[PMDL.EXPERIMENT_ID]).astype(str)})
    names = [str(n) for n in pd.unique(model[PMDL.EXPERIMENT_ID])]
    known = table["rlnTomoName"].astype(str).tolist()
    absent = [n for n in names if n not in known]
    if absent:
        raise InvalidValueError(f"write_relion_tilt_series: no tomogram row for {absent} (table has {known})")
    table = table[table["rlnTomoName"].astype(str).isin(names)].reset_index(drop=True)
    missing = [label for label in TOMOGRAM_SIZE_LABELS if label not in table.columns]
    if missing:
        raise InvalidValueError(
            f"write_relion_tilt_series: the tomogram table lacks {missing}; pass tomograms="
        )
    layout: Mapping[str, Any] = relion.get("tilt_series", {})
    files: list[str] = []
    pixel_sizes: list[float] = []
    for name in table["rlnTomoName"].astype(str):
        entry = layout.get(name, {})
        files.append(str(entry.get("file") or f"tilt_series/{name}.star"))
        pixel_sizes.append(float(model.loc[model[PMDL.EXPERIMENT_ID] == name, PMDL.PIXEL_SPACING].iloc[0]))
    table["rlnTomoTiltSeriesStarFile"] = files
    table["rlnTomoTiltSeriesPixelSize"] = pixel_sizes
    for label in TOMOGRAM_SIZE_LABELS:
        table[label] = table[label].astype(np.int64)
    version = VERSIONS[5][0]
    outputs: list[tuple[Path, StarBlock]] = []
    for name, file_name in zip(table["rlnTomoName"].astype(str), files, strict=True):
        rows = model[model[PMDL.EXPERIMENT_ID].astype(str) == name]
        px = float(rows[PMDL.PIXEL_SPACING].iloc[0])
        data: dict[str, Any] = {}
        for column, (label, scaled) in TILT_ALIGNMENT_LABELS.items():
            data[label] = _clean(rows[column].to_numpy(dtype=np.float64) * (px if scaled else 1.0))
        entry = layout.get(name, {})
        order = [str(c) for c in entry.get("columns", [])]
        alignment_labels = [label for label, _ in TILT_ALIGNMENT_LABELS.values()]
        extras = [str(c) for c in rows.columns if str(c).startswith("rln") and c not in alignment_labels]
        columns = [c for c in order if c in extras or c in alignment_labels]
        columns += [c for c in alignment_labels if c not in columns]
        columns += [c for c in extras if c not in columns and c not in PROJECTION_ROW_LABELS]
        frame = pd.DataFrame({c: data[c] if c in data else rows[c].to_numpy() for c in columns})
        outputs.append((Path(file_name), StarBlock(str(entry.get("block", name)), frame, True, version)))
    targets = [(path.parent / f if not f.is_absolute() else f) for f, _ in outputs]
    for target in [path, *targets]:
        if target.exists() and not overwrite:
            raise FileExistsNoOverwriteError(
                f"{target}: exists; pass overwrite=True to replace it (nothing was written)"
            )
    for target, (_, block) in zip(targets, outputs, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        write_star([block], target, overwrite=overwrite)
    write_star(
        [StarBlock(str(relion.get("block", "global")), table, True, version)], path, overwrite=overwrite
    )
    return [path, *targets]
