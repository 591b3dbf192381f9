"""Subtilt extraction: patches centred on projected points, NaN outside, streaming means."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import cryoxr
from cryoxr.errors import InvalidValueError
from cryoxr.extraction import extract_subtilts
from cryoxr.projection import project
from cryoxr.subtilts import RelionSteps, relion_patches
from cryoxr.testing import noise_tilt_series, raise_if_dask_computes


def _gaussian_tilt_series(points: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """(T, ny, nx) images with a Gaussian spot at every (particle, tilt) point."""
    n_tilts = points.shape[1]
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    images = np.zeros((n_tilts, *shape))
    for t in range(n_tilts):
        for x, y in points[:, t]:
            images[t] += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return images


def test_extracted_mean_patch_peaks_at_box_centre(rng: np.random.Generator) -> None:
    model = cryoxr.make_projection_model(
        rotation_y=[-40.0, 0.0, 35.0],
        rotation_z=80.0,
        dx=[1.3, 0.0, -2.2],
        experiment_id="ts",
        pixel_spacing=2.0,
        # the geometry travels with the model (binned poses below: sizes in the model's pixels)
        tomogram_size_x=200,
        tomogram_size_y=180,
        tomogram_size_z=60,
        tilt_image_center_x=100.0,
        tilt_image_center_y=90.0,
    )
    dims = (200, 180, 60)
    poses = cryoxr.make_poseset(
        rng.uniform([40, 40, 10], [160, 140, 50], size=(40, 3)) / 2,
        experiment_id="ts",
        pixel_spacing=4.0,
        chunks=16,
    )
    projected = project(poses, model)
    explicit = project(poses, model, tomogram_dimensions=np.array(dims) / 2, tilt_image_center=(100, 90))
    np.testing.assert_allclose(projected.values, explicit.values, atol=1e-9)
    points = projected.values
    images = _gaussian_tilt_series(points, (180, 200), sigma=1.5)
    tilt_series = cryoxr.Image.from_array(
        images.astype(np.float32), pixel_spacing=2.0, experiment_id="ts", stack=True
    )
    box = 16
    patches = extract_subtilts(tilt_series, projected, box_size=box, particles_per_task=7)
    assert patches.dims == ("particle", "image", "y", "x")
    assert patches.dtype == np.float32
    mean = patches.mean("particle", skipna=True).values
    for t in range(3):
        # centroid of the peak region, in box pixels: within 0.5 px of the centre
        peak = mean[t]
        weights = np.where(peak > peak.max() * 0.3, peak, 0)
        yy, xx = np.mgrid[0:box, 0:box]
        cy, cx = (weights * yy).sum() / weights.sum(), (weights * xx).sum() / weights.sum()
        assert abs(cx - box // 2) < 0.5
        assert abs(cy - box // 2) < 0.5
        assert np.unravel_index(np.argmax(peak), peak.shape) == (box // 2, box // 2)
    residual_x = patches.residual_x.values
    np.testing.assert_allclose(residual_x, points[..., 0] - np.floor(points[..., 0] + 0.5))
    assert np.abs(residual_x).max() <= 0.5


def test_extraction_outside_is_nan() -> None:
    ts = cryoxr.Image.from_array(np.ones((2, 10, 10)), pixel_spacing=1.0, experiment_id="t", stack=True)
    xy = xr.DataArray(np.array([[[0.0, 0.0], [np.nan, np.nan]]]), dims=("particle", "image", "axis"))
    patch = extract_subtilts(ts, xy, box_size=4).values
    # nearest pixel (0, 0) sits at box index 2: rows/cols 0 and 1 are outside the image
    assert np.isnan(patch[0, 0, :2]).all()
    assert np.isnan(patch[0, 0, :, :2]).all()
    assert (patch[0, 0, 2:, 2:] == 1).all()
    assert np.isnan(patch[0, 1]).all()
    with pytest.raises(InvalidValueError, match="box_size"):
        extract_subtilts(ts, xy, box_size=0)
    with pytest.raises(InvalidValueError, match="2 images, the projected positions 3 tilts"):
        extract_subtilts(
            ts, xr.DataArray(np.zeros((1, 3, 2)), dims=("particle", "image", "axis")), box_size=4
        )


def test_mean_patch_streams_with_bounded_chunks(tilt_model: pd.DataFrame) -> None:
    """The per-tilt mean over many particles never materialises the patches."""
    n = 20_000
    poses = cryoxr.make_poseset(
        np.random.default_rng(0).uniform(0, 512, size=(n, 3)),
        experiment_id="TS_01",
        pixel_spacing=1.35,
        chunks=5_000,
    )
    projected = project(
        poses, tilt_model.iloc[:3], tomogram_dimensions=(512, 512, 512), tilt_image_center=(256, 256)
    )
    ts = cryoxr.Image.from_array(
        da.ones((3, 512, 512), chunks=(1, 512, 512)), pixel_spacing=1.35, experiment_id="TS_01", stack=True
    )
    patches = extract_subtilts(ts, projected, box_size=32, particles_per_task=1000)
    assert patches.data.chunksize == (1000, 1, 32, 32)
    total = patches.notnull().sum(("particle", "y", "x"))
    with dask.config.set(scheduler="threads"):
        mean = patches.mean("particle").values
    assert mean.shape == (3, 32, 32)
    assert int(total.values.max()) > 0


# ----------------------------------------------------------------------------- mode="relion"


def _c_round(v: float) -> int:
    return int(np.floor(v + 0.5)) if v >= 0 else int(np.ceil(v - 0.5))


def relion_reference(
    image: np.ndarray,
    point: tuple[float, float],
    box: int,
    binning: float,
    crop: int,
    px: float,
    ctf: dict[str, float] | None,
    dose: float | None,
    sign: float,
    circle: bool,
) -> np.ndarray:
    """RELION 5's subtomo --stack2d for one particle in one tilt, written out loop by loop from
    extractAt2D_Fourier, FourierCrop_fftwHalfStack, shiftStack, CTF::draw / getCTF,
    Damage::weightImage, inverseFourierTransformStack, cropCircle and unpadCenter2D_full."""
    ny, nx = image.shape
    s0 = int(binning * box + 0.5)
    ix, iy = _c_round(point[0]) - s0 // 2, _c_round(point[1]) - s0 // 2
    small = np.empty((s0, s0))
    for y in range(s0):
        for x in range(s0):
            small[y, x] = image[min(max(y + iy, 0), ny - 1), min(max(x + ix, 0), nx - 1)]
    centred = np.empty((s0, s0))
    for y in range(s0):
        for x in range(s0):
            centred[y, x] = small[(y + s0 // 2) % s0, (x + s0 // 2) % s0]
    f0 = np.fft.rfft2(centred) / s0  # FFT::Both: 1 / sqrt(size) each way
    sh = box // 2 + 1
    f = np.empty((box, sh), complex)
    for y in range(box):
        for x in range(sh):
            f[y, x] = f0[y if y < box // 2 else y - box + s0, x]
    if binning != 1.0:
        f /= binning
    tx, ty = (point[0] - ix) / binning - box // 2, (point[1] - iy) / binning - box // 2
    for y in range(box):
        for x in range(sh):
            yy = y if y < box // 2 else y - box
            phi = 2 * np.pi * tx / box * x + 2 * np.pi * ty / box * yy
            f[y, x] *= np.cos(phi) + 1j * np.sin(phi)
    bpx = binning * px
    for y in range(box):
        for x in range(sh):
            xx, yy = x / (box * bpx), (y if y < box // 2 else y - box) / (box * bpx)
            c = 1.0
            if ctf is not None:
                lam = 12.2643247 / np.sqrt(ctf["voltage"] * 1e3 * (1 + ctf["voltage"] * 1e3 * 0.978466e-6))
                k1, k2 = np.pi * lam, np.pi / 2 * ctf["cs"] * 1e7 * lam**3
                k3 = np.arctan(ctf["q0"] / np.sqrt(1 - ctf["q0"] ** 2))
                k4, k5 = -ctf["bfactor"] / 4, np.deg2rad(ctf["phase"])
                az = np.deg2rad(ctf["angle"])
                q = np.array([[np.cos(az), np.sin(az)], [-np.sin(az), np.cos(az)]])
                a = q.T @ np.diag([-ctf["du"], -ctf["dv"]]) @ q
                u2 = xx * xx + yy * yy
                gamma = (
                    k1 * (a[0, 0] * xx * xx + 2 * a[0, 1] * xx * yy + a[1, 1] * yy * yy)
                    + k2 * u2 * u2
                    - k5
                    - k3
                )
                c = -np.sin(gamma) * np.exp(k4 * u2) * ctf["scale"]
            if dose is not None:
                k = np.sqrt(x * x + (y if y < box // 2 else y - box) ** 2) / (box * bpx)
                c *= np.exp(-0.5 * dose / (0.245 * k**-1.665 + 2.81)) if k > 0 else 1.0
            f[y, x] *= sign * c
    f /= binning
    mod = np.array([[(1 - 2 * (x % 2)) * (1 - 2 * (y % 2)) for x in range(sh)] for y in range(box)])
    real = np.fft.irfft2(f * mod, s=(box, box)) * box
    boundary = (box - crop) // 2
    if circle:
        m = box // 2
        radius = m - boundary
        outside = [real[y, x] for y in range(box) for x in range(box) if np.hypot(x - m, y - m) > radius]
        mean = np.mean(outside) if outside else 0.0
        for y in range(box):
            for x in range(box):
                r = np.hypot(x - m, y - m)
                w = (
                    1.0
                    if r < radius - 5
                    else (0.5 - 0.5 * np.cos(np.pi * (radius - r) / 5) if r < radius else 0.0)
                )
                real[y, x] = w * (real[y, x] - mean)
    return real[boundary : boundary + crop, boundary : boundary + crop]


def _relion_setup(
    n_tilts: int = 3, *, shape: tuple[int, int] = (80, 96), excluded: bool = False
) -> tuple[pd.DataFrame, cryoxr.Image]:
    return noise_tilt_series(
        n_tilts,
        shape=shape,
        phase_shift=10.0,
        ctf_bfactor=-20.0,
        ctf_scale=0.9,
        excluded=[False] * (n_tilts - 1) + [excluded],
    )


@pytest.mark.parametrize(("box", "binning", "crop"), [(16, 1.0, 16), (12, 2.0, 8), (10, 1.5, 10)])
def test_relion_path_matches_the_loop_by_loop_transcription(box: int, binning: float, crop: int) -> None:
    model, ts = _relion_setup()
    poses = cryoxr.make_poseset(
        [[48.3, 40.7, 25.2], [40.5, 35.5, 12.0]], experiment_id="TS_01", pixel_spacing=2.5
    )
    projected = project(poses, model)
    defocus = cryoxr.particle_defocus(poses, model)
    out = extract_subtilts(
        ts, projected, box_size=box, mode="relion", projection_model=model, defocus=defocus, bin=binning,
        crop_size=crop,
    )  # fmt: skip
    values = out.values
    assert out.dtype == np.float32
    assert out.attrs["pixel_spacing"] == pytest.approx(2.5 * binning)
    assert bool(out.visible.all())
    row = model.iloc[1]
    for p in range(2):
        ctf = {
            "du": float(defocus.defocus_u[p, 1]), "dv": float(defocus.defocus_v[p, 1]), "angle": 35.0,
            "voltage": 300.0, "cs": 2.7, "q0": 0.07, "bfactor": -20.0, "phase": 10.0, "scale": 0.9,
        }  # fmt: skip
        expected = relion_reference(
            ts.data.values[1], tuple(projected.values[p, 1]), box, binning, crop, 2.5, ctf,
            float(row.pre_exposure), -1.0, True,
        )  # fmt: skip
        np.testing.assert_allclose(values[p, 1], expected, atol=2e-5 * np.abs(expected).max())
    # halves round away from zero, as C's round (numpy's round would pick the even neighbour)
    steps = RelionSteps(box=box, bin=binning, crop=crop, pixel_size=2.5, ctf=False, dose_weight=False)
    image = ts.data.values[0]
    got = relion_patches(image, np.array([[30.5, 25.5]]), steps)[0]
    expected = relion_reference(image, (30.5, 25.5), box, binning, crop, 2.5, None, None, -1.0, True)
    np.testing.assert_allclose(got, expected, atol=2e-5 * np.abs(expected).max())


def test_relion_path_puts_a_subpixel_point_on_the_box_centre() -> None:
    """A Gaussian spot at (40.3, 37.7) ends centred on pixel (8, 8) of a 16-box, with its own
    height (bin 1) or half of it (bin 2: the greyscale is divided by the binning)."""
    yy, xx = np.mgrid[0:96, 0:96]
    spot = np.exp(-((xx - 40.3) ** 2 + (yy - 37.7) ** 2) / (2 * 2.0**2)).astype(np.float32)
    ts = cryoxr.Image.from_array(spot[None], pixel_spacing=1.0, experiment_id="t", stack=True)
    model = cryoxr.make_projection_model(experiment_id="t", pixel_spacing=1.0)
    xy = xr.DataArray([[[40.3, 37.7]]], dims=("particle", "image", "axis"))
    plain = {"ctf": False, "dose_weight": False, "invert_contrast": False, "circle_crop": False}
    grid = np.mgrid[0:16, 0:16] - 8
    for binning in (1.0, 2.0):
        patch = extract_subtilts(
            ts, xy, box_size=16, mode="relion", projection_model=model, bin=binning, **plain
        ).values[0, 0]
        sigma = 2.0 / binning
        expected = np.exp(-(grid[0] ** 2 + grid[1] ** 2) / (2 * sigma**2)) / binning
        np.testing.assert_allclose(patch, expected, atol=4e-3)
        centroid = [(patch * g).sum() / patch.sum() for g in np.mgrid[0:16, 0:16]]
        np.testing.assert_allclose(centroid, [8.0, 8.0], atol=3e-3)
    inverted = extract_subtilts(
        ts, xy, box_size=16, mode="relion", projection_model=model, **{**plain, "invert_contrast": True}
    ).values[0, 0]
    assert inverted[8, 8] == pytest.approx(-1.0, abs=1e-3)


def test_relion_path_premultiplies_the_particle_ctf_and_dose_weight() -> None:
    """A delta on an integer pixel: the patch's spectrum is CTF x dose weight x (-1), with the
    particle's own defocus (its depth shifts it by 100 Å per 100 Å of height, handedness -1)."""
    image = np.zeros((1, 64, 64), np.float32)
    image[0, 30, 34] = 1.0
    ts = cryoxr.Image.from_array(image, pixel_spacing=2.0, experiment_id="t", stack=True)
    model = cryoxr.make_projection_model(
        experiment_id="t", pixel_spacing=2.0, tomogram_size_x=64, tomogram_size_y=64, tomogram_size_z=40,
        tilt_image_center_x=32.0, tilt_image_center_y=32.0, defocus_u=20000.0, defocus_v=18000.0,
        defocus_angle=20.0, voltage=300.0, spherical_aberration=2.7, amplitude_contrast=0.1,
        defocus_handedness=-1, pre_exposure=12.0,
    )  # fmt: skip
    poses = cryoxr.make_poseset([[34.0, 30.0, 45.0]], experiment_id="t", pixel_spacing=2.0)  # 50 Å above
    defocus = cryoxr.particle_defocus(poses, model)
    assert float(defocus.defocus_u[0, 0]) == pytest.approx(19950.0)
    patch = extract_subtilts(
        ts, project(poses, model), box_size=32, mode="relion", projection_model=model, defocus=defocus,
        circle_crop=False,
    ).values[0, 0]  # fmt: skip
    spectrum = np.fft.rfft2(np.fft.ifftshift(patch)) / 32  # unitary, origin at the box centre
    from cryoxr.ctf import ctf_2d, dose_weights

    expected = -ctf_2d(32, 2.0, 19950.0, 17950.0, 20.0, 300.0, 2.7, 0.1) * dose_weights(32, 2.0, 12.0) / 32
    # the Nyquist column of a real image cannot hold the astigmatic CTF (not symmetric there)
    np.testing.assert_allclose(spectrum.real[:, :16], expected[:, :16], atol=1e-6)
    np.testing.assert_allclose(spectrum.imag[:, :16], 0.0, atol=1e-6)


