"""The .cryo accessors delegate to the module functions and hold no logic."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pandas as pd
import xarray as xr

import cryoxr
from cryoxr import accessors
from cryoxr.image import bin_image


def test_dataarray_accessor() -> None:
    tomo = cryoxr.Tomogram.from_array(np.arange(64.0).reshape(4, 4, 4), pixel_spacing=2.0, experiment_id="t")
    assert tomo.data.cryo.image.experiment_id == "t"
    assert tomo.data.cryo.validate() is tomo.data
    xr.testing.assert_identical(tomo.data.cryo.bin(2), bin_image(tomo.data, 2))


def test_dataset_accessor_projects(poses: xr.Dataset, tilt_model: pd.DataFrame) -> None:
    kwargs = {"tomogram_dimensions": (4096, 4096, 1000), "tilt_image_center": (2048, 2048)}
    xr.testing.assert_identical(
        poses.cryo.project(tilt_model, **kwargs), cryoxr.project(poses, tilt_model, **kwargs)
    )


def test_dataframe_accessor(tilt_model: pd.DataFrame) -> None:
    np.testing.assert_array_equal(
        tilt_model.cryo.projection_matrices((2048, 2048), (4096, 4096, 1000)),
        cryoxr.projection_model_to_projection_matrices(tilt_model, (2048, 2048), (4096, 4096, 1000)),
    )
    assert list(tilt_model.cryo.experiments()) == ["TS_01"]
    assert tilt_model.cryo.validate() is tilt_model


def test_accessor_methods_are_thin() -> None:
    """Every accessor method body is a docstring plus at most three statements."""
    for cls in (accessors.ImageAccessor, accessors.PoseSetAccessor, accessors.ProjectionModelAccessor):
        tree = ast.parse(inspect.getsource(cls))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name != "__init__":
                body = [
                    s
                    for s in node.body
                    if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
                ]
                assert len(body) <= 3, f"{cls.__name__}.{node.name} holds logic"


def test_plot_and_napari_accessors(poses: xr.Dataset, tilt_model: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tomo = cryoxr.Tomogram.from_array(np.zeros((4, 8, 8)), pixel_spacing=2.0, experiment_id="t")
    for fig in (
        tomo.data.cryo.plot_orthoslices(),
        poses.cryo.plot_orientations(),
        tilt_model.cryo.plot_tilt_scheme(),
    ):
        assert fig.axes
        plt.close(fig)
    ((_, kwargs, kind),) = tomo.data.cryo.to_napari()
    assert kind == "image"
    assert kwargs["scale"] == [2.0, 2.0, 2.0] or list(kwargs["scale"]) == [2.0, 2.0, 2.0]
    assert [layer[2] for layer in poses.cryo.to_napari()] == ["points", "vectors"]
