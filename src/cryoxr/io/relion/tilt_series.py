"""RELION tilt series (``tomograms.star`` and its per-tilt-series files) <-> ProjectionModel.

:func:`read_relion_tilt_series` reads a RELION 5 ``tomograms.star`` and every per-tilt-series
STAR file it lists (``rlnTomoXTilt/YTilt/ZRot`` -> ``rotation_x/y/z``,
``rlnTomoX/YShiftAngst / px`` -> ``dx, dy``), or a RELION 4 / Warp ``tomograms.star`` whose
per-tilt blocks carry ``rlnTomoProjX/Y/Z/W`` matrix rows (converted to angles and shifts).
It returns one ProjectionModel for all tilt series, with the per-tilt columns the files
hold (:mod:`cryoxr.io.relion._columns` lists the labels):

- from ``tomograms.star``: ``tomogram_size_x/_y/_z`` (``rlnTomoSizeX/Y/Z``, bin-1 pixels =
  pixels of ``rlnTomoTiltSeriesPixelSize``), ``voltage``, ``spherical_aberration``,
  ``amplitude_contrast``, ``defocus_handedness`` (``rlnTomoHand``);
- the tilt-image size ``image_size_x/_y``: the ``tilt_image_size`` argument, else
  ``rlnImageSizeX/Y`` (written by cryoxr), else the header of the first tilt image named
  by ``rlnMicrographName`` (where RELION 5 itself reads it); never assumed. From it,
  ``tilt_image_center_x/_y = (nx // 2, ny // 2)``, RELION's ``int(N / 2)``
  (``Tomogram::setProjectionMatrix``; IMOD's centre is ``(N - 1) / 2``, docs/CONVENTIONS.md §2);
- per tilt: ``defocus_u/_v``, ``defocus_angle``, ``phase_shift``, ``ctf_scale``,
  ``ctf_bfactor``, ``pre_exposure``, ``acquisition_order`` (``rlnTomoTiltMovieIndex - 1``);
  ``excluded`` when cryoxr wrote it. Other labels (``rlnTomoNominalStageTiltAngle``,
  ``rlnMicrographName``, ...) stay columns under their own names.

So :func:`cryoxr.project` needs no geometry argument for such a model, also after
``pd.concat``, filtering or parquet. ``model.attrs`` still holds, for callers of the
attrs-based interface: ``tomogram_dimensions`` (``{tomo_name: [X, Y, Z]}`` bin-1 pixels),
``specimen_center`` (``[X // 2, Y // 2, Z // 2]``), ``tilt_image_center`` (when known), and
``relion``: the ``tomograms.star`` table as ``{label: [values]}`` (with labels cryoxr does
not model, e.g. ``rlnTomoReconstructedTomogram``) and the per-file layout needed to write
the files back.

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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from cryoxr.errors import (
    CryoxrFileNotFoundError,
    FormatError,
    InvalidValueError,
    SchemaError,
)
from cryoxr.io.relion._columns import (
    INTEGER_COLUMNS,
    PROJECTION_ROW_LABELS,
    TILT_ALIGNMENT_LABELS,
    image_size_option,
    micrograph_image_size,
    tilt_columns,
    tomogram_columns,
)
from cryoxr.io.relion._common import (
    TOMOGRAM_SIZE_LABELS,
    _block_to_json,
    _finite,
    _in_pixels,
    _tomograms_block,
)
from cryoxr.io.relion._tilt_series_write import write_relion_tilt_series
from cryoxr.io.star import StarBlock, read_star
from cryoxr.projection_model import PMDL, PTC, make_projection_model

__all__ = ["TILT_ALIGNMENT_LABELS", "read_relion_tilt_series", "write_relion_tilt_series"]


# ----------------------------------------------------------------------------- paths named in STAR files


def _exists(path: Path) -> bool:
    """``path.exists()``, False for names the OS refuses (too long: ENAMETOOLONG; a NUL byte)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _lookup(reference: Path, name: str, root: Path | None) -> Path | None:
    """Like :func:`_resolve`, but None when ``name`` is not found (a path leaving ``root`` still raises)."""
    try:
        found = _resolve(reference, name, root)
    except FormatError as err:
        if "not found inside" in str(err):
            return None
        raise
    return found if _exists(found) else None


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


