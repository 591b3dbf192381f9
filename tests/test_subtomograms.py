"""cryoxr.subtomograms: boxes cut around particles, rotated into the reference frame, lazily."""

from __future__ import annotations

import re
from typing import Any

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage
from scipy.spatial.transform import Rotation

import cryoxr
from cryoxr.errors import InvalidValueError, SchemaError
from cryoxr.subtomograms import extract_subtomograms
from cryoxr.testing import raise_if_dask_computes


def _tomo(volume: np.ndarray, spacing: float = 1.0, eid: str = "t", chunks: Any = "auto") -> cryoxr.Tomogram:
    return cryoxr.Tomogram.from_array(volume, pixel_spacing=spacing, experiment_id=eid, chunks=chunks)


def _grid(box: int) -> np.ndarray:
    """(3, box**3) xyz reference coordinates in (z, y, x) C order."""
    zyx = np.indices((box,) * 3).reshape(3, -1) - box // 2
    return zyx[::-1].astype(np.float64)


def _loop(volume: np.ndarray, position: np.ndarray, matrices: np.ndarray, box: int, **kw: Any) -> np.ndarray:
    """The oracle: scipy.ndimage.map_coordinates on the whole volume, one particle at a time."""
    u = _grid(box)
    return np.stack(
        [
            ndimage.map_coordinates(volume, (m @ u + p[:, None])[::-1], **kw).reshape((box,) * 3)
            for p, m in zip(position, matrices, strict=True)
        ]
    )


def test_planted_template_comes_out_of_every_box(planted: dict[str, Any]) -> None:
    tomo = cryoxr.io.open_image(planted["mrc"])
    boxes = extract_subtomograms(tomo, planted["poses"], box_size=planted["box"]).sortby("particle")
    template = planted["template"].ravel()
    each = [np.corrcoef(b.ravel(), template)[0, 1] for b in boxes.values]
    assert min(each) > 0.5  # each noisy box already shows the template (noise 0.15, peaks 1)
    inverse = planted["poses"].assign(
        orientation=(("particle", "quaternion"), planted["poses"].cryo.rotation.inv().as_quat())
    )
    wrong = extract_subtomograms(tomo, inverse, box_size=planted["box"]).values
    assert np.median([np.corrcoef(b.ravel(), template)[0, 1] for b in wrong]) < 0.3


def test_linear_ramp_is_sampled_exactly_at_r_u_plus_p() -> None:
    # trilinear and cubic B-spline interpolation reproduce a linear function: the box must
    # hold f(R @ u + p) for the hand-written convention, whatever R and sub-pixel p
    z, y, x = np.indices((40, 40, 40), dtype=np.float64)
    volume = x + 10 * y + 100 * z
    rng = np.random.default_rng(0)
    position = rng.uniform(17, 23, size=(5, 3))
    rotation = Rotation.random(5, random_state=1)
    poses = cryoxr.make_poseset(position, orientation=rotation, experiment_id="t", pixel_spacing=1.0)
    u = _grid(6)
    for order in (1, 3):
        boxes = extract_subtomograms(_tomo(volume), poses, box_size=6, order=order).sortby("particle").values
        for box, p, m in zip(boxes, position, rotation.as_matrix(), strict=True):
            xyz = m @ u + p[:, None]
            np.testing.assert_allclose(
                box.ravel(), xyz[0] + 10 * xyz[1] + 100 * xyz[2], rtol=0, atol=1e-7 * 4400
            )


@pytest.mark.parametrize(("order", "mode"), [(1, "constant"), (3, "mirror")])
def test_boxes_equal_map_coordinates_on_the_whole_volume(order: int, mode: str) -> None:
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(30, 36, 40)).astype(np.float32)
    position = rng.uniform(9, 21, size=(12, 3))
    rotation = Rotation.random(12, random_state=2)
    poses = cryoxr.make_poseset(position, orientation=rotation, experiment_id="t", pixel_spacing=1.0)
    boxes = extract_subtomograms(_tomo(volume, chunks=(10, 12, 40)), poses, box_size=8, order=order)
    expected = _loop(volume.astype(np.float64), position, rotation.as_matrix(), 8, order=order, mode=mode)
    np.testing.assert_allclose(boxes.sortby("particle").values, expected, atol=2e-6)
    assert boxes.dtype == np.float32


