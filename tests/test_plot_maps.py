"""plot_map_slices: central sections of maps, one row each, in Å from the centre."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from cryoxr.errors import InvalidValueError
from cryoxr.image import image_coords
from cryoxr.plot import plot_map_slices


def _map(box: int = 8, spacing: float = 5.0) -> xr.DataArray:
    values = np.zeros((box,) * 3)
    values[box // 2, box // 2 - 1, box // 2 + 2] = 3.0  # (x, y, z) = (+2, -1, 0) voxels
    return xr.DataArray(
        values, dims=("z", "y", "x"), coords=image_coords((box,) * 3, ("z", "y", "x"), spacing),
        attrs={"pixel_spacing": spacing, "experiment_id": "merged"},
    )  # fmt: skip


def test_three_central_sections_per_map_in_angstrom() -> None:
    fig = plot_map_slices({"reconstruction": _map(), "reference": np.ones((6, 6, 6))}, title="t")
    assert len(fig.axes) == 6
    xy, xz, yz = fig.axes[:3]
    assert xy.get_title() == "reconstruction: XY (z = 0)"
    assert (xz.get_xlabel(), xz.get_ylabel()) == ("x (Å)", "z (Å)")
    assert (yz.get_xlabel(), yz.get_ylabel()) == ("y (Å)", "z (Å)")
    # voxel edges in Å with the centre voxel (box // 2) at 0: 8 voxels of 5 Å from -22.5
    assert [float(v) for v in xy.images[0].get_extent()] == [-22.5, 17.5, -22.5, 17.5]
    # the XY section through z = box // 2 holds the bright voxel at row y = 3, column x = 6
    plane = np.asarray(xy.images[0].get_array())
    assert tuple(int(i) for i in np.unravel_index(plane.argmax(), plane.shape)) == (3, 6)
    # the numpy reference: 1 Å voxels; each row keeps its own grey levels
    assert [float(v) for v in fig.axes[3].images[0].get_extent()] == [-3.5, 2.5, -3.5, 2.5]
    assert fig.axes[0].images[0].get_clim() != fig.axes[3].images[0].get_clim()
    assert fig.get_suptitle() == "t"


@pytest.mark.parametrize(
    ("maps", "message"),
    [
        ({}, "at least one map"),
        ({"a": np.zeros((4, 4))}, "must be 3D"),
        ({"a": _map().transpose("x", "y", "z")}, "dims"),
    ],
)
def test_bad_maps_are_named(maps: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidValueError, match=message):
        plot_map_slices(maps)