def _alignment(
    ts_path: Path,
    block: str,
    ts: pd.DataFrame,
    px: float,
    split: tuple[np.ndarray, np.ndarray] | None,
    where: str,
) -> tuple[dict[str, np.ndarray], set[str]]:
    """The five alignment columns of a per-tilt table, and the labels they used.

    RELION 5 angles and shifts, else RELION 4 / Warp matrix rows; ``split`` is the
    (specimen centre, tilt-image centre) the latter are split at.
    """
    if all(label in ts.columns for label, _ in TILT_ALIGNMENT_LABELS.values()):
        values = {
            column: _in_pixels(
                ts_path, block, [label], _finite(ts_path, block, ts, [label]),
                px if scaled else 1.0, "rlnTomoTiltSeriesPixelSize" if scaled else "1",
            )[:, 0]
            for column, (label, scaled) in TILT_ALIGNMENT_LABELS.items()
        }  # fmt: skip
        return values, {label for label, _ in TILT_ALIGNMENT_LABELS.values()}
    if all(label in ts.columns for label in PROJECTION_ROW_LABELS):
        if split is None:
            raise FormatError(f"{where}: RELION 4 projection matrices need {list(TOMOGRAM_SIZE_LABELS)}")
        specimen, image_centre = split
        matrices = _projection_rows(ts_path, block, ts)
        xyz, rotation = _angles_from_matrices(ts_path, block, matrices)
        # P = S(c_img) S(d) R S(-c_spec)  =>  d = t - c_img + (R c_spec)[:2]
        d = matrices[:, :2, 3] - image_centre + (rotation @ specimen)[:, :2]
        values = {
            PMDL.ROTATION_X: xyz[:, 0],
            PMDL.ROTATION_Y: xyz[:, 1],
            PMDL.ROTATION_Z: xyz[:, 2],
            PMDL.SHIFT_X: d[:, 0],
            PMDL.SHIFT_Y: d[:, 1],
        }
        return values, set(PROJECTION_ROW_LABELS)
    raise FormatError(
        f"{ts_path}, data_{block}: expected columns "
        f"{[label for label, _ in TILT_ALIGNMENT_LABELS.values()]} or {list(PROJECTION_ROW_LABELS)}, "
        f"found {list(ts.columns)}"
    )


def _image_size(
    option: np.ndarray | str | None,
    constants: Mapping[str, float],
    sizes: np.ndarray | None,
    lookup: Any,
    where: str,
) -> np.ndarray | None:
    """(nx, ny): the argument, ``"tomogram"``, the stored labels, the tilt images, or None."""
    if isinstance(option, np.ndarray):
        return option
    if option == "tomogram":
        if sizes is None:
            raise InvalidValueError(f"{where}: tilt_image_size='tomogram' needs {list(TOMOGRAM_SIZE_LABELS)}")
        return np.asarray(sizes[:2], dtype=np.float64)
    stored = np.array([constants.get(c, np.nan) for c in PTC.IMAGE_SIZE])
    if np.isfinite(stored).all():
        return stored
    found = lookup()
    return None if found is None else np.asarray(found, dtype=np.float64)


