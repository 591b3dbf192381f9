"""Every writer/reader pair keeps PoseSets and ProjectionModels, for any content hypothesis finds.

Tolerances (what written text permits): positions and shifts 1e-6 px, rotations 1e-9 rad
(RELION and Dynamo print 10+ significant decimals), alignment angles 1e-6 deg and shifts
1e-6 px (IMOD's .xf is a rotation matrix printed to full precision; AreTomo prints the
values as given). An empty Dynamo table is an empty file: it cannot carry the pixel size
(read back as 1.0 unless given).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

import cryoxr
from cryoxr.io import (
    read_aretomo_alignment,
    read_dynamo_table,
    read_imod_alignment,
    read_relion_particles,
    read_relion_tilt_series,
    write_aretomo_alignment,
    write_dynamo_table,
    write_imod_alignment,
    write_relion_particles,
    write_relion_tilt_series,
)

NAMES = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="_-."),
    min_size=1,
    max_size=12,
).filter(lambda s: not s.isdigit() and not s.startswith(("_", "-", ".")))

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def posesets(draw: st.DrawFn) -> xr.Dataset:
    n = draw(st.sampled_from([0, 1, 2, 7, 40]))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    ids = np.array([names[i % len(names)] for i in range(n)], dtype=str)
    extra = {"rlnLogLikeliContribution": rng.normal(size=n)} if draw(st.booleans()) else None
    return cryoxr.make_poseset(
        rng.uniform(0, 500, size=(n, 3)),
        shift=rng.normal(0, 2, size=(n, 3)),
        orientation=Rotation.random(n, rng=rng) if n else np.zeros((0, 4)),
        experiment_id=ids if n else names[0],
        pixel_spacing=draw(st.sampled_from([1.0, 1.35, 2.7, 10.8])),
        extra=extra,
    )


def _same_poses(a: xr.Dataset, b: xr.Dataset) -> None:
    assert b.sizes["particle"] == a.sizes["particle"]
    np.testing.assert_allclose(
        (b["position"] + b["shift"]).values, (a["position"] + a["shift"]).values, rtol=0, atol=1e-6
    )
    if a.sizes["particle"]:
        angle = (b.cryo.rotation * a.cryo.rotation.inv()).magnitude()
        assert angle.max() < 1e-9
    if a.sizes["particle"] or "format" not in b.attrs or b.attrs["format"] != "dynamo":
        assert b.attrs["pixel_spacing"] == pytest.approx(a.attrs["pixel_spacing"], rel=1e-12)
    if a.sizes["particle"]:
        expected = np.broadcast_to(
            a["experiment_id"].values if "experiment_id" in a.coords else a.attrs["experiment_id"],
            (a.sizes["particle"],),
        )
        found = np.broadcast_to(
            b["experiment_id"].values if "experiment_id" in b.coords else b.attrs["experiment_id"],
            (b.sizes["particle"],),
        )
        assert found.tolist() == expected.tolist()


def _sizes(poses: xr.Dataset) -> dict[str, tuple[int, int, int]]:
    return {e: (512, 512, 500) for e in poses.cryo.experiment_ids}


POSE_PAIRS: dict[str, Any] = {
    "relion4": (
        lambda ds, d: write_relion_particles(ds, d / "p.star", version=4),
        lambda ds, d: read_relion_particles(d / "p.star"),
    ),
    "relion5": (
        lambda ds, d: write_relion_particles(ds, d / "p.star", version=5, tomograms=_sizes(ds)),
        lambda ds, d: read_relion_particles(d / "p.star", tomograms=_sizes(ds)),
    ),
    "dynamo": (
        lambda ds, d: write_dynamo_table(ds, d / "p.tbl", tomogram_map=d / "p.doc"),
        # an empty table has no apix row to take the pixel size from: pass it
        lambda ds, d: read_dynamo_table(
            d / "p.tbl", tomogram_map=d / "p.doc", pixel_spacing=ds.attrs["pixel_spacing"]
        ),
    ),
}


@pytest.mark.parametrize("pair", sorted(POSE_PAIRS))
def test_posesets_survive_every_format(pair: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    write, read = POSE_PAIRS[pair]

    @SETTINGS
    @given(posesets())
    def check(poses: xr.Dataset) -> None:
        folder = tmp_path_factory.mktemp(pair)
        write(poses, folder)
        back = read(poses, folder)
        _same_poses(poses, back)
        if pair.startswith("relion") and "rlnLogLikeliContribution" in poses:
            np.testing.assert_allclose(
                back["rlnLogLikeliContribution"].values, poses["rlnLogLikeliContribution"].values, rtol=1e-12
            )

    check()


@st.composite
def models(draw: st.DrawFn, *, with_x: bool) -> pd.DataFrame:
    n = draw(st.sampled_from([1, 2, 41]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return cryoxr.make_projection_model(
        rotation_x=rng.uniform(-3, 3, n) if with_x else 0.0,
        rotation_y=np.sort(rng.uniform(-65, 65, n)),
        rotation_z=rng.uniform(-179, 179) + rng.normal(0, 0.5, n),
        dx=rng.normal(0, 20, n),
        dy=rng.normal(0, 20, n),
        experiment_id=draw(NAMES),
        pixel_spacing=draw(st.sampled_from([1.0, 1.35, 2.7])),
    )


def _same_model(a: pd.DataFrame, b: pd.DataFrame) -> None:
    cols = ["rotation_x", "rotation_y", "dx", "dy"]
    np.testing.assert_allclose(b[cols].to_numpy(float), a[cols].to_numpy(float), rtol=0, atol=1e-6)
    dz = (b["rotation_z"].to_numpy() - a["rotation_z"].to_numpy() + 180) % 360 - 180
    np.testing.assert_allclose(dz, 0, atol=1e-6)


MODEL_PAIRS: dict[str, Any] = {
    "relion": (
        True,
        lambda m, d: write_relion_tilt_series(
            m, d / "tomograms.star", tomograms={m.experiment_id.iloc[0]: (512, 512, 500)}
        ),
        lambda m, d: read_relion_tilt_series(d / "tomograms.star"),
    ),
    "imod": (
        True,
        lambda m, d: write_imod_alignment(m, d / "a.xf", d / "a.tlt", xtilt=d / "a.xtilt"),
        lambda m, d: read_imod_alignment(
            d / "a.xf",
            d / "a.tlt",
            xtilt=d / "a.xtilt",
            pixel_spacing=float(m.pixel_spacing.iloc[0]),
            experiment_id=str(m.experiment_id.iloc[0]),
        ),
    ),
    "aretomo": (
        False,
        lambda m, d: write_aretomo_alignment(m, d / "a.aln", image_size=(1024, 1024)),
        lambda m, d: read_aretomo_alignment(
            d / "a.aln",
            pixel_spacing=float(m.pixel_spacing.iloc[0]),
            experiment_id=str(m.experiment_id.iloc[0]),
        ),
    ),
}


@pytest.mark.parametrize("pair", sorted(MODEL_PAIRS))
def test_models_survive_every_format(pair: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    with_x, write, read = MODEL_PAIRS[pair]

    @SETTINGS
    @given(models(with_x=with_x))
    def check(model: pd.DataFrame) -> None:
        folder = tmp_path_factory.mktemp(pair)
        write(model, folder)
        back = read(model, folder)
        assert len(back) == len(model)
        _same_model(model, back)
        assert back.experiment_id.astype(str).tolist() == model.experiment_id.astype(str).tolist()
        assert back.pixel_spacing.tolist() == pytest.approx(model.pixel_spacing.tolist())

    check()


def test_tolerances_are_stated() -> None:
    assert "1e-6 px" in (__doc__ or "")
