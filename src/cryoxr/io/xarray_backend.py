"""A second door: ``xr.open_dataarray(path, engine="cryoxr")`` reaches cryoxr's readers.

The backend is registered as the entry point ``cryoxr`` of ``xarray.backends``. It opens
MRC (guessed from the suffix: ``.mrc .mrcs .st .ali .rec .map``) and OME-Zarr (with
``engine="cryoxr"`` explicitly, since xarray's zarr backend also claims ``.zarr``) through
:func:`cryoxr.io.open_image` and :func:`cryoxr.io.read_ome_zarr`: the same values, coords
in Å and attrs as the functions, in a Dataset with one variable named after the experiment.
An OME-Zarr URL (``https://``, ``s3://``: :func:`cryoxr.io.read_ome_zarr`) is opened too.

As xarray's own backends do, the variable is not a dask array: it is lazily indexed by
xarray over a :class:`~xarray.backends.BackendArray` (the readers' ``chunks=None`` path),
so opening reads no voxels and a selection (a z-slice for a viewer) reads only its own
planes from the memory map or the zarr chunks, without dask's per-compute cost. Dask comes
in only when ``chunks=`` is given: ``chunks={}`` chunks as cryoxr's readers do
(``encoding["preferred_chunks"]``: MRC slabs of about 64 MiB, one image of a stack, the
stored zarr chunks), ``chunks="auto"`` lets dask choose around them.

Examples
--------
>>> import tempfile, pathlib, numpy as np, xarray as xr
>>> import cryoxr
>>> path = pathlib.Path(tempfile.mkdtemp()) / "t.mrc"
>>> _ = cryoxr.Tomogram.from_array(np.ones((2, 3, 4), np.float32), pixel_spacing=5.0,
...                                experiment_id="t").to_mrc(path)
>>> da = xr.open_dataarray(path, engine="cryoxr")
>>> da.dims, float(da.x[1]), da.attrs["pixel_spacing"]
(('z', 'y', 'x'), 5.0, 5.0)
>>> da.chunks is None, float(da[1].sum())  # no dask; the slice reads one plane
(True, 12.0)
>>> xr.open_dataarray(path, engine="cryoxr", chunks={}).chunks
((2,), (3,), (4,))
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import xarray as xr
from xarray.backends import BackendEntrypoint

from cryoxr.io._fs import is_url
from cryoxr.io.images import IMAGE_READERS, image_reader, open_image
from cryoxr.io.mrc import MRC_SUFFIXES, read_mrc
from cryoxr.io.mrc.read import mrc_dataset
from cryoxr.io.ome_zarr import read_ome_zarr

__all__ = ["CryoxrBackendEntrypoint"]


class CryoxrBackendEntrypoint(BackendEntrypoint):
    """xarray backend for the images cryoxr reads (MRC, OME-Zarr)."""

    description = "Cryo-EM/ET images (MRC, OME-Zarr) as lazy DataArrays with coords in Å, via cryoxr"
    url = "https://pypi.org/project/cryoxr/"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "level", "experiment_id")

    def open_dataset(
        self,
        filename_or_obj: str | os.PathLike[Any] | Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        level: int = 0,
        experiment_id: str | None = None,
    ) -> xr.Dataset:
        """Open one image file as a Dataset holding one lazily indexed variable (no dask)."""
        path = filename_or_obj if is_url(filename_or_obj) else Path(filename_or_obj)  # URLs as given
        name = str(path).rstrip("/").lower()
        if name.endswith(".zarr"):
            image = read_ome_zarr(path, level=level, experiment_id=experiment_id, chunks=None)
            data = image.data
            ds = data.to_dataset(name=str(data.name or image.experiment_id))
            ds.attrs = dict(data.attrs)
        elif not is_url(path) and image_reader(path) is read_mrc:
            # built straight from the header: the opening cost is what a slice pays first
            ds = mrc_dataset(path, experiment_id=experiment_id)
        else:
            image = open_image(path, experiment_id=experiment_id, chunks=None)
            ds = image.data.to_dataset(name=str(image.data.name or image.experiment_id))
            ds.attrs = dict(image.data.attrs)
        dropped = [drop_variables] if isinstance(drop_variables, str) else list(drop_variables or [])
        dropped = [v for v in dropped if v in ds.variables]
        return ds.drop_vars(dropped) if dropped else ds  # drop_vars copies, even for nothing

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """MRC files by suffix; OME-Zarr only when asked for with ``engine="cryoxr"``."""
        try:
            suffix = Path(filename_or_obj).suffix.lower()
        except TypeError:
            return False
        return suffix in MRC_SUFFIXES and suffix in IMAGE_READERS