def _centres(per_tilt: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """(T, 2) tilt-image centres among the per-tilt columns, or None."""
    if not all(c in per_tilt for c in PTC.TILT_IMAGE_CENTER):
        return None
    return np.column_stack([per_tilt[c] for c in PTC.TILT_IMAGE_CENTER])


def _set_centres(per_tilt: dict[str, np.ndarray], centre: np.ndarray, n: int) -> None:
    for column, value in zip(PTC.TILT_IMAGE_CENTER, np.broadcast_to(centre, (n, 2)).T, strict=True):
        per_tilt[column] = np.array(value, dtype=np.float64)


def _whole(column: str, value: float) -> float | int:
    return int(value) if column in INTEGER_COLUMNS and np.isfinite(value) else value


def read_relion_tilt_series(
    tomograms_star: str | os.PathLike[str],
    *,
    tilt_image_size: Sequence[int] | Mapping[str, Sequence[int]] | str | None = None,
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
        (nx, ny) of the tilt images (or ``{tomo_name: (nx, ny)}``, or ``"tomogram"`` for
        the tomogram's ``(rlnTomoSizeX, rlnTomoSizeY)``). Default: the size stored in
        ``rlnImageSizeX/Y``, else the header of the first tilt image the per-tilt file
        names (``rlnMicrographName``, as RELION itself does), else not known.
    root
        Folder that per-tilt-series files (and tilt images) must lie in (symlinks
        resolved); a path in the STAR file that leads outside it is a
        :class:`~cryoxr.errors.FormatError`. Default: no restriction (RELION's own
        lookup: the file's folder, its parents, the cwd).

    Returns
    -------
    pandas.DataFrame
        The ProjectionModel (``experiment_id`` = ``rlnTomoName``, ``pixel_spacing`` =
        ``rlnTomoTiltSeriesPixelSize``, ``source`` = per-tilt-series file), with the
        per-tilt columns the files hold (module docstring) and the other per-tilt labels
        as columns; ``attrs`` as described in the module docstring.

    Raises
    ------
    FormatError
        Missing columns or blocks, an empty tomogram name, NaN alignment values,
        non-rotation matrices, values out of range (the message names the file).
    CryoxrFileNotFoundError
        A per-tilt-series STAR file that does not exist.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import cryoxr
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> model = cryoxr.make_projection_model(rotation_y=[0.0, 30.0], rotation_z=85.0, dx=5.0,
    ...     experiment_id="TS_01", pixel_spacing=1.35, defocus_u=[25000.0, 25500.0], voltage=300.0,
    ...     tomogram_size_x=4096, tomogram_size_y=4096, tomogram_size_z=1000,
    ...     image_size_x=4096, image_size_y=4096)
    >>> written = write_relion_tilt_series(model, folder / "tomograms.star")
    >>> back = read_relion_tilt_series(folder / "tomograms.star")
    >>> back[["rotation_y", "rotation_z", "dx", "defocus_u", "voltage"]].values.tolist()
    [[0.0, 85.0, 5.0, 25000.0, 300.0], [30.0, 85.0, 5.0, 25500.0, 300.0]]
    >>> back[["tomogram_size_z", "tilt_image_center_x"]].values.tolist()
    [[1000.0, 2048.0], [1000.0, 2048.0]]
    """
    path = Path(tomograms_star)
    fence = None if root is None else Path(root)
    blocks = read_star(path)
    global_block = _tomograms_block(path, blocks)
    table = global_block.table
    where = f"{path}, data_{global_block.name}"
    for label in ("rlnTomoName", "rlnTomoTiltSeriesPixelSize"):
        if label not in table.columns:
            raise FormatError(f"{where}: expected a column {label}, found {list(table.columns)}")
    pixel_sizes = _finite(path, global_block.name, table, ["rlnTomoTiltSeriesPixelSize"])[:, 0]
    if (pixel_sizes <= 0).any():
        row = int(np.argmax(pixel_sizes <= 0))
        raise FormatError(
            f"{where}, row {row + 1}, column rlnTomoTiltSeriesPixelSize: expected a "
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
        if not name.strip():
            raise FormatError(
                f"{where}, row {row + 1}, column rlnTomoName: expected a tomogram name, found {name!r}"
            )
        px = float(pixel_sizes[row])
        if "rlnTomoTiltSeriesStarFile" in table.columns:
            star_name = str(table["rlnTomoTiltSeriesStarFile"].iloc[row])
            ts_path = _resolve(path, star_name, fence)
            if not (_exists(ts_path) and ts_path.is_file()):
                raise CryoxrFileNotFoundError(
                    f"{where}, row {row + 1}, rlnTomoTiltSeriesStarFile: {star_name!r} not found "
                    f"(looked in {path.resolve().parent}, its parent folders and the current directory)"
                )
            ts_blocks = read_star(ts_path)
        else:
            star_name, ts_path, ts_blocks = None, path, blocks
        ts_block = _tilt_series_block(ts_path, ts_blocks, name)
        ts = ts_block.table
        if len(ts) == 0:
            raise FormatError(f"{ts_path}, data_{ts_block.name}: expected at least one tilt row, found none")
        size = None if sizes is None else sizes[row]
        constants = tomogram_columns(path, global_block.name, table, row)
        per_tilt, used = tilt_columns(ts_path, ts_block.name, ts)
        nxy = _image_size(
            image_size_option(tilt_image_size, name, where),
            constants,
            size,
            partial(micrograph_image_size, ts_path, ts, ts_block.name, partial(_lookup, root=fence)),
            where,
        )
        if nxy is not None:
            constants.update(zip(PTC.IMAGE_SIZE, nxy.tolist(), strict=True))
            if not all(c in per_tilt for c in PTC.TILT_IMAGE_CENTER):  # RELION: int(N / 2)
                _set_centres(per_tilt, np.floor(nxy / 2), len(ts))
        split = None
        if size is not None:
            dims[name] = [float(v) for v in size]
            specimen[name] = [float(v // 2) for v in size]
            # RELION 4 matrices fix only centre + shift: split them at the known centre, else at (X // 2, Y // 2)
            known = _centres(per_tilt)
            split = (size // 2, known if known is not None else np.floor(size[:2] / 2))
        values, modelled = _alignment(ts_path, ts_block.name, ts, px, split, where)
        if split is not None and modelled == set(PROJECTION_ROW_LABELS) and _centres(per_tilt) is None:
            _set_centres(per_tilt, split[1], len(ts))  # exact for the matrices: they fix centre + shift
        centres = _centres(per_tilt)
        if centres is not None and (centres == centres[0]).all():
            image_centre[name] = [float(v) for v in centres[0]]
        columns = {column: _whole(column, value) for column, value in constants.items()}
        extra = {label: ts[label].to_numpy() for label in ts.columns if label not in modelled | used}
        try:
            models.append(
                make_projection_model(
                    **values, experiment_id=name, pixel_spacing=px, source=str(ts_path), extra=extra,
                    **columns, **per_tilt,
                )
            )  # fmt: skip
        except (InvalidValueError, SchemaError) as err:
            raise FormatError(f"{ts_path}, data_{ts_block.name} (with {path}): {err}") from None
        layout[name] = {
            "file": star_name,
            "block": ts_block.name,
            "columns": [str(c) for c in ts.columns],
        }
    if not models:
        raise FormatError(f"{where}: expected at least one tomogram, found none")
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
