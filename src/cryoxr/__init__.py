"""cryoxr: cryo-ET tomograms, particle poses and tilt-series projection on dask + xarray.

Importing cryoxr registers the ``.cryo`` accessor on DataArray, Dataset and DataFrame.

Examples
--------
>>> import numpy as np
>>> import cryoxr
>>> tomo = cryoxr.Tomogram.from_array(np.zeros((8, 8, 8), np.float32), pixel_spacing=10.0,
...                                   experiment_id="TS_01")
>>> tomo
<cryoxr.Tomogram 'TS_01' (z: 8, y: 8, x: 8) float32 10 Å/px, dask>
"""

from cryoxr import accessors as _accessors  # noqa: F401  (registers .cryo)
from cryoxr import io
from cryoxr.errors import CryoxrError
from cryoxr.extraction import extract_subtilts
from cryoxr.field_of_view import count_in_field_of_view, in_field_of_view
from cryoxr.image import Image, Micrograph, Tomogram, bin_image, validate_image
from cryoxr.io import convert, describe, open_image, read_alignment, read_poses
from cryoxr.napari import to_napari
from cryoxr.poseset import (
    PoseSet,
    absolute_position,
    from_cryotypes,
    make_poseset,
    to_cryotypes,
    validate_poseset,
)
from cryoxr.projection import project, project_into
from cryoxr.projection_model import (
    ProjectionModel,
    ProjectionModelDataLabels,
    make_projection_model,
    projection_model_to_projection_matrices,
    validate_projection_model,
)

__version__ = "0.1.0"

__all__ = [
    "CryoxrError",
    "Image",
    "Micrograph",
    "PoseSet",
    "ProjectionModel",
    "ProjectionModelDataLabels",
    "Tomogram",
    "absolute_position",
    "bin_image",
    "convert",
    "count_in_field_of_view",
    "describe",
    "extract_subtilts",
    "from_cryotypes",
    "in_field_of_view",
    "io",
    "make_poseset",
    "make_projection_model",
    "open_image",
    "project",
    "project_into",
    "projection_model_to_projection_matrices",
    "read_alignment",
    "read_poses",
    "to_cryotypes",
    "to_napari",
    "validate_image",
    "validate_poseset",
    "validate_projection_model",
]