def test_rotate_false_keeps_the_tomogram_axes_and_subpixel_position() -> None:
    volume = np.arange(10 * 10 * 10, dtype=np.float64).reshape(10, 10, 10)  # value = 100 z + 10 y + x
    poses = cryoxr.make_poseset(
        [[4.5, 5.0, 3.0]],
        orientation=Rotation.from_euler("z", [90], degrees=True),
        experiment_id="t",
        pixel_spacing=1.0,
    )
    box = extract_subtomograms(_tomo(volume), poses, box_size=3, rotate=False).values[0]
    # box (z, y, x) = f(x + 4.5 - 1, y + 5 - 1, z + 3 - 1): 100 (z + 2) + 10 (y + 4) + x + 3.5
    assert box[0, 0, 0] == pytest.approx(100 * 2 + 10 * 4 + 3.5)
    assert box[2, 1, 0] == pytest.approx(100 * 4 + 10 * 5 + 3.5)
    turned = extract_subtomograms(_tomo(volume), poses, box_size=3).values[0]
    # rotated a quarter turn about z: reference +x runs along tomogram +y (+10 per step)
    assert turned[1, 1, 2] - turned[1, 1, 1] == pytest.approx(10.0)
    assert turned[1, 2, 1] - turned[1, 1, 1] == pytest.approx(-1.0)


def test_boxes_crossing_the_edge_are_filled_and_flagged() -> None:
    volume = np.ones((12, 12, 12), dtype=np.float32)
    poses = cryoxr.make_poseset(
        [[1.0, 6.0, 6.0], [6.0, 6.0, 6.0], [6.0, 6.0, 10.5]], experiment_id="t", pixel_spacing=1.0
    )
    boxes = extract_subtomograms(_tomo(volume), poses, box_size=6, rotate=False).sortby("particle")
    assert boxes.at_edge.values.tolist() == [True, False, True]
    first = boxes.values[0]
    assert np.isnan(first[:, :, :2]).all()  # x = 1 - 3 and 1 - 2: outside
    assert (first[:, :, 2:] == 1.0).all()
    assert not np.isnan(boxes.values[1]).any()
    last = boxes.values[2]  # z = 10.5 + (-3 .. 2): samples at 11.5 and 12.5 are outside (last voxel 11)
    assert np.isnan(last[4:]).all()
    assert (last[:4] == 1.0).all()
    zeros = extract_subtomograms(_tomo(volume), poses, box_size=6, rotate=False, fill=0.0)
    assert (zeros.sortby("particle").values[0][:, :, :2] == 0).all()


def test_poses_at_another_pixel_spacing_are_rescaled() -> None:
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(24, 24, 24)).astype(np.float32)
    tomo = _tomo(volume, spacing=5.0)
    position = rng.uniform(8, 16, size=(4, 3))
    rotation = Rotation.random(4, random_state=4)
    at_tomo = cryoxr.make_poseset(position, orientation=rotation, experiment_id="t", pixel_spacing=5.0)
    binned = cryoxr.make_poseset(position / 2, orientation=rotation, experiment_id="t", pixel_spacing=10.0)
    a = extract_subtomograms(tomo, at_tomo, box_size=6).values
    b = extract_subtomograms(tomo, binned, box_size=6).values
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert extract_subtomograms(tomo, binned, box_size=6).attrs["pixel_spacing"] == 5.0


def test_a_crop_keeps_its_place_in_angstrom() -> None:
    volume = np.random.default_rng(5).normal(size=(20, 20, 20)).astype(np.float32)
    whole = _tomo(volume, spacing=2.0)
    crop = whole.isel(x=slice(4, None), y=slice(2, None))  # coords start at 8 and 4 Å
    poses = cryoxr.make_poseset([[10.0, 9.0, 8.0]], experiment_id="t", pixel_spacing=2.0)
    np.testing.assert_array_equal(
        extract_subtomograms(crop, poses, box_size=4).values,
        extract_subtomograms(whole, poses, box_size=4).values,
    )