def test_relion_visibility_edges_excluded_and_dose() -> None:
    """Visible: more than bin * crop / 2 = 8 px inside every edge (strict), tilt not excluded,
    pre-exposure <= max_dose. Invisible tilts are zeros."""
    model, ts = _relion_setup(3, excluded=True)
    xy = np.array([[[8.0, 40.0]] * 3, [[8.01, 40.0]] * 3, [[50.0, 71.99]] * 3, [[50.0, 72.0]] * 3])
    projected = xr.DataArray(
        xy, dims=("particle", "image", "axis"), coords={"experiment_id": ("particle", ["TS_01"] * 4)}
    )
    out = extract_subtilts(
        ts, projected, box_size=16, crop_size=16, mode="relion", projection_model=model, ctf=False
    )
    assert out.visible.values.tolist() == [[False] * 3, [True, True, False], [True, True, False], [False] * 3]
    values = out.values
    assert (values[0] == 0).all()
    assert (values[:, 2] == 0).all()
    assert np.abs(values[1, 0]).max() > 0
    capped = extract_subtilts(
        ts, projected, box_size=16, mode="relion", projection_model=model, ctf=False, max_dose=2.0
    )
    assert capped.visible.values[1].tolist() == [True, False, False]


def test_relion_path_is_lazy_and_same_on_a_cluster(local_cluster: object) -> None:
    model, ts = _relion_setup(4)
    rng = np.random.default_rng(3)
    poses = cryoxr.make_poseset(
        rng.uniform([15, 15, 10], [80, 65, 30], size=(30, 3)),
        experiment_id="TS_01",
        pixel_spacing=2.5,
        chunks=8,
    )
    lazy_ts = cryoxr.Image.from_array(
        ts.data.data, pixel_spacing=2.5, experiment_id="TS_01", stack=True, chunks=(1, -1, -1)
    )
    with raise_if_dask_computes():
        out = extract_subtilts(
            lazy_ts, project(poses, model), box_size=12, bin=2.0, crop_size=8, mode="relion",
            projection_model=model, defocus=cryoxr.particle_defocus(poses, model), particles_per_task=7,
        )  # fmt: skip
    assert out.data.chunks[0] == (7, 7, 7, 7, 2)
    with dask.config.set(scheduler="threads"):
        threads = out.values
    distributed = out.compute(scheduler=local_cluster).values  # type: ignore[arg-type]
    np.testing.assert_array_equal(threads, distributed)
    assert np.abs(threads).max() > 0


