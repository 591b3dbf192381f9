"""The thin ``.cryo`` accessors on DataArray, Dataset and DataFrame.

Each method hands off to a pure function in the model modules; no logic lives here.
This module imports only xarray and pandas: the modules it delegates to are imported by
the method that needs them, so registering the accessors costs nothing beyond xarray
(``import cryoxr`` registers them as soon as xarray or pandas is imported).

Examples
--------
>>> import numpy as np
>>> import cryoxr
>>> ds = cryoxr.make_poseset(np.zeros((2, 3)), experiment_id="t", pixel_spacing=1.0)
>>> ds.cryo.rotation.as_quat().shape
(2, 4)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import xarray as xr

if TYPE_CHECKING:
    import numpy as np
    from scipy.spatial.transform import Rotation

    from cryoxr.image import Image

__all__ = ["ImageAccessor", "PoseSetAccessor", "ProjectionModelAccessor"]


@xr.register_dataarray_accessor("cryo")
class ImageAccessor:
    """``da.cryo``: an image DataArray (or projected positions) seen through cryoxr."""

    def __init__(self, da: xr.DataArray) -> None:
        self._da = da

    @property
    def image(self) -> Image:
        """The DataArray wrapped as a validated :class:`cryoxr.Image`."""
        from cryoxr import image

        return image.Image(self._da)

    def validate(self) -> xr.DataArray:
        """:func:`cryoxr.validate_image`."""
        from cryoxr import image

        return image.validate_image(self._da)

    def bin(self, factor: int) -> xr.DataArray:
        """:func:`cryoxr.image.bin_image`."""
        from cryoxr import image

        return image.bin_image(self._da, factor)

    def in_field_of_view(self, *, image_shape: Sequence[int], margin: float = 0.0) -> xr.DataArray:
        """:func:`cryoxr.in_field_of_view` on projected positions."""
        from cryoxr import field_of_view

        return field_of_view.in_field_of_view(self._da, image_shape=image_shape, margin=margin)

    def plot_orthoslices(self, **kwargs: Any) -> Any:
        """:func:`cryoxr.plot.plot_orthoslices` of this tomogram (needs matplotlib)."""
        from cryoxr import plot  # optional extra

        return plot.plot_orthoslices(self._da, **kwargs)

    def plot_projected(self, tilt_series: Image | xr.DataArray, **kwargs: Any) -> Any:
        """:func:`cryoxr.plot.plot_projected`: these projected positions on ``tilt_series``."""
        from cryoxr import plot

        return plot.plot_projected(tilt_series, self._da, **kwargs)

    def to_napari(self, **kwargs: Any) -> list[Any]:
        """:func:`cryoxr.napari.to_napari` layer-data tuples."""
        from cryoxr import napari

        return napari.to_napari(self._da, **kwargs)

    def fsc(self, other: Image | xr.DataArray, **kwargs: Any) -> xr.DataArray:
        """:func:`cryoxr.fsc` of this map and ``other``."""
        from cryoxr import resolution

        return resolution.fsc(self._da, other, **kwargs)

    def plot_average(self, fsc_curve: xr.DataArray | None = None, **kwargs: Any) -> Any:
        """:func:`cryoxr.plot.plot_average` of this average (needs matplotlib)."""
        from cryoxr import plot

        return plot.plot_average(self._da, fsc_curve, **kwargs)


@xr.register_dataset_accessor("cryo")
class PoseSetAccessor:
    """``ds.cryo``: a PoseSet Dataset seen through cryoxr."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    @property
    def rotation(self) -> Rotation:
        """The orientations as a scipy Rotation: :func:`cryoxr.poseset.rotation`."""
        from cryoxr import poseset

        return poseset.rotation(self._ds)

    @property
    def experiment_ids(self) -> list[str]:
        """:func:`cryoxr.poseset.experiment_ids`."""
        from cryoxr import poseset

        return poseset.experiment_ids(self._ds)

    def validate(self, *, check_values: bool = True) -> xr.Dataset:
        """:func:`cryoxr.validate_poseset`."""
        from cryoxr import poseset

        return poseset.validate_poseset(self._ds, check_values=check_values)

    def absolute_position(self, *, unit: str = "pixel") -> xr.DataArray:
        """``position + shift``: :func:`cryoxr.poseset.absolute_position`."""
        from cryoxr import poseset

        return poseset.absolute_position(self._ds, unit=unit)

    def to_cryotypes(self) -> Any:
        """:func:`cryoxr.to_cryotypes`."""
        from cryoxr import poseset

        return poseset.to_cryotypes(self._ds)

    def project(self, model: pd.DataFrame, **kwargs: Any) -> xr.DataArray:
        """:func:`cryoxr.project` these poses through ``model``."""
        from cryoxr import projection

        return projection.project(self._ds, model, **kwargs)

    def extract_subtomograms(self, tomogram: Any, **kwargs: Any) -> xr.DataArray:
        """:func:`cryoxr.extract_subtomograms` of these poses from ``tomogram``."""
        from cryoxr import subtomograms

        return subtomograms.extract_subtomograms(tomogram, self._ds, **kwargs)

    def average_subtomograms(self, tomogram: Any, **kwargs: Any) -> Any:
        """:func:`cryoxr.average_subtomograms` of these poses in ``tomogram``."""
        from cryoxr import average

        return average.average_subtomograms(tomogram, self._ds, **kwargs)

    def plot_orientations(self, **kwargs: Any) -> Any:
        """:func:`cryoxr.plot.plot_orientations` (needs matplotlib)."""
        from cryoxr import plot

        return plot.plot_orientations(self._ds, **kwargs)

    def to_napari(self, **kwargs: Any) -> list[Any]:
        """:func:`cryoxr.napari.to_napari` points and vectors layers."""
        from cryoxr import napari

        return napari.to_napari(self._ds, **kwargs)


@pd.api.extensions.register_dataframe_accessor("cryo")
class ProjectionModelAccessor:
    """``df.cryo``: a ProjectionModel DataFrame seen through cryoxr."""

    def __init__(self, df: pd.DataFrame) -> None:
        self._df = df

    def validate(self) -> pd.DataFrame:
        """:func:`cryoxr.validate_projection_model`."""
        from cryoxr import projection_model

        return projection_model.validate_projection_model(self._df)

    def projection_matrices(
        self,
        tilt_image_center: Sequence[float],
        tomogram_dimensions: Sequence[float],
        *,
        specimen_center: Sequence[float] | None = None,
    ) -> np.ndarray:
        """:func:`cryoxr.projection_model_to_projection_matrices`."""
        from cryoxr import projection_model

        return projection_model.projection_model_to_projection_matrices(
            self._df, tilt_image_center, tomogram_dimensions, specimen_center=specimen_center
        )

    def plot_tilt_scheme(self, **kwargs: Any) -> Any:
        """:func:`cryoxr.plot.plot_tilt_scheme` (needs matplotlib)."""
        from cryoxr import plot

        return plot.plot_tilt_scheme(self._df, **kwargs)

    def experiments(self) -> Mapping[str, pd.DataFrame]:
        """One sub-model per experiment, in order of appearance."""
        from cryoxr import projection_model

        grouped = self._df.groupby(projection_model.PMDL.EXPERIMENT_ID, sort=False)
        return {str(key): group for key, group in grouped}