class Counting:
    """A read-through array that records what each read asks for."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
        self.reads: list[tuple[slice, ...]] = []

    def __getitem__(self, key: Any) -> np.ndarray:
        self.reads.append(key)
        return self.array[key]

    @property
    def voxels(self) -> int:
        return sum(self.array[key].size for key in self.reads)


def test_building_reads_nothing(planted: dict[str, Any]) -> None:
    with raise_if_dask_computes():
        for on_disk in ("mrc", "zarr"):
            tomo = cryoxr.io.open_image(planted[on_disk])
            extract_subtomograms(tomo, planted["poses"], box_size=20)
            extract_subtomograms({"TS_01": tomo}, planted["poses"], box_size=20, order=3, rotate=False)


def test_only_the_regions_around_particles_are_read(planted: dict[str, Any]) -> None:
    source = Counting(planted["volume"])
    tomo = _tomo(source, spacing=10.0, eid="TS_01", chunks=(16, 16, 16))  # type: ignore[arg-type]
    poses = planted["poses"]
    corner = poses.isel(particle=np.flatnonzero((poses.position.values[:, :2] < 40).all(axis=1)))
    assert corner.sizes["particle"] == 2
    with raise_if_dask_computes():
        boxes = extract_subtomograms(tomo, corner, box_size=20)
    assert source.reads == []
    values = boxes.values
    position = corner.position.values
    reach = np.ceil(np.sqrt(3) * 11) + 1  # the farthest sample of a rotated 20-box, and its neighbour
    high = int(np.floor((position[:, :2] + reach).max()))  # in x and y
    assert max(key[2].stop for key in source.reads) <= high + 1  # only the region, x and y <= high
    assert max(key[1].stop for key in source.reads) <= high + 1
    assert all(
        key[0].stop - key[0].start < 16 or key[0].stop % 16 == 0 for key in source.reads
    )  # within chunks
    assert source.voxels < 0.35 * planted["volume"].size
    np.testing.assert_allclose(
        values, extract_subtomograms(_tomo(planted["volume"], spacing=10.0), corner, box_size=20).values
    )


def test_particle_coordinate_gives_the_poseset_order(planted: dict[str, Any]) -> None:
    tomo = cryoxr.io.open_image(planted["zarr"])
    poses = planted["poses"]
    boxes = extract_subtomograms(tomo, poses, box_size=8, particles_per_task=5)
    assert sorted(boxes.particle.values.tolist()) == list(range(poses.sizes["particle"]))
    assert boxes.data.chunks[0][0] <= 5
    ordered = boxes.sortby("particle").values
    for i in (0, 17, 31):
        one = extract_subtomograms(tomo, poses.isel(particle=[i]), box_size=8).values[0]
        np.testing.assert_array_equal(ordered[i], one)
    lined_up = poses.isel(particle=boxes.particle.values)
    np.testing.assert_array_equal(lined_up.position.values[0], poses.position.values[int(boxes.particle[0])])


def test_many_tomograms_from_a_mapping_or_a_function() -> None:
    rng = np.random.default_rng(6)
    tomos = {eid: _tomo(rng.normal(size=(16, 16, 16)).astype(np.float32), eid=eid) for eid in ("A", "B")}
    position = rng.uniform(6, 10, size=(6, 3))
    ids = ["A", "B", "A", "B", "B", "A"]
    poses = cryoxr.make_poseset(position, experiment_id=ids, pixel_spacing=1.0)
    opened: list[str] = []

    def opener(eid: str) -> cryoxr.Tomogram:
        opened.append(eid)
        return tomos[eid]

    by_map = extract_subtomograms(tomos, poses, box_size=4).sortby("particle")
    by_function = extract_subtomograms(opener, poses, box_size=4).sortby("particle")
    assert opened == ["A", "B"]
    np.testing.assert_array_equal(by_map.values, by_function.values)
    assert by_map.experiment_id.values.tolist() == ids
    for i, eid in enumerate(ids):
        one = cryoxr.make_poseset(position[i : i + 1], experiment_id=eid, pixel_spacing=1.0)
        np.testing.assert_array_equal(
            by_map.values[i], extract_subtomograms(tomos[eid], one, box_size=4).values[0]
        )
    with pytest.raises(InvalidValueError, match="no tomogram for experiment_id 'B'; the mapping has A"):
        extract_subtomograms({"A": tomos["A"]}, poses, box_size=4)
    with pytest.raises(InvalidValueError, match="the poses span 2 experiments"):
        extract_subtomograms(tomos["A"], poses, box_size=4)
    with pytest.raises(SchemaError, match="the tomogram for 'A' is a str"):
        extract_subtomograms(lambda eid: "A.mrc", poses, box_size=4)


def test_tomograms_at_different_pixel_spacings_are_refused() -> None:
    tomos = {"A": _tomo(np.zeros((8, 8, 8)), 1.0, "A"), "B": _tomo(np.zeros((8, 8, 8)), 2.0, "B")}
    poses = cryoxr.make_poseset(np.full((2, 3), 4.0), experiment_id=["A", "B"], pixel_spacing=1.0)
    with pytest.raises(
        InvalidValueError, match=re.escape("share one pixel spacing, found {'A': 1.0, 'B': 2.0}")
    ):
        extract_subtomograms(tomos, poses, box_size=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"box_size": 0}, "box_size must be an int >= 1, found 0"),
        ({"box_size": 4.5}, "box_size must be an int >= 1, found 4.5"),
        ({"box_size": 4, "order": 2}, r"order must be one of \(1, 3\), found 2"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], message: str) -> None:
    poses = cryoxr.make_poseset(np.full((1, 3), 4.0), experiment_id="t", pixel_spacing=1.0)
    with pytest.raises(InvalidValueError, match=message):
        extract_subtomograms(_tomo(np.zeros((8, 8, 8))), poses, **kwargs)


def test_a_2d_image_is_not_a_tomogram() -> None:
    poses = cryoxr.make_poseset(np.full((1, 3), 4.0), experiment_id="t", pixel_spacing=1.0)
    image = cryoxr.Micrograph.from_array(np.zeros((8, 8)), pixel_spacing=1.0, experiment_id="t")
    with pytest.raises(InvalidValueError, match="expected 3 spatial dims"):
        extract_subtomograms(image, poses, box_size=2)


def test_dask_backed_poses_and_eager_tomograms_give_the_same_boxes() -> None:
    rng = np.random.default_rng(8)
    volume = rng.normal(size=(20, 20, 20))
    position = rng.uniform(7, 13, size=(9, 3))
    rotation = Rotation.random(9, random_state=9)
    eager = cryoxr.make_poseset(position, orientation=rotation, experiment_id="t", pixel_spacing=1.0)
    lazy = cryoxr.make_poseset(position, orientation=rotation, experiment_id="t", pixel_spacing=1.0, chunks=4)
    numpy_tomo = xr.DataArray(volume, dims=("z", "y", "x"), coords={d: np.arange(20.0) for d in "zyx"})
    numpy_tomo.attrs.update(pixel_spacing=1.0, experiment_id="t")
    a = extract_subtomograms(numpy_tomo, eager, box_size=5)
    b = extract_subtomograms(_tomo(volume), lazy, box_size=5)
    assert isinstance(a.data, da.Array)
    assert a.dtype == np.float64  # float64 tomograms stay float64
    np.testing.assert_allclose(a.values, b.values, atol=1e-12)


def test_an_empty_poseset_gives_no_boxes() -> None:
    poses = cryoxr.make_poseset(np.zeros((0, 3)), experiment_id="t", pixel_spacing=1.0)
    boxes = extract_subtomograms(_tomo(np.zeros((8, 8, 8), np.float32)), poses, box_size=4)
    assert boxes.shape == (0, 4, 4, 4)
