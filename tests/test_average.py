"""cryoxr.average: subtomogram averages as tree reductions, missing wedge, half maps, out of core."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pytest
from scipy import fft, ndimage
from scipy.spatial.transform import Rotation

import cryoxr
from cryoxr.average import HalfMaps, average_subtomograms, missing_wedge_mask
from cryoxr.errors import InvalidValueError
from cryoxr.testing import raise_if_dask_computes


def _corr(a: Any, b: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a).ravel(), b.ravel())[0, 1])


def _inverted(poses: Any) -> Any:
    return poses.assign(orientation=(("particle", "quaternion"), poses.cryo.rotation.inv().as_quat()))


@pytest.mark.parametrize("on_disk", ["mrc", "zarr"])
def test_average_recovers_the_chiral_template_and_inverse_orientations_do_not(
    planted: dict[str, Any], on_disk: str
) -> None:
    tomo = cryoxr.io.open_image(planted[on_disk])
    average = average_subtomograms(tomo, planted["poses"], box_size=planted["box"])
    assert isinstance(average, cryoxr.Tomogram)
    assert average.data.attrs["n_particles"] == 32
    assert _corr(average.data.values, planted["template"]) > 0.9
    # the mirror image of the template is not what comes out (the template is chiral)
    assert _corr(average.data.values, planted["template"][::-1]) < 0.75
    wrong = average_subtomograms(tomo, _inverted(planted["poses"]), box_size=planted["box"])
    assert _corr(wrong.data.values, planted["template"]) < 0.75


def test_average_equals_a_scipy_loop_on_a_memory_map(planted: dict[str, Any]) -> None:
    memmap = np.memmap(planted["mrc"], dtype=np.float32, mode="r", offset=1024, shape=planted["volume"].shape)
    poses, box = planted["poses"], 12
    zyx = np.indices((box,) * 3).reshape(3, -1) - box // 2
    u = zyx[::-1].astype(np.float64)
    total = np.zeros(box**3)
    for p, m in zip(poses.position.values, poses.cryo.rotation.as_matrix(), strict=True):
        total += ndimage.map_coordinates(memmap, (m @ u + p[:, None])[::-1], order=1)
    average = average_subtomograms(
        cryoxr.io.open_image(planted["mrc"]), poses, box_size=box, particles_per_task=7
    )
    np.testing.assert_allclose(
        average.data.values, (total / len(poses.particle)).reshape((box,) * 3), atol=1e-5
    )


def test_building_the_average_computes_nothing_and_halves_share_one_reduction(
    planted: dict[str, Any],
) -> None:
    with raise_if_dask_computes():
        tomo = cryoxr.io.open_image(planted["mrc"])
        maps = average_subtomograms(
            tomo, planted["poses"], box_size=8, half_maps=True, missing_wedge=(-50, 50)
        )
    assert isinstance(maps, HalfMaps)
    with raise_if_dask_computes(max_computes=1):
        full, one, two = dask.compute(*(m.data for m in maps))
    assert np.isfinite(full).all()
    assert not np.allclose(one, two)
    assert maps.half1.data.attrs["n_particles"] == maps.half2.data.attrs["n_particles"] == 16


def test_half_maps_split_even_and_odd_or_by_rln_random_subset(planted: dict[str, Any]) -> None:
    tomo = cryoxr.io.open_image(planted["zarr"])
    poses, box = planted["poses"], 8
    maps = average_subtomograms(tomo, poses, box_size=box, half_maps=True)
    boxes = cryoxr.extract_subtomograms(tomo, poses, box_size=box).sortby("particle").values
    np.testing.assert_allclose(maps.half1.data.values, boxes[0::2].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(maps.half2.data.values, boxes[1::2].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(maps.average.data.values, boxes.mean(axis=0), atol=1e-6)
    subset = np.where(np.arange(32) < 10, 1, 2)
    split = average_subtomograms(
        tomo, poses.assign(rlnRandomSubset=("particle", subset)), box_size=box, half_maps=True
    )
    np.testing.assert_allclose(split.half1.data.values, boxes[:10].mean(axis=0), atol=1e-6)
    assert (split.half1.data.attrs["n_particles"], split.half2.data.attrs["n_particles"]) == (10, 22)
    assert [m.experiment_id for m in split] == ["average", "half1", "half2"]
    bad = poses.assign(rlnRandomSubset=("particle", np.where(np.arange(32) == 5, 3, 1)))
    with pytest.raises(InvalidValueError, match="rlnRandomSubset must hold 1 or 2, found 3 at particle 5"):
        average_subtomograms(tomo, bad, box_size=box, half_maps=True)


def test_edge_boxes_are_left_out_or_averaged_voxel_by_voxel() -> None:
    volume = np.arange(12.0)[None, None, :] * np.ones((12, 12, 1), np.float32)  # value = x
    tomo = cryoxr.Tomogram.from_array(volume.astype(np.float32), pixel_spacing=1.0, experiment_id="t")
    poses = cryoxr.make_poseset([[1.0, 6.0, 6.0], [6.0, 6.0, 6.0]], experiment_id="t", pixel_spacing=1.0)
    left_out = average_subtomograms(tomo, poses, box_size=6, rotate=False)
    assert (left_out.data.attrs["n_particles"], left_out.data.attrs["n_at_edge"]) == (1, 1)
    np.testing.assert_allclose(left_out.data.values[0, 0], np.arange(3.0, 9.0))
    inside = average_subtomograms(tomo, poses, box_size=6, rotate=False, edge="include").data.values
    # x columns 0, 1 of the edge box are outside: only the inner particle counts there
    np.testing.assert_allclose(inside[0, 0], [3.0, 4.0, (5 + 0) / 2, (6 + 1) / 2, (7 + 2) / 2, (8 + 3) / 2])
    only_edge = average_subtomograms(tomo, poses.isel(particle=[0]), box_size=6, rotate=False, edge="include")
    assert np.isnan(only_edge.data.values[..., :2]).all()
    with pytest.raises(
        InvalidValueError, match="no particle to average: all 1 boxes cross the tomogram edge"
    ):
        average_subtomograms(tomo, poses.isel(particle=[0]), box_size=6)
    with pytest.raises(InvalidValueError, match="no particle to average: the PoseSet is empty"):
        average_subtomograms(tomo, poses.isel(particle=[]), box_size=6)
    with pytest.raises(InvalidValueError, match="edge must be 'exclude' or 'include', found 'keep'"):
        average_subtomograms(tomo, poses, box_size=6, edge="keep")  # type: ignore[call-overload]


def test_missing_wedge_mask_by_hand() -> None:
    mask = missing_wedge_mask(8, (-45.0, 45.0))
    assert mask.shape == (8, 8, 5)
    # (z, y, x) rfft index: along x and y measured, along z missing; 45 deg is the border
    assert mask[0, 0, 3]
    assert mask[0, 3, 0]
    assert not mask[3, 0, 0]
    assert mask[2, 0, 2]
    assert mask[-2, 0, 2]
    assert not mask[3, 0, 2]
    assert mask[0, 0, 0]
    # a box turned a quarter about y: its x axis is the tomogram's -z, which no tilt measured
    turned = missing_wedge_mask(
        8, (-45.0, 45.0), orientation=Rotation.from_euler("y", 90, degrees=True).as_matrix()
    )
    assert not turned[0, 0, 3]
    assert turned[3, 0, 0]
    # an x-tilted axis: k' = Rx(90) k puts the tomogram's y into z
    tilted = missing_wedge_mask(8, (-45.0, 45.0), x_tilt=90.0)
    assert not tilted[0, 3, 0]
    assert tilted[3, 0, 0]
    assert missing_wedge_mask(8, (-90.0, 90.0)).all()


def _wedge_filtered(volume: np.ndarray, limit: float) -> np.ndarray:
    nz, ny, nx = volume.shape
    qz, _, qx = np.meshgrid(fft.fftfreq(nz), fft.fftfreq(ny), fft.rfftfreq(nx), indexing="ij")
    phi = np.degrees(np.arctan(np.divide(qz, qx, out=np.full_like(qz, np.inf), where=qx != 0)))
    measured = (np.abs(phi) <= limit) | ((qx == 0) & (qz == 0))
    return fft.irfftn(fft.rfftn(volume) * measured, s=volume.shape).astype(np.float32)


def test_missing_wedge_weighting_restores_what_the_wedge_took(planted: dict[str, Any]) -> None:
    poses, box = planted["poses"], planted["box"]
    full = average_subtomograms(cryoxr.io.open_image(planted["mrc"]), poses, box_size=box).data.values
    wedged = cryoxr.Tomogram.from_array(
        _wedge_filtered(planted["volume"], 45.0), pixel_spacing=10.0, experiment_id="TS_01"
    )
    angles = np.linspace(-45, 45, 31)
    model = cryoxr.make_projection_model(
        rotation_y=angles, rotation_z=85.0, experiment_id="TS_01", pixel_spacing=10.0
    )

    def error(**kwargs: Any) -> float:
        values = average_subtomograms(wedged, poses, box_size=box, **kwargs).data.values
        return float(np.linalg.norm(values - full) / np.linalg.norm(full))

    plain, weighted = error(), error(missing_wedge=model)
    assert weighted < 0.65 * plain
    assert error(missing_wedge=(-45.0, 45.0)) == pytest.approx(weighted, abs=1e-6)  # rotation_z plays no part
    assert (
        error(missing_wedge=model.assign(rotation_x=90.0)) > 1.5 * weighted
    )  # the wrong wedge does not help
    excluded = model.assign(excluded=np.abs(angles) > 30)
    assert error(missing_wedge=excluded) == pytest.approx(error(missing_wedge=(-30.0, 30.0)), abs=1e-6)
    with pytest.raises(InvalidValueError, match="no tilts for experiment_id 'TS_01'"):
        error(
            missing_wedge=pd.concat(
                [model.assign(experiment_id="TS_02"), model.assign(experiment_id="TS_03")]
            )
        )
    with pytest.raises(InvalidValueError, match="missing_wedge must be a ProjectionModel or"):
        error(missing_wedge="-45,45")


def test_threads_and_a_local_cluster_give_the_same_average(
    planted: dict[str, Any], local_cluster: Any
) -> None:
    tomo = cryoxr.io.open_image(planted["mrc"])
    maps = average_subtomograms(tomo, planted["poses"], box_size=12, half_maps=True, particles_per_task=6)
    threads = dask.compute(*(m.data for m in maps), scheduler="threads")
    cluster = local_cluster.gather(local_cluster.compute([m.data.data for m in maps]))
    for a, b in zip(threads, cluster, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-7)


def test_accessor_delegates(planted: dict[str, Any]) -> None:
    tomo = cryoxr.io.open_image(planted["mrc"])
    a = planted["poses"].cryo.average_subtomograms(tomo, box_size=6).data.values
    b = average_subtomograms(tomo, planted["poses"], box_size=6).data.values
    np.testing.assert_array_equal(a, b)
    boxes = planted["poses"].cryo.extract_subtomograms(tomo, box_size=6)
    assert boxes.sizes["particle"] == 32


PEAK_RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import cryoxr
    from scipy.spatial.transform import Rotation

    path, n = sys.argv[1], int(sys.argv[2])
    tomo = cryoxr.io.open_image(path)
    nz, ny, nx = tomo.shape
    rng = np.random.default_rng(0)
    position = rng.uniform(0, 1, size=(n, 3)) * [nx - 30, ny - 30, nz - 30] + 15
    poses = cryoxr.make_poseset(position, orientation=Rotation.random(n, random_state=1), experiment_id="big",
                                pixel_spacing=tomo.pixel_spacing)
    def peak():
        # VmHWM: the peak RSS of this process image. getrusage's ru_maxrss would do, but
        # Linux carries it over exec from the parent (pytest), hiding this process's own peak
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

    before = peak()
    average = cryoxr.average_subtomograms(tomo, poses, box_size=16).data.values
    after = peak()
    print(json.dumps({"before": before, "after": after, "finite": bool(np.isfinite(average).all())}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_peak_memory_stays_bounded_for_thousands_of_particles_in_a_bigger_tomogram(tmp_path: Path) -> None:
    import mrcfile

    shape = (96, 1024, 1024)  # 384 MiB of float32, more than the bound below
    path = tmp_path / "big.mrc"
    with mrcfile.new_mmap(path, shape=shape, mrc_mode=2) as mrc:
        mrc.voxel_size = 10.0
        ramp = np.linspace(-1, 1, shape[2], dtype=np.float32)
        for z in range(shape[0]):
            mrc.data[z] = ramp  # written: a sparse file would read pages of zeros for free
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(path), "4000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["finite"]
    bound = 256 * 2**20
    assert report["after"] - report["before"] < bound < path.stat().st_size, report
    print(report)
