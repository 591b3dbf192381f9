"""reconstruct_particle: a planted particle back from its own projections, half maps, CTF,
symmetry, laziness and the cluster."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from dask.callbacks import Callback
from scipy.spatial.transform import Rotation

import cryoxr
from cryoxr.backprojection import soft_sphere_mask
from cryoxr.ctf import ctf_2d
from cryoxr.errors import InvalidValueError, SchemaError
from cryoxr.projection_model import rotation_matrices
from cryoxr.reconstruction import ctf_weights, fold_sum, reconstruct_particle
from cryoxr.testing import raise_if_dask_computes

#: the planted particle: Gaussian blobs (x, y, z offsets from the box centre in voxels, amplitude)
BLOBS = np.array([[3.0, -4.0, 2.0, 1.0], [-5.0, 2.0, -3.0, 0.7], [0.0, 6.0, 5.0, 0.5], [4.0, 3.0, -6.0, 0.8]])
SIGMA = 1.6
BOX = 32
ANGLES = np.linspace(-60, 60, 41)


def reference(box: int = BOX, blobs: np.ndarray = BLOBS) -> np.ndarray:
    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    out = np.zeros((box,) * 3)
    for bx, by, bz, a in blobs:
        out += a * np.exp(-((x - bx) ** 2 + (y - by) ** 2 + (z - bz) ** 2) / (2 * SIGMA**2))
    return out


def tilt_rotations(angles: np.ndarray = ANGLES, axis: float = 85.0) -> np.ndarray:
    n = len(angles)
    return (
        rotation_matrices("z", np.full(n, axis))
        @ rotation_matrices("y", angles)
        @ rotation_matrices("x", np.zeros(n))
    )


def projections(
    orientations: np.ndarray, tilts: np.ndarray, box: int = BOX, blobs: np.ndarray = BLOBS
) -> np.ndarray:
    """Exact projections: a 3D Gaussian integrates along z to a 2D Gaussian (independent
    of the back-projector under test)."""
    c = np.arange(box) - box // 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    out = np.zeros((len(orientations), len(tilts), box, box), np.float32)
    for p, q in enumerate(orientations):
        for t, tilt in enumerate(tilts):
            for bx, by, bz, a in blobs:
                u, v, _ = tilt @ q @ [bx, by, bz]
                out[p, t] += (
                    a * np.sqrt(2 * np.pi) * SIGMA * np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * SIGMA**2))
                )
    return out


def planted(
    n: int, *, seed: int = 0, noise: float = 0.0, chunks: int | None = None
) -> tuple[xr.DataArray, xr.Dataset, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rotation = Rotation.random(n, rng=rng)
    model = cryoxr.make_projection_model(
        rotation_y=ANGLES, rotation_z=85.0, experiment_id="TS_01", pixel_spacing=2.0
    )
    poses = cryoxr.make_poseset(
        np.zeros((n, 3)), orientation=rotation, experiment_id="TS_01", pixel_spacing=2.0
    )
    patches = projections(rotation.as_matrix(), tilt_rotations())
    if noise:
        patches += rng.normal(0, noise, patches.shape).astype(np.float32)
    data: np.ndarray | da.Array = (
        patches if chunks is None else da.from_array(patches, chunks=(chunks, 41, BOX, BOX))
    )
    sub = xr.DataArray(data, dims=("particle", "image", "y", "x"), attrs={"pixel_spacing": 2.0})
    return sub, poses, model


def inside(box: int = BOX, radius: float | None = None) -> np.ndarray:
    c = np.arange(box) - box // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    return r < (box // 2 - 2 if radius is None else radius)


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


def fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fourier shell correlation per integer shell up to Nyquist."""
    fa, fb = np.fft.rfftn(a), np.fft.rfftn(b)
    box = a.shape[0]
    k = np.fft.fftfreq(box, 1 / box)
    kz, ky, kx = np.meshgrid(k, k, np.arange(box // 2 + 1), indexing="ij")
    shell = np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int).ravel()
    num = np.bincount(shell, (fa * fb.conj()).real.ravel())
    den = np.sqrt(np.bincount(shell, (abs(fa) ** 2).ravel()) * np.bincount(shell, (abs(fb) ** 2).ravel()))
    return (num / den)[: box // 2]


@pytest.mark.parametrize("interpolation", ["trilinear", "nearest"])
def test_planted_particle_from_its_own_projections(interpolation: str) -> None:
    sub, poses, model = planted(40)
    maps = reconstruct_particle(sub, poses, model, interpolation=interpolation)
    ref = reference()
    for name in ("half1", "half2", "merged"):
        assert correlation(maps[name].values, ref, inside(radius=BOX // 2 - 10)) > 0.99, name
    raw = reconstruct_particle(sub, poses, model, interpolation=interpolation, taper=None).merged.values
    assert correlation(raw, ref, inside()) > 0.99
    # the scale comes back too (projection = sum over voxels): least-squares slope near 1
    m = inside()
    slope = float((raw[m] * ref[m]).sum() / (ref[m] ** 2).sum())
    assert 0.9 < slope < 1.1


def test_map_frame_is_the_particles_frame() -> None:
    # one blob at (x, y, z) = (3, -4, 2) voxels from the centre lands at voxel
    # (z, y, x) = (16 + 2, 16 - 4, 16 + 3): the orientation maps the reference into the tomogram
    blob = np.array([[3.0, -4.0, 2.0, 1.0]])
    rotation = Rotation.random(12, rng=np.random.default_rng(3))
    patches = projections(rotation.as_matrix(), tilt_rotations(), blobs=blob)
    sub = xr.DataArray(patches, dims=("particle", "image", "y", "x"), attrs={"pixel_spacing": 2.0})
    poses = cryoxr.make_poseset(np.zeros((12, 3)), orientation=rotation, experiment_id="t", pixel_spacing=2.0)
    model = cryoxr.make_projection_model(
        rotation_y=ANGLES, rotation_z=85.0, experiment_id="t", pixel_spacing=2.0
    )
    merged = reconstruct_particle(sub, poses, model).merged
    values = merged.values
    assert tuple(int(i) for i in np.unravel_index(values.argmax(), values.shape)) == (18, 12, 19)
    assert merged.dims == ("z", "y", "x")
    assert merged.attrs["pixel_spacing"] == 2.0
    assert float(merged.x[1] - merged.x[0]) == 2.0
    cryoxr.Tomogram(merged)  # follows the image model: writable as MRC


def test_half_maps_of_noisy_data_give_a_sensible_fsc() -> None:
    sub, poses, model = planted(60, noise=2.0, seed=1)
    maps = reconstruct_particle(sub, poses, model, taper=None)
    curve = fsc(maps.half1.values, maps.half2.values)
    assert (curve[1:5] > 0.8).all(), curve  # the blobs (sigma 1.6 voxels): signal at low frequency
    assert curve[-3:].mean() < 0.5, curve  # noise beyond what the blobs hold
    # the merged map (both halves) is closer to the truth than either half
    ref, m = reference(), inside()
    assert correlation(maps.merged.values, ref, m) > max(
        correlation(maps.half1.values, ref, m), correlation(maps.half2.values, ref, m)
    )


def test_half_sets_follow_rln_random_subset() -> None:
    # subset 1 sees particle A, subset 2 particle B (A mirrored): each half holds only its own
    other = BLOBS * [-1, 1, 1, 1]
    rotation = Rotation.random(20, rng=np.random.default_rng(4))
    subset = np.array([1, 2] * 10)[np.random.default_rng(5).permutation(20)]
    tilts = tilt_rotations()
    patches = np.where(
        (subset == 1)[:, None, None, None],
        projections(rotation.as_matrix(), tilts),
        projections(rotation.as_matrix(), tilts, blobs=other),
    )
    sub = xr.DataArray(patches, dims=("particle", "image", "y", "x"), attrs={"pixel_spacing": 2.0})
    poses = cryoxr.make_poseset(
        np.zeros((20, 3)),
        orientation=rotation,
        experiment_id="t",
        pixel_spacing=2.0,
        extra={"rlnRandomSubset": subset},
    )
    model = cryoxr.make_projection_model(
        rotation_y=ANGLES, rotation_z=85.0, experiment_id="t", pixel_spacing=2.0
    )
    maps = reconstruct_particle(sub, poses, model)
    m = inside(radius=6)
    a, b = reference(), reference(blobs=other)
    assert correlation(maps.half1.values, a, m) > 0.95 > correlation(maps.half1.values, b, m)
    assert correlation(maps.half2.values, b, m) > 0.95 > correlation(maps.half2.values, a, m)
    # without the column: even particle index -> half 1
    maps = reconstruct_particle(sub, poses.drop_vars("rlnRandomSubset"), model, half_sets=None)
    evens = reconstruct_particle(
        sub.isel(particle=slice(0, None, 2)),
        poses.isel(particle=slice(0, None, 2)).drop_vars("rlnRandomSubset"),
        model,
    )
    assert np.allclose(maps.half1.values, evens.merged.values, atol=1e-4 * float(np.abs(evens.merged).max()))


def test_bad_random_subset_named_when_computed() -> None:
    sub, poses, model = planted(4)
    poses = poses.assign(rlnRandomSubset=("particle", np.array([1, 2, 3, 1])))
    maps = reconstruct_particle(sub, poses, model)  # building the graph checks nothing
    with pytest.raises(InvalidValueError, match=r"rlnRandomSubset must be 1 or 2.*found 3\.0 \(particle 2\)"):
        _ = maps.merged.values


def test_ctf_premultiplied_subtilts_are_ctf_corrected() -> None:
    n = 30
    sub, poses, model = planted(n, seed=6)
    defocus = 15000.0 + 500.0 * np.arange(41)
    model = model.assign(
        defocus_u=defocus, defocus_v=defocus + 300.0, defocus_angle=20.0, voltage=300.0,
        spherical_aberration=2.7, amplitude_contrast=0.1, pre_exposure=3.0 * np.arange(41),
        tomogram_size_x=4000, tomogram_size_y=4000, tomogram_size_z=1000, defocus_handedness=1.0,
    )  # fmt: skip
    poses = cryoxr.make_poseset(
        np.tile([2000.0, 2000.0, 500.0], (n, 1)),
        orientation=poses.orientation.values,
        experiment_id="TS_01",
        pixel_spacing=2.0,
    )
    # the microscope's image is projection x CTF; RELION premultiplies it by the CTF again
    # (x dose weight) and flips the contrast
    ctf = ctf_2d(BOX, 2.0, defocus, defocus + 300.0, 20.0, 300.0, 2.7, 0.1)
    spectra = np.fft.rfft2(np.fft.ifftshift(sub.values, axes=(-2, -1)))
    flipped = -np.fft.fftshift(np.fft.irfft2(spectra * ctf * ctf, s=(BOX, BOX)), axes=(-2, -1)).astype(
        np.float32
    )
    premultiplied = sub.copy(data=flipped)
    premultiplied.attrs.update(ctf_premultiplied=1, dose_weighted=0)
    weights = ctf_weights(premultiplied, poses, model)
    assert weights.dims == ("particle", "image", "ky", "kx")
    assert weights.shape == (n, 41, BOX, BOX // 2 + 1)
    # float32 weights (as the subtilts): agreement to float32 precision
    assert np.allclose(weights.values[0], ctf**2, rtol=1e-4, atol=1e-5)  # centre: the tilt's own defocus
    ref, m = reference(), inside()
    corrected = -reconstruct_particle(premultiplied, poses, model, taper=None).merged.values
    assert correlation(corrected, ref, m) > 0.99

    def slope(a: np.ndarray) -> float:
        return float((a[m] * ref[m]).sum() / (ref[m] ** 2).sum())

    assert 0.9 < slope(corrected) < 1.1
    # the same data divided by the sampling density only: CTF² still damps the map
    ones = xr.ones_like(weights)
    uncorrected = -reconstruct_particle(
        premultiplied, poses, model, ctf_weights=ones, taper=None
    ).merged.values
    assert slope(uncorrected) < 0.7


def test_sub_pixel_residuals_are_shifted_out() -> None:
    # a nearest-pixel cut leaves the point at box // 2 + residual: recentre moves it back
    sub, poses, model = planted(20, seed=7)
    residual = np.full((20, 41), 0.4)
    shift = np.exp(-2j * np.pi * 0.4 * np.fft.fftfreq(BOX))  # content moves by +0.4 px in x
    moved = np.fft.ifft(np.fft.fft(sub.values, axis=-1) * shift, axis=-1).real.astype(np.float32)
    cut = sub.copy(data=moved).assign_coords(
        residual_x=(("particle", "image"), residual), residual_y=(("particle", "image"), np.zeros((20, 41)))
    )
    ref, m = reference(), inside(radius=10)
    shifted = reconstruct_particle(cut, poses, model).merged.values
    assert correlation(shifted, ref, m) > 0.99
    error = np.abs(shifted - reconstruct_particle(sub, poses, model).merged.values).max()
    as_cut = reconstruct_particle(cut, poses, model, recentre=False).merged.values
    assert error < 0.05 * np.abs(as_cut - shifted).max()


def test_invisible_and_nan_tilts_are_left_out() -> None:
    sub, poses, model = planted(10, seed=8)
    clean = reconstruct_particle(sub, poses, model).merged.values
    noisy = sub.values.copy()
    noisy[:, 5] = 1e6  # garbage in tilt 5 ...
    visible = np.ones((10, 41), bool)
    visible[:, 5] = False  # ... that RELION's rlnTomoVisibleFrames marks invisible
    masked = sub.copy(data=noisy).assign_coords(visible=(("particle", "image"), visible))
    nan = sub.values.copy()
    nan[:, 5] = np.nan
    a = reconstruct_particle(masked, poses, model).merged.values
    b = reconstruct_particle(sub.copy(data=nan), poses, model).merged.values
    assert np.allclose(a, b, atol=1e-6)
    assert correlation(a, clean, inside()) > 0.999


def test_symmetry_makes_the_map_symmetric() -> None:
    sub, poses, model = planted(20, seed=9)
    merged = reconstruct_particle(sub, poses, model, symmetry="C4").merged.values
    # a quarter turn about z through voxel BOX // 2 (even box: rot90 turns about BOX/2 - 1/2, roll by 1)
    turned = np.roll(np.rot90(merged, 1, axes=(1, 2)), 1, axis=1)
    assert np.abs(turned - merged).max() < 1e-4 * np.abs(merged).max()
    # and close to the planted particle averaged over the four quarter turns
    ref = reference()
    average = sum(_quarter_turns(ref, k) for k in range(4)) / 4
    assert correlation(merged, average, inside(radius=6)) > 0.98
    assert correlation(reconstruct_particle(sub, poses, model).merged.values, average, inside(radius=6)) < 0.9


def _quarter_turns(volume: np.ndarray, k: int) -> np.ndarray:
    for _ in range(k):
        volume = np.roll(np.rot90(volume, 1, axes=(1, 2)), 1, axis=1)
    return volume


def test_chunked_tree_reduction_equals_one_chunk() -> None:
    sub, poses, model = planted(12, seed=10)
    one = reconstruct_particle(sub, poses, model).merged.values
    many = reconstruct_particle(sub, poses, model, particles_per_task=2, split_every=2)
    assert many.merged.data.numblocks == (1, 1, 1)
    assert np.allclose(many.merged.values, one, atol=1e-5 * np.abs(one).max())


def test_building_the_graph_reads_nothing() -> None:
    sub, poses, model = planted(8, chunks=3)
    poses = poses.assign(rlnRandomSubset=("particle", da.from_array(np.array([1, 2] * 4), chunks=3)))
    with raise_if_dask_computes():
        maps = reconstruct_particle(sub, poses, model)
    assert isinstance(maps.merged.data, da.Array)
    with raise_if_dask_computes(max_computes=1):
        _ = maps.merged.values


@pytest.mark.distributed
def test_local_cluster_equals_threads(local_cluster: object) -> None:
    sub, poses, model = planted(12, chunks=4, seed=11)
    maps = reconstruct_particle(sub, poses, model)
    on_cluster = maps.merged.data.compute()  # the fixture's Client is the default scheduler
    with dask.config.set(scheduler="threads"):
        threaded = maps.merged.data.compute()
    assert np.allclose(on_cluster, threaded, atol=1e-6 * np.abs(threaded).max())


def test_soft_sphere_mask_is_relions_taper() -> None:
    # box 8, width 2: m = 4; a voxel at r = 3 (index (4, 4, 1)) has weight (1 - cos(pi/2)) / 2 = 0.5
    volume = np.zeros((8, 8, 8))
    volume[4, 4, 1] = 10.0
    out = soft_sphere_mask(volume, 2.0)
    c = np.arange(8) - 4.0
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    w = np.where(r < 2, 1.0, np.where(r < 4, 0.5 - 0.5 * np.cos(np.pi * (4 - r) / 2), 0.0))
    mean = 10.0 * 0.5 / w.sum()
    assert out[4, 4, 1] == pytest.approx(0.5 * (10.0 - mean))
    assert out[4, 4, 4] == pytest.approx(-mean)
    assert out[0, 4, 4] == 0.0  # r = 4: on the sphere, outside


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s, p, m: (s.isel(particle=slice(0, 3)), p, m), "subtilts hold 3 particles, the poses 4"),
        (lambda s, p, m: (s.isel(x=slice(0, 30)), p, m), "square boxes"),
        (lambda s, p, m: (s.transpose("image", "particle", "y", "x"), p, m), "dims"),
        (lambda s, p, m: (s.assign_attrs(pixel_spacing=None), p, m), "pixel_spacing"),
        (lambda s, p, m: (s, p, m.assign(experiment_id="other")), "absent from the projection model"),
        (
            lambda s, p, m: (s.isel(image=slice(0, 40)), p, m),
            "41 tilts in the projection model, the subtilts only 40",
        ),
    ],
)
def test_inputs_that_do_not_fit_are_named(change: object, message: str) -> None:
    sub, poses, model = planted(4)
    with pytest.raises((InvalidValueError, SchemaError), match=message):
        reconstruct_particle(*change(sub, poses, model))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("interpolation", "cubic", "interpolation must be one of"),
        ("symmetry", "C0", "n must be 1..99"),
        ("snr", -1.0, "snr must be a positive number"),
        ("taper", -2.0, "taper must be"),
        ("split_every", 1, "split_every must be >= 2"),
        ("half_sets", np.ones(3), "one value per particle"),
    ],
)
def test_bad_options_are_named(keyword: str, value: object, message: str) -> None:
    sub, poses, model = planted(4)
    with pytest.raises(InvalidValueError, match=message):
        reconstruct_particle(sub, poses, model, **{keyword: value})  # type: ignore[arg-type]


