"""MRC / CCP4 files (MRC2014): lazy reading into an Image, streaming writing.

Reading parses the 1024-byte header only; the voxels stay on disk behind a small picklable
array (:class:`MrcArray`: path, offset, shape, dtype) wrapped in dask. Each read opens the
file itself, so tasks run the same under the threaded, process and distributed schedulers.
Header fields cryoxr does not model are kept raw in the DataArray's attrs, under ``mrc_*``
keys, and :func:`write_mrc` writes them back.

=================================  ===================================================
module                             job
=================================  ===================================================
:mod:`cryoxr.io.mrc.header`        modes, header layout, the ``mrc_*`` attrs table
:mod:`cryoxr.io.mrc.array`         :class:`MrcArray`: lazy access, a memory map per read
:mod:`cryoxr.io.mrc.read`          :func:`read_mrc`, chunking, :func:`rechunk_from_file`
:mod:`cryoxr.io.mrc.write`         :func:`write_mrc`, :func:`store_guarded`
:mod:`cryoxr.io.mrc.compressed`    gzip / bzip2 files, decompressed into memory
=================================  ===================================================

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> from cryoxr import Tomogram
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> tomo = Tomogram.from_array(np.arange(60, dtype=np.float32).reshape(3, 4, 5),
...                            pixel_spacing=13.48, experiment_id="TS_01")
>>> path = write_mrc(tomo, folder / "TS_01.mrc")
>>> back = read_mrc(path)
>>> type(back).__name__, back.shape, back.pixel_spacing, back.experiment_id
('Tomogram', (3, 4, 5), 13.48, 'TS_01')
>>> float(back.data.sel(z=13.48).mean())
29.5
"""

from cryoxr.io._image_read import IMAGE_CLASS
from cryoxr.io.mrc.array import MAP_ALIGNMENT, MrcArray
from cryoxr.io.mrc.header import (
    AXIS_BY_MAP,
    BYTE_ORDER_BY_STAMP,
    HEADER_BYTES,
    HEADER_DTYPE,
    IMAGE_STACK_ISPG,
    IMOD_SIGNED_BYTES,
    IMOD_STAMP,
    LITTLE_ENDIAN_STAMP,
    MRC_MODES,
    NVERSION,
    VOLUME_ISPG,
    VOLUME_STACK_ISPG,
    WRITE_MODE_BY_DTYPE,
    ByteOrder,
)
from cryoxr.io.mrc.read import AUTO_CHUNK_BYTES, MRC_SUFFIXES, STACK_SUFFIXES, read_mrc, rechunk_from_file
from cryoxr.io.mrc.write import store_guarded, write_mrc

__all__ = [
    "AUTO_CHUNK_BYTES",
    "AXIS_BY_MAP",
    "BYTE_ORDER_BY_STAMP",
    "HEADER_BYTES",
    "HEADER_DTYPE",
    "IMAGE_CLASS",
    "IMAGE_STACK_ISPG",
    "IMOD_SIGNED_BYTES",
    "IMOD_STAMP",
    "LITTLE_ENDIAN_STAMP",
    "MAP_ALIGNMENT",
    "MRC_MODES",
    "MRC_SUFFIXES",
    "NVERSION",
    "STACK_SUFFIXES",
    "VOLUME_ISPG",
    "VOLUME_STACK_ISPG",
    "WRITE_MODE_BY_DTYPE",
    "ByteOrder",
    "MrcArray",
    "read_mrc",
    "rechunk_from_file",
    "store_guarded",
    "write_mrc",
]
