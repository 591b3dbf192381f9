"""The tilt images of a RELION 5 project as lazy stack Images, one per tilt series.

RELION 5 (``TomogramSet::loadTomogram``, ``src/jaz/tomography/tomogram_set.cpp``) reads a
tilt series either from one stack file named by ``rlnTomoTiltSeriesName`` in
``tomograms.star`` (RELION 4 style) or, tilt by tilt, from the images the per-tilt-series
STAR file names in ``rlnMicrographName`` (RELION 5's motion-correction output; ``N@stack``
names pick section ``N``, counted from 1). Relative names are relative to the project
folder; :func:`open_relion_tilt_series` looks them up like the STAR reader does (the
folder of the naming file, its parents, the current directory).

With ``tilt_series_dir``, a stack ``<dir>/<rlnTomoName><suffix>`` (``.mrcs``, ``.mrc``,
``.st``, ``.ali``, ``.zarr``, ``.ome.zarr``) is used when present (for tilt series kept
as one MRC stack or OME-Zarr, e.g. from the CryoET Data Portal), else the per-tilt names
are looked up in that folder (their path as written, then their file name).

The images' pixel size is RELION's ``rlnTomoTiltSeriesPixelSize`` (the model's
``pixel_spacing``), whatever the file headers say; each tilt is one dask chunk.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import pandas as pd

from cryoxr.errors import CryoxrFileNotFoundError, FormatError, InvalidValueError
from cryoxr.image import Image
from cryoxr.io.images import open_image
from cryoxr.io.mrc import read_mrc
from cryoxr.io.relion.tilt_series import _exists, _resolve
from cryoxr.projection_model import PMDL

__all__ = ["STACK_SUFFIXES", "open_relion_tilt_series"]

#: suffixes of a whole-tilt-series stack looked for in ``tilt_series_dir``
STACK_SUFFIXES = (".mrcs", ".mrc", ".st", ".ali", ".ome.zarr", ".zarr")
_SECTION = re.compile(r"^(\d+)@(.+)$")


def _as_stack(image: Image, eid: str, px: float, source: str) -> Image:
    """A stack Image of one tilt per chunk (volume-style MRC stacks: z read as image)."""
    data = image.data
    if data.ndim != 3:
        raise FormatError(f"{source}: expected a stack of tilt images, found dims {data.dims}")
    array = data.data if isinstance(data.data, da.Array) else da.from_array(data.data)
    return Image.from_array(
        array.rechunk((1, -1, -1)), pixel_spacing=px, experiment_id=eid, source=source, stack=True
    )


def _stack_in(folder: Path, eid: str) -> Path | None:
    for suffix in STACK_SUFFIXES:
        candidate = folder / f"{eid}{suffix}"
        if _exists(candidate):
            return candidate
    return None


def _locate(name: str, reference: Path, folder: Path | None, root: Path | None) -> Path:
    if folder is not None:
        for candidate in (folder / name, folder / Path(name).name):
            if _exists(candidate):
                return candidate
        raise CryoxrFileNotFoundError(
            f"{reference}: tilt image {name!r} not found in --tilt-series-dir {folder} (as written or by file name)"
        )
    found = _resolve(reference, name, root)
    if not _exists(found):
        raise CryoxrFileNotFoundError(
            f"{reference}: tilt image {name!r} not found (looked in {reference.resolve().parent}, its parent "
            "folders and the current directory; pass tilt_series_dir= to look elsewhere)"
        )
    return found


def _plane(path: Path, section: int | None, px: float, cache: dict[Path, Any]) -> Any:
    """One tilt image as a single-chunk dask array (y, x)."""
    if path not in cache:
        header = read_mrc(path, chunks=None, pixel_spacing=px)
        chunks: Any = (1, -1, -1) if header.data.ndim == 3 else (-1, -1)
        cache[path] = read_mrc(path, chunks=chunks, pixel_spacing=px).data.data
    array = cache[path]
    if array.ndim == 2:
        if section not in (None, 0):
            raise FormatError(f"{path}: a single image has no section {section + 1}")
        return array
    if section is None:
        raise FormatError(f"{path}: a stack of {array.shape[0]} images named without N@; expected one image")
    if not 0 <= section < array.shape[0]:
        raise FormatError(f"{path}: section {section + 1} asked for, the stack has {array.shape[0]}")
    return array[section]


def open_relion_tilt_series(
    projection_model: pd.DataFrame,
    *,
    tilt_series_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
) -> dict[str, Image]:
    """Open the tilt images of every tilt series of a RELION model, lazily.

    Parameters
    ----------
    projection_model
        :func:`~cryoxr.io.relion.read_relion_tilt_series` output (its ``rlnMicrographName``
        column and ``source`` per-tilt-series file, or ``rlnTomoTiltSeriesName`` in its
        ``attrs["relion"]["tomograms"]`` table).
    tilt_series_dir
        Folder to take the images from instead (module docstring).
    root
        Folder the images must lie in (as for the STAR reader); default no restriction.

    Returns
    -------
    dict
        ``rlnTomoName -> Image`` stack, ``("image", "y", "x")``, one chunk per tilt, in
        the model's tilt order.

    Raises
    ------
    CryoxrFileNotFoundError
        A tilt image or stack that is not there.
    FormatError
        A model without image names, images of different sizes, a bad section number.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np, mrcfile, cryoxr
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for i in range(2):
    ...     mrcfile.write(folder / f"t{i}.mrc", np.full((4, 6), i, np.float32), voxel_size=1.0)
    >>> model = cryoxr.make_projection_model(rotation_y=[0.0, 3.0], experiment_id="TS_01",
    ...     pixel_spacing=1.35, source=str(folder / "TS_01.star"),
    ...     extra={"rlnMicrographName": ["t0.mrc", "t1.mrc"]})
    >>> ts = open_relion_tilt_series(model)["TS_01"]
    >>> ts.data.shape, ts.pixel_spacing, float(ts.data[1].mean())
    ((2, 4, 6), 1.35, 1.0)
    """
    folder = None if tilt_series_dir is None else Path(tilt_series_dir)
    fence = None if root is None else Path(root)
    if folder is not None and not folder.is_dir():
        raise CryoxrFileNotFoundError(f"tilt_series_dir {folder}: no such folder")
    relion: Mapping[str, Any] = (projection_model.attrs.get("relion") or {}).get("tomograms") or {}
    stacks_by_name: dict[str, str] = {}
    if "rlnTomoTiltSeriesName" in relion:
        stacks_by_name = dict(
            zip(map(str, relion["rlnTomoName"]), map(str, relion["rlnTomoTiltSeriesName"]), strict=True)
        )
    out: dict[str, Image] = {}
    cache: dict[Path, Any] = {}
    for eid, rows in projection_model.groupby(projection_model[PMDL.EXPERIMENT_ID].astype(str), sort=False):
        eid = str(eid)
        px = float(rows[PMDL.PIXEL_SPACING].iloc[0])
        reference = (
            Path(str(rows[PMDL.SOURCE].iloc[0])) if PMDL.SOURCE in rows.columns else Path("tomograms.star")
        )
        stack = _stack_in(folder, eid) if folder is not None else None
        if stack is None and eid in stacks_by_name and folder is None:
            stack = _locate(_SECTION.sub(r"\2", stacks_by_name[eid]), reference, None, fence)
        if stack is not None:
            image = open_image(stack, experiment_id=eid, pixel_spacing=px)
            opened = _as_stack(image, eid, px, str(stack))
            if opened.data.sizes["image"] < len(rows):
                raise FormatError(
                    f"{stack}: {opened.data.sizes['image']} images for {len(rows)} tilts of {eid!r}"
                )
            out[eid] = opened
            continue
        if "rlnMicrographName" not in rows.columns:
            raise FormatError(
                f"{reference}: tilt series {eid!r} names no images (rlnMicrographName) and no stack "
                "(rlnTomoTiltSeriesName); pass tilt_series_dir= with <name>.mrc or <name>.zarr"
            )
        planes = []
        for name in rows["rlnMicrographName"].astype(str):
            match = _SECTION.match(name)
            file_name, section = (match.group(2), int(match.group(1)) - 1) if match else (name, None)
            planes.append(_plane(_locate(file_name, reference, folder, fence), section, px, cache))
        shapes = {tuple(p.shape) for p in planes}
        if len(shapes) != 1:
            raise FormatError(f"{reference}: the tilt images of {eid!r} differ in size: {sorted(shapes)}")
        stacked = da.stack(planes).rechunk((1, -1, -1))
        out[eid] = Image.from_array(
            stacked, pixel_spacing=px, experiment_id=eid, source=str(reference), stack=True
        )
    if not out:
        raise InvalidValueError("open_relion_tilt_series: the projection model holds no tilt series")
    return out
