"""Remote stores (io/_fs.py and the URL path of the OME-Zarr, copick and Portal readers), read from a
local HTTP server on 127.0.0.1 (an OS-picked port) that counts the requests and bytes it serves per
path: opening reads only metadata, a slice fetches exactly the chunk files it touches."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from cryoxr import Tomogram
from cryoxr.errors import (
    CryoxrError,
    CryoxrFileNotFoundError,
    FormatError,
    MissingDependencyError,
    UnknownFormatError,
)
from cryoxr.io import open_copick, open_image, open_portal
from cryoxr.io._fs import Location, is_url
from cryoxr.io.ome_zarr import open_ome_zarr_pyramid, read_ome_zarr
from cryoxr.io.ome_zarr._store import METADATA_NAMES
from cryoxr.testing import CountingHTTPServer, raise_if_dask_computes, serve_folder

pytest.importorskip("aiohttp")

SHAPE, CHUNKS = (8, 12, 16), (4, 4, 8)
DATA = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    tomo = Tomogram.from_array(DATA, pixel_spacing=2.0, experiment_id="t")
    tomo.to_zarr(tmp_path / "v05.zarr", levels=2, chunks=CHUNKS)
    tomo.to_zarr(tmp_path / "v04.zarr", levels=2, chunks=CHUNKS, version="0.4")
    return tmp_path


@pytest.fixture
def server(folder: Path) -> Iterator[CountingHTTPServer]:
    with serve_folder(folder) as running:
        yield running


def chunk_file(version: str, z: int, y: int, x: int) -> str:
    """Level 0's chunk file of grid index (z, y, x): zarr v3 ``c/z/y/x``, v2 ``z.y.x``."""
    return f"0/c/{z}/{y}/{x}" if version == "v05" else f"0/{z}.{y}.{x}"


@pytest.mark.parametrize("version", ["v05", "v04"])
def test_open_reads_only_metadata(server: CountingHTTPServer, version: str) -> None:
    with raise_if_dask_computes():
        tomo = read_ome_zarr(f"{server.url}/{version}.zarr")
    assert tomo.shape == SHAPE
    assert tomo.pixel_spacing == 2.0
    assert server.requests, "nothing was requested"
    assert {Path(p).name for p in server.requests} <= METADATA_NAMES, sorted(server.requests)


@pytest.mark.parametrize("version", ["v05", "v04"])
@pytest.mark.parametrize(
    ("selection", "grid"),
    [
        # z = 5 lies in z-chunk 1 (4..7); every y chunk (0, 1, 2) and x chunk (0, 1): 6 files
        ((5, slice(None), slice(None)), [(1, y, x) for y in range(3) for x in range(2)]),
        # z 2..5 crosses z-chunks 0 and 1, y 3..4 crosses y-chunks 0 and 1, x 0..7 is x-chunk 0: 4 files
        ((slice(2, 6), slice(3, 5), slice(0, 8)), [(z, y, 0) for z in range(2) for y in range(2)]),
    ],
)
def test_slice_fetches_only_its_chunks(
    folder: Path,
    server: CountingHTTPServer,
    version: str,
    selection: tuple[object, ...],
    grid: list[tuple[int, int, int]],
) -> None:
    tomo = read_ome_zarr(f"{server.url}/{version}.zarr")
    opened = sum(server.bytes.values())
    metadata = {p: n for p, n in server.bytes.items() if n}
    assert opened == sum((folder / p.lstrip("/")).stat().st_size for p in metadata)
    server.reset()
    values = tomo.data[selection].values
    np.testing.assert_array_equal(values, DATA[selection])
    np.testing.assert_array_equal(values, read_ome_zarr(folder / f"{version}.zarr").data[selection].values)
    expected = {f"/{version}.zarr/{chunk_file(version, *g)}" for g in grid}
    assert set(server.requests) == expected
    assert all(n == 1 for n in server.requests.values())
    assert sum(server.bytes.values()) == sum((folder / p.lstrip("/")).stat().st_size for p in expected)


