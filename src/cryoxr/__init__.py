"""cryoxr: cryo-ET tomograms, particle poses and tilt-series projection on dask + xarray.

Importing cryoxr registers the ``.cryo`` accessor on DataArray, Dataset and DataFrame.
The public names below load on first use, so ``import cryoxr`` (and the ``cryoxr``
command's ``--help``) does not pay for dask, zarr or scipy until they are needed; the
accessors are registered as soon as xarray or pandas is imported, before or after cryoxr.

Examples
--------
>>> import numpy as np
>>> import cryoxr
>>> tomo = cryoxr.Tomogram.from_array(np.zeros((8, 8, 8), np.float32), pixel_spacing=10.0,
...                                   experiment_id="TS_01")
>>> tomo
<cryoxr.Tomogram 'TS_01' (z: 8, y: 8, x: 8) float32 10 Å/px, dask>
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from cryoxr._writers import ImageWriter, register_image_writer
from cryoxr.errors import CryoxrError

if TYPE_CHECKING:  # what the lazy table below resolves to, for type checkers and IDEs
    from cryoxr import io
    from cryoxr.average import HalfMaps, average_subtomograms
    from cryoxr.ctf import ctf_2d, dose_weights
    from cryoxr.defocus import particle_defocus
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
    from cryoxr.reconstruction import reconstruct_particle
    from cryoxr.resolution import fsc
    from cryoxr.subtomograms import extract_subtomograms
    from cryoxr.symmetry import symmetry_matrices

__version__ = "0.1.0"

#: public name -> the module that defines it (``io`` is the subpackage itself)
_LAZY: dict[str, str] = {
    "io": "cryoxr.io",
    "ctf_2d": "cryoxr.ctf",
    "dose_weights": "cryoxr.ctf",
    "particle_defocus": "cryoxr.defocus",
    "HalfMaps": "cryoxr.average",
    "average_subtomograms": "cryoxr.average",
    "extract_subtilts": "cryoxr.extraction",
    "extract_subtomograms": "cryoxr.subtomograms",
    "fsc": "cryoxr.resolution",
    "count_in_field_of_view": "cryoxr.field_of_view",
    "in_field_of_view": "cryoxr.field_of_view",
    **dict.fromkeys(["Image", "Micrograph", "Tomogram", "bin_image", "validate_image"], "cryoxr.image"),
    **dict.fromkeys(["convert", "describe", "open_image", "read_alignment", "read_poses"], "cryoxr.io"),
    "to_napari": "cryoxr.napari",
    **dict.fromkeys(
        [
            "PoseSet",
            "absolute_position",
            "from_cryotypes",
            "make_poseset",
            "to_cryotypes",
            "validate_poseset",
        ],
        "cryoxr.poseset",
    ),
    "project": "cryoxr.projection",
    "project_into": "cryoxr.projection",
    "reconstruct_particle": "cryoxr.reconstruction",
    "symmetry_matrices": "cryoxr.symmetry",
    **dict.fromkeys(
        [
            "ProjectionModel",
            "ProjectionModelDataLabels",
            "make_projection_model",
            "projection_model_to_projection_matrices",
            "validate_projection_model",
        ],
        "cryoxr.projection_model",
    ),
}

__all__ = [
    "CryoxrError",
    "HalfMaps",
    "Image",
    "Micrograph",
    "PoseSet",
    "ProjectionModel",
    "ProjectionModelDataLabels",
    "Tomogram",
    "absolute_position",
    "average_subtomograms",
    "bin_image",
    "convert",
    "count_in_field_of_view",
    "ctf_2d",
    "describe",
    "dose_weights",
    "extract_subtilts",
    "extract_subtomograms",
    "from_cryotypes",
    "fsc",
    "in_field_of_view",
    "io",
    "make_poseset",
    "make_projection_model",
    "open_image",
    "particle_defocus",
    "project",
    "project_into",
    "projection_model_to_projection_matrices",
    "read_alignment",
    "read_poses",
    "reconstruct_particle",
    "symmetry_matrices",
    "to_cryotypes",
    "to_napari",
    "validate_image",
    "validate_poseset",
    "validate_projection_model",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'cryoxr' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name == f"cryoxr.{name}" else getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# --- Image.to_mrc / Image.to_zarr: the IO layer's writers, loaded on first use ----------


def _io_writer(name: str) -> ImageWriter:
    def write(*args: Any, **kwargs: Any) -> Any:
        from cryoxr import io  # registers the real writers, replacing this stand-in

        return getattr(io, name)(*args, **kwargs)

    write.__name__ = write.__qualname__ = name
    return write


register_image_writer("mrc", _io_writer("write_mrc"))
register_image_writer("ome-zarr", _io_writer("write_ome_zarr"))


# --- the .cryo accessors, registered when xarray or pandas is first imported ---------------

_ACCESSOR_HOSTS = ("xarray", "pandas")


def _initializing(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _register_accessors(finished: str | None = None) -> None:
    """Import the accessors module (it registers them); ``finished`` names a host package
    whose code has just run to its end (its import is still marked as in progress)."""
    if finished != "xarray" and _initializing("xarray"):
        return  # pandas finished inside xarray's own import: wait for xarray to finish
    if "cryoxr.accessors" not in sys.modules:  # also true while it is being imported
        importlib.import_module("cryoxr.accessors")
    for i, finder in enumerate(sys.meta_path):
        if isinstance(finder, _RegisterAccessorsOnImport):
            del sys.meta_path[i]
            break


class _RegisterAccessorsOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of xarray / pandas so that the accessors
    are registered right after that package has been executed."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _ACCESSOR_HOSTS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            _register_accessors(finished=fullname)

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if any(host in sys.modules for host in _ACCESSOR_HOSTS):
    _register_accessors()
elif not any(isinstance(f, _RegisterAccessorsOnImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAccessorsOnImport())