def test_ctf_weights_need_the_optics_columns() -> None:
    sub, poses, model = planted(2)
    sub = sub.assign_attrs(ctf_premultiplied=1)
    with pytest.raises(InvalidValueError, match="defocus_u"):
        reconstruct_particle(sub, poses, model)
    with pytest.raises(InvalidValueError, match=r"ctf_weights must have shape"):
        reconstruct_particle(
            sub,
            poses,
            model,
            ctf_weights=xr.DataArray(np.ones((2, 41, 4, 4)), dims=("particle", "image", "ky", "kx")),
        )


@pytest.mark.parametrize(("blocks", "lanes"), [(1, 8), (5, 2), (17, 8), (40, 3)])
def test_fold_sum_equals_the_sum_and_holds_lanes_not_levels(blocks: int, lanes: int) -> None:
    rng = np.random.default_rng(blocks)
    values = rng.standard_normal((blocks, 2, 5, 3))
    partial = da.from_array(values, chunks=(1, 2, 5, 3))
    total = fold_sum(partial, lanes=lanes)
    np.testing.assert_allclose(total.compute(), values.sum(axis=0), rtol=1e-12)
    # what waits for an addition at any time: one running sum per lane, never a tree level
    held: list[int] = []

    class Track(Callback):
        def _posttask(self, key, result, dsk, state, id):  # type: ignore[no-untyped-def]
            held.append(sum(1 for k in state["cache"] if "fold-running" in str(k)))

    with Track(), dask.config.set(scheduler="synchronous"):
        total.compute()
    assert max(held) <= min(lanes, blocks)