def test_pyramid_open_image_and_xarray_engine(server: CountingHTTPServer) -> None:
    url = f"{server.url}/v05.zarr"
    with raise_if_dask_computes():
        levels = open_ome_zarr_pyramid(url)
        image = open_image(url)
    assert [(level.shape, level.pixel_spacing) for level in levels] == [(SHAPE, 2.0), ((4, 6, 8), 4.0)]
    assert image.data.attrs["source"] == url
    assert not [p for p in server.requests if "/c/" in p]
    da = xr.open_dataarray(url, engine="cryoxr")
    assert da.chunks is None
    np.testing.assert_array_equal(da[3].values, DATA[3])
    assert float(da.x[2]) == 4.0


def test_missing_store_names_the_url(server: CountingHTTPServer, folder: Path) -> None:
    url = f"{server.url}/missing.zarr"
    with pytest.raises(CryoxrFileNotFoundError, match="no such OME-Zarr store") as err:
        read_ome_zarr(url)
    assert url in str(err.value)
    (folder / "empty.zarr").mkdir()  # a folder, no zarr metadata: not a store
    with pytest.raises(CryoxrFileNotFoundError, match=r"empty\.zarr"):
        open_image(f"{server.url}/empty.zarr")
    (folder / "broken.zarr").mkdir()
    (folder / "broken.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(FormatError, match=r"broken\.zarr"):
        read_ome_zarr(f"{server.url}/broken.zarr")
    (folder / "deep.zarr").mkdir()
    (folder / "deep.zarr" / "zarr.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FormatError, match="nesting deeper") as deep:
        read_ome_zarr(f"{server.url}/deep.zarr")
    assert f"{server.url}/deep.zarr/zarr.json" in str(deep.value)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_host_names_the_url() -> None:
    url = f"http://127.0.0.1:{closed_port()}/t.zarr"
    with pytest.raises(CryoxrFileNotFoundError, match="could not be read") as err:
        read_ome_zarr(url)
    assert url in str(err.value)
    with pytest.raises(CryoxrFileNotFoundError, match="could not be read"):
        open_copick(f"http://127.0.0.1:{closed_port()}/config.json")


def test_server_gone_while_reading_chunks(folder: Path) -> None:
    with serve_folder(folder) as server:
        tomo = read_ome_zarr(f"{server.url}/v05.zarr")
    with pytest.raises(CryoxrFileNotFoundError, match="chunks under selection") as err:
        tomo.data[0].values  # noqa: B018
    assert "v05.zarr" in str(err.value)
    assert isinstance(err.value, CryoxrError)


def test_without_fsspec_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fsspec.core", None)
    url = "https://example.org/t.zarr"
    with pytest.raises(MissingDependencyError, match=r"cryoxr\[remote\]") as err:
        read_ome_zarr(url)
    assert url in str(err.value)
    with pytest.raises(MissingDependencyError, match=r"cryoxr\[remote\]"):
        open_portal("s3://bucket/10445")


def test_only_ome_zarr_from_urls() -> None:
    with pytest.raises(UnknownFormatError, match="download this file") as err:
        open_image("https://example.org/TS_01.mrc")
    assert "https://example.org/TS_01.mrc" in str(err.value)


def test_unknown_protocol() -> None:
    with pytest.raises(UnknownFormatError, match=r"nosuchprotocol://x/t\.zarr"):
        read_ome_zarr("nosuchprotocol://x/t.zarr")


def test_location_local_and_remote_agree(server: CountingHTTPServer, folder: Path) -> None:
    assert is_url(server.url)
    assert not is_url(str(folder))
    assert not is_url(f"local://{folder}")
    local, remote = Location.of(folder), Location.of(server.url)
    assert [c.name for c in local.children()] == [c.name for c in remote.children()]
    assert [c.is_dir() for c in local.children()] == [c.is_dir() for c in remote.children()]
    member = "v05.zarr/zarr.json"
    assert (remote / "v05.zarr" / "zarr.json").read_bytes(what="zarr metadata") == (
        folder / member
    ).read_bytes()
    assert [p.name for p in remote.walk(lambda p: p.name.endswith(".zarr"))] == ["v04.zarr", "v05.zarr"]
    with pytest.raises(CryoxrFileNotFoundError, match="no such"):
        (remote / "nothing.json").read_bytes(what="JSON")
    with pytest.raises(FormatError, match="at most 10 bytes"):
        (remote / member).read_bytes(what="zarr metadata", max_bytes=10)


# copick: a project whose static root is a URL and whose overlay root is relative to the config


def copick_project(root: Path, static_root: str, overlay_root: str) -> Path:
    run = root / "static" / "ExperimentRuns" / "TS_001"
    for spacing, size in ((10.0, 8), (20.0, 4)):
        data = np.arange(size**3, dtype=np.float32).reshape(size, size, size)
        (run / f"VoxelSpacing{spacing:.3f}").mkdir(parents=True, exist_ok=True)
        Tomogram.from_array(data, pixel_spacing=spacing, experiment_id="TS_001").to_zarr(
            run / f"VoxelSpacing{spacing:.3f}" / "wbp.zarr", levels=2, chunks=(4, 4, 4), overwrite=True
        )
    picks = root / "overlay" / "ExperimentRuns" / "TS_001" / "Picks"
    picks.mkdir(parents=True, exist_ok=True)
    points = [{"location": {"x": 100.0, "y": 40.0, "z": 20.0}, "transformation_": np.eye(4).tolist()}]
    document = {"pickable_object_name": "ribosome", "user_id": "alice", "session_id": "0",
                "run_name": "TS_001", "unit": "angstrom", "points": points}  # fmt: skip
    (picks / "alice_0_ribosome.json").write_text(json.dumps(document))
    config = {"name": "remote", "pickable_objects": [{"name": "ribosome", "is_particle": True}],
              "static_root": static_root, "overlay_root": overlay_root}  # fmt: skip
    path = root / f"config_{'url' if '://' in static_root else 'local'}.json"
    path.write_text(json.dumps(config))
    return path


def test_copick_over_http_equals_local(tmp_path: Path) -> None:
    with serve_folder(tmp_path) as server:
        copick_project(tmp_path, f"{server.url}/static", "overlay")
        local = open_copick(copick_project(tmp_path, str(tmp_path / "static"), "overlay"))
        remote = open_copick(f"{server.url}/config_url.json")
        assert remote.config == f"{server.url}/config_url.json"
        assert remote.roots == (f"{server.url}/overlay", f"{server.url}/static")  # overlay first
        assert remote.runs == local.runs == ["TS_001"]
        assert remote.voxel_spacings("TS_001") == local.voxel_spacings("TS_001") == [10.0, 20.0]
        assert remote.tomogram_kinds("TS_001", 20.0) == ["wbp"]
        assert remote.pick_sets("TS_001") == local.pick_sets("TS_001") == [("ribosome", "alice", "0")]
        server.reset()
        with raise_if_dask_computes():
            tomo = remote.tomogram("TS_001", voxel_spacing=10.0, kind="wbp")
        assert not [p for p in server.requests if "/c/" in p]  # metadata only
        np.testing.assert_array_equal(
            tomo.data[3].values, local.tomogram("TS_001", voxel_spacing=10.0, kind="wbp").data[3].values
        )
        got = remote.picks("TS_001", object="ribosome", user="alice", session="0", voxel_spacing=20.0)
        want = local.picks("TS_001", object="ribosome", user="alice", session="0", voxel_spacing=20.0)
    np.testing.assert_array_equal(got["position"].values, [[5.0, 2.0, 1.0]])  # 100, 40, 20 Å / 20 Å
    np.testing.assert_array_equal(got["position"].values, want["position"].values)
    assert got.attrs["source"].startswith("http://127.0.0.1:")


# the Portal: the layout of tests/test_io_portal.py, served over HTTP


def portal_folder(root: Path) -> Path:
    run = root / "10445" / "TS_026" / "Reconstructions" / "VoxelSpacing13.480"
    (run / "Tomograms" / "100").mkdir(parents=True)
    Tomogram.from_array(DATA, pixel_spacing=13.48, experiment_id="TS_026").to_zarr(
        run / "Tomograms" / "100" / "TS_026.zarr", levels=2, chunks=CHUNKS
    )
    (run / "Annotations" / "200").mkdir(parents=True)
    row = {"type": "orientedPoint", "location": {"x": 4.0, "y": 5.0, "z": 6.0},
           "xyz_rotation_matrix": np.eye(3).tolist()}  # fmt: skip
    (run / "Annotations" / "200" / "ribosome-1.0_orientedpoint.ndjson").write_text(json.dumps(row) + "\n")
    (run / "Annotations" / "200" / "annotation_metadata.json").write_text(
        json.dumps({"authors": [{"name": "Ada"}]})
    )
    return root


def test_portal_over_http_equals_local(tmp_path: Path) -> None:
    portal_folder(tmp_path)
    local = open_portal(tmp_path)
    with serve_folder(tmp_path) as server:
        remote = open_portal(f"{server.url}/10445")
        assert remote.runs == local.runs == ["TS_026"]
        assert remote.voxel_spacings("TS_026") == local.voxel_spacings("TS_026") == [13.48]
        assert remote.tomogram_kinds("TS_026", 13.48) == ["100"]
        strip = [{k: v for k, v in a.items() if k != "path"} for a in remote.annotations("TS_026")]
        assert strip == [{k: v for k, v in a.items() if k != "path"} for a in local.annotations("TS_026")]
        assert remote.authors("TS_026", "200") == ["Ada"]
        # listing never entered the OME-Zarr store: no request below TS_026.zarr/
        assert not [p for p in server.requests if "TS_026.zarr/" in p]
        with raise_if_dask_computes():
            tomo = remote.tomogram("TS_026", voxel_spacing=13.48, kind="100")
        assert {Path(p).name for p in server.requests if "TS_026.zarr/" in p} <= METADATA_NAMES
        np.testing.assert_array_equal(tomo.data[5, 2].values, DATA[5, 2])
        got = remote.picks("TS_026", object="ribosome", user="Ada", session="200", voxel_spacing=6.74)
    want = local.picks("TS_026", object="ribosome", user="Ada", session="200", voxel_spacing=6.74)
    np.testing.assert_allclose(got["position"].values, [[8.0, 10.0, 12.0]])  # 13.48 / 6.74 = 2
    np.testing.assert_array_equal(got["position"].values, want["position"].values)


def test_copick_config_404(server: CountingHTTPServer) -> None:
    url = f"{server.url}/nothing/config.json"
    with pytest.raises(CryoxrFileNotFoundError, match="no such copick config") as err:
        open_copick(url)
    assert url in str(err.value)


def test_portal_url_that_is_no_folder(server: CountingHTTPServer) -> None:
    with pytest.raises(CryoxrFileNotFoundError, match="no such folder") as err:
        open_portal(f"{server.url}/nothing")
    assert f"{server.url}/nothing" in str(err.value)
    with pytest.raises(CryoxrFileNotFoundError, match="run folders"):
        open_portal(server.url)


def test_portal_and_copick_in_a_listing_filesystem(tmp_path: Path) -> None:
    """fsspec's memory filesystem lists natively, as S3 does (no HTML index pages): the same
    catalogue functions read it."""
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    root = f"/cryoxr-{tmp_path.name}"
    portal_folder(tmp_path / "portal")
    config = copick_project(tmp_path / "copick", str(tmp_path / "copick" / "static"), "overlay")
    config.write_text(config.read_text().replace(str(tmp_path / "copick" / "static"), "static"))
    memory.put(str(tmp_path), root, recursive=True)
    try:
        portal = open_portal(f"memory://{root}/portal")
        assert portal.runs == ["TS_026"]
        assert portal.tomogram_kinds("TS_026", 13.48) == ["100"]
        tomo = portal.tomogram("TS_026", voxel_spacing=13.48, kind="100")
        np.testing.assert_array_equal(tomo.data[7].values, DATA[7])
        poses = portal.picks("TS_026", object="ribosome", session="200")
        np.testing.assert_array_equal(poses["position"].values, [[4.0, 5.0, 6.0]])
        project = open_copick(f"memory://{root}/copick/{config.name}")
        assert project.roots == (f"memory://{root}/copick/overlay", f"memory://{root}/copick/static")
        assert project.pick_sets("TS_001") == [("ribosome", "alice", "0")]
        assert project.tomogram("TS_001", voxel_spacing=20.0, kind="wbp").shape == (4, 4, 4)
    finally:
        memory.rm(root, recursive=True)
