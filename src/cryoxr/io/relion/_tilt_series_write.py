"""ProjectionModel -> RELION 5 ``tomograms.star`` and its per-tilt-series STAR files.

The inverse of :func:`cryoxr.io.relion.read_relion_tilt_series`. Every per-tilt column is
kept (:mod:`cryoxr.io.relion._columns` gives the labels): per-experiment constants go to
the ``data_global`` row of their tomogram, per-tilt values to the tilt-series file under
RELION's labels; other columns are written under their own names when those are STAR
labels (RELION keeps labels it does not use), and a warning names the ones that are not.

Centres: RELION projects about ``int(N / 2)`` of the tilt-image size. When the model
knows the image size and its ``tilt_image_center`` differs from that (a model in IMOD's
``(N - 1) / 2`` convention), the difference is folded into ``rlnTomoX/YShiftAngst``, so
RELION projects every point where the model does; reading back gives RELION's centre
and the folded shift.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryoxr.errors import FileExistsNoOverwriteError, InvalidValueError
from cryoxr.io.relion._columns import (
    OWN_LABEL_COLUMNS,
    PROJECTION_ROW_LABELS,
    TILT_ALIGNMENT_LABELS,
    TILT_LABELS,
    TOMOGRAM_LABELS,
    is_star_label,
)
from cryoxr.io.relion._common import (
    TOMOGRAM_SIZE_LABELS,
    VERSIONS,
    TomogramsInput,
    _clean,
    relion_tomograms_table,
)
from cryoxr.io.star import StarBlock, write_star
from cryoxr.projection_model import PER_TILT_COLUMNS, PMDL, PTC, validate_projection_model

__all__ = ["write_relion_tilt_series"]

_ALIGNMENT = [label for label, _ in TILT_ALIGNMENT_LABELS.values()]
_INTEGER_LABELS = (*TOMOGRAM_SIZE_LABELS, "rlnImageSizeX", "rlnImageSizeY")


def _per_experiment(model: pd.DataFrame, column: str, names: list[str]) -> dict[str, float]:
    """``{name: value}`` of a per-experiment column; several values in one experiment refused."""
    groups = model.groupby(model[PMDL.EXPERIMENT_ID].astype(str), sort=False)[column]
    counts = groups.nunique(dropna=False)
    varying = [n for n in names if counts.get(n, 0) > 1]
    if varying:
        found = sorted(
            model.loc[model[PMDL.EXPERIMENT_ID].astype(str) == varying[0], column].unique().tolist()
        )
        raise InvalidValueError(
            f"write_relion_tilt_series: {column} goes to tomograms.star ({TOMOGRAM_LABELS[column]}), one value "
            f"per tomogram; experiment {varying[0]!r} has {found}"
        )
    first = groups.first()
    return {n: float(first.get(n, np.nan)) for n in names}


def _tomogram_table(
    model: pd.DataFrame, names: list[str], relion: Mapping[str, Any], tomograms: TomogramsInput | None
) -> pd.DataFrame:
    """The ``data_global`` table: given table, else the one read, else built from the columns."""
    explicit = tomograms is not None
    if tomograms is not None:
        base = relion_tomograms_table(tomograms).copy()
    elif relion.get("tomograms"):
        base = pd.DataFrame(dict(relion["tomograms"]))
    elif model.attrs.get("tomogram_dimensions"):
        base = relion_tomograms_table(model.attrs["tomogram_dimensions"]).copy()
    else:
        base = pd.DataFrame({"rlnTomoName": names})
    known = base["rlnTomoName"].astype(str).tolist()
    absent = [n for n in names if n not in known]
    if absent and explicit:
        raise InvalidValueError(f"write_relion_tilt_series: no tomogram row for {absent} (table has {known})")
    if absent:
        base = pd.concat([base, pd.DataFrame({"rlnTomoName": absent})], ignore_index=True)
    table = base[base["rlnTomoName"].astype(str).isin(names)].reset_index(drop=True)
    row_names = table["rlnTomoName"].astype(str).tolist()
    for column, label in TOMOGRAM_LABELS.items():
        if column not in model.columns or (explicit and label in base.columns):
            continue  # an explicit table wins over the model's columns
        values = _per_experiment(model, column, names)
        if label not in table.columns and all(np.isnan(v) for v in values.values()):
            continue
        table[label] = [values[n] for n in row_names]
    missing = [label for label in TOMOGRAM_SIZE_LABELS if label not in table.columns]
    unknown = [
        label for label in TOMOGRAM_SIZE_LABELS if label in table.columns and table[label].isna().any()
    ]
    if missing or unknown:
        raise InvalidValueError(
            f"write_relion_tilt_series: the tomogram table lacks {missing or unknown} for some tomograms "
            f"(the model has no {list(PTC.TOMOGRAM_SIZE)} there); pass tomograms="
        )
    for label in _INTEGER_LABELS:
        if label in table.columns and np.isfinite(table[label].to_numpy(dtype=np.float64)).all():
            table[label] = table[label].astype(np.int64)
    return table


def _image_size(table: pd.DataFrame, name: str) -> np.ndarray | None:
    labels = [TOMOGRAM_LABELS[c] for c in PTC.IMAGE_SIZE]
    if not all(label in table.columns for label in labels):
        return None
    row = table.loc[table["rlnTomoName"].astype(str) == name, labels].to_numpy(dtype=np.float64)[0]
    return row if np.isfinite(row).all() else None


def _column_values(rows: pd.DataFrame, column: str, name: str) -> np.ndarray | None:
    """The experiment's values of a per-tilt column; None when all are missing."""
    series = rows[column]
    missing = series.isna().to_numpy()
    if missing.all():
        return None
    if column == PTC.EXCLUDED:
        if missing.any():
            raise InvalidValueError(
                f"write_relion_tilt_series: excluded must be known for every tilt of {name!r}, found missing values"
            )
        return series.astype(bool).to_numpy().astype(np.int64)
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


