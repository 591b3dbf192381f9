"""OME-Zarr (OME-NGFF 0.4 on zarr v2, 0.5 on zarr v3): lazy reading, streaming pyramids.

Reading accepts what the CryoET Data Portal and ome-zarr-py write (0.4, zarr v2) and
OME-NGFF 0.5 (zarr v3, metadata under ``attributes["ome"]``); the pixel spacing is the
spatial ``scale`` of the chosen level, in Å. Writing builds the pyramid level by level,
each the 2x mean of the level before as stored, and keeps every attr of the image under
the group attribute ``cryoxr``, so MRC -> OME-Zarr -> MRC loses nothing.

=====================================  ===============================================
module                                 job
=====================================  ===============================================
:mod:`cryoxr.io.ome_zarr.metadata`     NGFF ``multiscales``: axes, transforms, versions
:mod:`cryoxr.io.ome_zarr.read`         :func:`read_ome_zarr`, :func:`open_ome_zarr_pyramid`
:mod:`cryoxr.io.ome_zarr.write`        :func:`write_ome_zarr`, :func:`downsample_mean`
=====================================  ===============================================

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> from cryoxr import Tomogram
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> tomo = Tomogram.from_array(np.ones((8, 8, 8), np.float32), pixel_spacing=10.0,
...                            experiment_id="TS_01")
>>> path = write_ome_zarr(tomo, folder / "TS_01.ome.zarr", levels=3, chunks=(4, 4, 4))
>>> [level.shape for level in open_ome_zarr_pyramid(path)]
[(8, 8, 8), (4, 4, 4), (2, 2, 2)]
>>> level1 = read_ome_zarr(path, level=1)
>>> level1.pixel_spacing, level1.data.attrs["ome_translation"]
(20.0, [5.0, 5.0, 5.0])
"""

from cryoxr.io._image_read import IMAGE_CLASS
from cryoxr.io.ome_zarr.metadata import OME_VERSIONS, UNIT_TO_ANGSTROM
from cryoxr.io.ome_zarr.read import (
    CHUNK_DECODE_ERRORS,
    MAX_AXIS_LENGTH,
    METADATA_ERRORS,
    OME_ZARR_SUFFIXES,
    open_ome_zarr_pyramid,
    read_ome_zarr,
)
from cryoxr.io.ome_zarr.write import (
    COMPRESSORS,
    OME_ATTRS,
    downsample_mean,
    downsample_stored,
    write_ome_zarr,
)

__all__ = [
    "CHUNK_DECODE_ERRORS",
    "COMPRESSORS",
    "IMAGE_CLASS",
    "MAX_AXIS_LENGTH",
    "METADATA_ERRORS",
    "OME_ATTRS",
    "OME_VERSIONS",
    "OME_ZARR_SUFFIXES",
    "UNIT_TO_ANGSTROM",
    "downsample_mean",
    "downsample_stored",
    "open_ome_zarr_pyramid",
    "read_ome_zarr",
    "write_ome_zarr",
]
