"""Readers and writers of the field's files: one module per format family.

==================  ==================================  ===================================
format              read                                write
==================  ==================================  ===================================
MRC                 :func:`read_mrc`                    :func:`write_mrc`
OME-Zarr 0.4/0.5    :func:`read_ome_zarr`,              :func:`write_ome_zarr`
                    :func:`open_ome_zarr_pyramid`
RELION particles    :func:`read_relion_particles`       :func:`write_relion_particles`
RELION tilt series  :func:`read_relion_tilt_series`,    :func:`write_relion_tilt_series`
                    :func:`open_relion_tilt_series`
RELION 2D subtilts                                      :func:`write_relion_subtilts`,
                                                        :func:`write_subtilts_zarr`
IMOD xf/tlt/xtilt   :func:`read_imod_alignment`         :func:`write_imod_alignment`
AreTomo aln         :func:`read_aretomo_alignment`      :func:`write_aretomo_alignment`
Dynamo tbl/doc      :func:`read_dynamo_table`           :func:`write_dynamo_table`
any of the above    :func:`open_image`, :func:`read_poses`, :func:`read_alignment`,
                    :func:`describe`, :func:`convert`
==================  ==================================  ===================================

Every writer writes to a temporary sibling and renames it into place, and refuses to
replace an existing file unless ``overwrite=True``. Importing this package registers the
image writers that :meth:`cryoxr.Image.to_mrc` and :meth:`cryoxr.Image.to_zarr` call
(:mod:`cryoxr._writers`).
"""

from cryoxr._writers import register_image_writer
from cryoxr.io.aretomo import read_aretomo_alignment, write_aretomo_alignment
from cryoxr.io.convert import convert
from cryoxr.io.describe import describe, file_kind
from cryoxr.io.dynamo import read_dynamo_table, read_tomogram_map, write_dynamo_table, write_tomogram_map
from cryoxr.io.images import open_image
from cryoxr.io.imod import imod_centers, read_imod_alignment, write_imod_alignment
from cryoxr.io.mrc import read_mrc, write_mrc
from cryoxr.io.ome_zarr import open_ome_zarr_pyramid, read_ome_zarr, write_ome_zarr
from cryoxr.io.relion import (
    open_relion_tilt_series,
    read_relion_particles,
    read_relion_tilt_series,
    relion_tomograms_table,
    write_relion_particles,
    write_relion_subtilts,
    write_relion_tilt_series,
    write_subtilts_zarr,
)
from cryoxr.io.tables import read_alignment, read_poses

__all__ = [
    "convert",
    "describe",
    "file_kind",
    "imod_centers",
    "open_image",
    "open_ome_zarr_pyramid",
    "open_relion_tilt_series",
    "read_alignment",
    "read_aretomo_alignment",
    "read_dynamo_table",
    "read_imod_alignment",
    "read_mrc",
    "read_ome_zarr",
    "read_poses",
    "read_relion_particles",
    "read_relion_tilt_series",
    "read_tomogram_map",
    "relion_tomograms_table",
    "write_aretomo_alignment",
    "write_dynamo_table",
    "write_imod_alignment",
    "write_mrc",
    "write_ome_zarr",
    "write_relion_particles",
    "write_relion_subtilts",
    "write_relion_tilt_series",
    "write_subtilts_zarr",
    "write_tomogram_map",
]

register_image_writer("mrc", write_mrc)
register_image_writer("ome-zarr", write_ome_zarr)