def _tilt_frame(
    rows: pd.DataFrame,
    name: str,
    px: float,
    image_size: np.ndarray | None,
    order: list[str],
    skipped: list[str],
) -> pd.DataFrame:
    """One tilt series' per-tilt table: alignment, per-tilt columns, other columns."""
    shift = rows[PMDL.SHIFT].to_numpy(dtype=np.float64)
    data: dict[str, Any] = {}
    cx, cy = (_column_values(rows, c, name) if c in rows.columns else None for c in PTC.TILT_IMAGE_CENTER)
    own = [c for c in OWN_LABEL_COLUMNS if c in rows.columns]
    if image_size is not None and cx is not None and cy is not None:
        # RELION's centre is int(N / 2): fold the model's own centre into the shift
        shift = shift + np.column_stack([cx, cy]) - np.floor(image_size / 2)
        own = [c for c in own if c not in PTC.TILT_IMAGE_CENTER]
    for column, (label, scaled) in TILT_ALIGNMENT_LABELS.items():
        source = (
            shift[:, PMDL.SHIFT.index(column)] if column in PMDL.SHIFT else rows[column].to_numpy(np.float64)
        )
        data[label] = _clean(source * (px if scaled else 1.0))
    for column, (label, offset) in TILT_LABELS.items():
        found = _column_values(rows, column, name) if column in rows.columns else None
        if found is None:
            continue
        found = found + offset
        if column == PTC.ACQUISITION_ORDER and np.isfinite(found).all():
            found = found.astype(np.int64)
        if label in rows.columns and not np.array_equal(
            rows[label].to_numpy(dtype=np.float64, na_value=np.nan), found, equal_nan=True
        ):
            raise InvalidValueError(
                f"write_relion_tilt_series: columns {column} and {label} of {name!r} disagree; drop one"
            )
        data[label] = found
    for column in own:
        found = _column_values(rows, column, name)
        if found is not None:
            data[column] = found
    taken = {*PMDL.ALL, *PER_TILT_COLUMNS, *PROJECTION_ROW_LABELS, *data}
    for column in rows.columns:
        if column in taken or rows[column].isna().all():
            continue
        if is_star_label(column):
            data[str(column)] = rows[column].to_numpy()
        elif column not in skipped:
            skipped.append(column)
    columns = [c for c in order if c in data]
    columns += [c for c in data if c not in columns]
    return pd.DataFrame({c: data[c] for c in columns})


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
        The tomogram table or sizes (as for :func:`read_relion_particles`); its values
        win over the model's columns. Default: the table the model was read with
        (``model.attrs["relion"]``, which ``pd.concat`` and parquet drop), updated from
        the model's per-experiment columns (``tomogram_size_x/_y/_z``, ``voltage``, ...),
        else a table built from those columns.
    overwrite
        Replace existing files.

    Notes
    -----
    Always writes the RELION 5 layout (angles and shifts, ``# version 50001``); a model
    read from RELION 4 projection matrices loses its ``rlnTomoProjX/Y/Z/W`` columns.
    RELION 5 has no excluded flag (its "exclude tilt images" job removes the rows): the
    ``excluded`` column is written as 0/1 for cryoxr, and RELION uses every row, so drop
    excluded tilts first (``model[~model.excluded]``) for RELION to skip them.

    Returns
    -------
    list of pathlib.Path
        The files written: ``path``, then one per-tilt-series STAR per tilt series.

    Raises
    ------
    InvalidValueError
        No tomogram sizes for a tilt series; a per-experiment column (voltage, ...) with
        several values in one experiment; a per-tilt column that disagrees with a RELION
        column of the same meaning.
    FileExistsNoOverwriteError
        A file exists and ``overwrite`` is false.

    Warns
    -----
    UserWarning
        Naming the columns whose names cannot be STAR labels (blanks, quotes, ``#``),
        which are not written.
    """
    validate_projection_model(model)
    path = Path(path)
    relion: Mapping[str, Any] = model.attrs.get("relion") or {}
    names = [str(n) for n in pd.unique(model[PMDL.EXPERIMENT_ID].astype(str))]
    table = _tomogram_table(model, names, relion, tomograms)
    layout: Mapping[str, Any] = relion.get("tilt_series", {})
    files: list[str] = []
    pixel_sizes: list[float] = []
    for name in table["rlnTomoName"].astype(str):
        entry = layout.get(name, {})
        files.append(str(entry.get("file") or f"tilt_series/{name}.star"))
        pixel_sizes.append(
            float(model.loc[model[PMDL.EXPERIMENT_ID].astype(str) == name, PMDL.PIXEL_SPACING].iloc[0])
        )
    table["rlnTomoTiltSeriesStarFile"] = files
    table["rlnTomoTiltSeriesPixelSize"] = pixel_sizes
    version = VERSIONS[5][0]
    outputs: list[tuple[Path, StarBlock]] = []
    skipped: list[str] = []
    for name, file_name, px in zip(table["rlnTomoName"].astype(str), files, pixel_sizes, strict=True):
        rows = model[model[PMDL.EXPERIMENT_ID].astype(str) == name]
        entry = layout.get(name, {})
        order = [str(c) for c in entry.get("columns", [])] or _ALIGNMENT
        frame = _tilt_frame(rows, name, px, _image_size(table, name), order, skipped)
        outputs.append((Path(file_name), StarBlock(str(entry.get("block", name)), frame, True, version)))
    if skipped:
        warnings.warn(
            f"write_relion_tilt_series: column(s) {skipped} are not STAR labels (blanks, quotes or '#'): "
            "not written; rename them to keep them",
            UserWarning,
            stacklevel=2,
        )
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