def test_relion_path_several_experiments_interleaved() -> None:
    """Particles of two tilt series, interleaved: each gets its own tilt series' patches."""
    model_a, ts_a = _relion_setup(2)
    model_b = model_a.assign(experiment_id="TS_02", defocus_u=model_a.defocus_u + 5000)
    ts_b = cryoxr.Image.from_array(
        -ts_a.data.values[:, ::-1], pixel_spacing=2.5, experiment_id="TS_02", stack=True
    )
    model = pd.concat([model_a, model_b], ignore_index=True)
    xyz = [[40.0, 30.0, 20.0], [50.0, 45.0, 22.0], [44.0, 33.0, 18.0]]
    poses = cryoxr.make_poseset(xyz, experiment_id=["TS_01", "TS_02", "TS_01"], pixel_spacing=2.5)
    both = extract_subtilts(
        {"TS_01": ts_a, "TS_02": ts_b}, project(poses, model), box_size=16, mode="relion",
        projection_model=model, defocus=cryoxr.particle_defocus(poses, model), particles_per_task=2,
    ).values  # fmt: skip
    for i, (ts, eid) in enumerate([(ts_a, "TS_01"), (ts_b, "TS_02"), (ts_a, "TS_01")]):
        one = cryoxr.make_poseset([xyz[i]], experiment_id=eid, pixel_spacing=2.5)
        alone = extract_subtilts(
            ts, project(one, model), box_size=16, mode="relion", projection_model=model,
            defocus=cryoxr.particle_defocus(one, model),
        ).values[0]  # fmt: skip
        np.testing.assert_allclose(both[i], alone, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"box_size": 15}, "even"),
        ({"crop_size": 20}, "crop_size"),
        ({"bin": 0.5}, "bin"),
        ({"dtype": np.float64}, "float32 or float16"),
        ({"defocus": None}, "particle_defocus"),
        ({"mode": "linear"}, "mode"),
        ({"projection_model": None}, "projection_model"),
    ],
)
def test_relion_path_bad_input(kwargs: dict[str, object], match: str) -> None:
    model, ts = _relion_setup(2)
    poses = cryoxr.make_poseset([[40.0, 30.0, 20.0]], experiment_id="TS_01", pixel_spacing=2.5)
    args: dict[str, object] = {"box_size": 16, "mode": "relion", "projection_model": model}
    args.update(kwargs)
    with pytest.raises(InvalidValueError, match=match):
        extract_subtilts(ts, project(poses, model), **args)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="mode='relion' only"):
        extract_subtilts(ts, project(poses, model), box_size=16, bin=2)
    with pytest.raises(InvalidValueError, match="pre_exposure"):
        extract_subtilts(
            ts, project(poses, model), box_size=16, mode="relion", projection_model=model.drop(columns="pre_exposure"),
            ctf=False,
        )  # fmt: skip
