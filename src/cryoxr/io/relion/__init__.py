"""RELION STAR files: particles (3.1, 4 and 5) and RELION 5 tilt series.

- :mod:`cryoxr.io.relion.particles`: particle STAR files <-> PoseSet
  (:func:`read_relion_particles`, :func:`write_relion_particles`);
- :mod:`cryoxr.io.relion.tilt_series`: ``tomograms.star`` and its per-tilt-series files
  <-> ProjectionModel (:func:`read_relion_tilt_series`, :func:`write_relion_tilt_series`);
- :func:`relion_tomograms_table`: the tomogram table both use for tomogram sizes;
- :mod:`cryoxr.io.relion.subtilts`: RELION 5 2D subtilt stacks (``relion_tomo_subtomo
  --stack2d`` output: :func:`write_relion_subtilts`) and their zarr twin
  (:func:`write_subtilts_zarr`);
- :mod:`cryoxr.io.relion.tilt_images`: a project's tilt images as lazy stacks
  (:func:`open_relion_tilt_series`).

Each module's docstring gives the conversion (CONVENTIONS.md sections 3 and 7). The
STAR table layer itself is :mod:`cryoxr.io.star`.

Examples
--------
>>> import tempfile, pathlib
>>> import numpy as np
>>> import cryoxr
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> poses = cryoxr.make_poseset([[1000.0, 1500.0, 400.0]], shift=[[-1.0, 2.0, 0.0]],
...                             experiment_id=["TS_01"], pixel_spacing=1.35)
>>> write_relion_particles(poses, folder / "particles.star", version=4)
>>> back = read_relion_particles(folder / "particles.star")
>>> back.position.values.tolist(), back["shift"].values.tolist()
([[1000.0, 1500.0, 400.0]], [[-1.0, 2.0, 0.0]])
>>> print((folder / "particles.star").read_text().splitlines()[-1])
TS_01 1000.0 1500.0 400.0 1.35 -2.7 0.0 0.0 0.0 0.0 1
"""

from cryoxr.io.relion._common import DECIMALS, VERSIONS, relion_tomograms_table
from cryoxr.io.relion.particles import PARTICLE_LAYOUTS, read_relion_particles, write_relion_particles
from cryoxr.io.relion.subtilts import write_relion_subtilts, write_subtilts_zarr
from cryoxr.io.relion.tilt_images import open_relion_tilt_series
from cryoxr.io.relion.tilt_series import (
    TILT_ALIGNMENT_LABELS,
    read_relion_tilt_series,
    write_relion_tilt_series,
)

__all__ = [
    "DECIMALS",
    "PARTICLE_LAYOUTS",
    "TILT_ALIGNMENT_LABELS",
    "VERSIONS",
    "open_relion_tilt_series",
    "read_relion_particles",
    "read_relion_tilt_series",
    "relion_tomograms_table",
    "write_relion_particles",
    "write_relion_subtilts",
    "write_relion_tilt_series",
    "write_subtilts_zarr",
]
