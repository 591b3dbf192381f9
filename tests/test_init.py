"""``import cryoxr``: the public API loads on first use; the accessors register in any import order."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cryoxr

HEAVY = ("dask", "xarray", "pandas", "zarr", "scipy")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_import_cryoxr_loads_no_heavy_dependency() -> None:
    result = run_python(f"import sys, cryoxr; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_cli_help_parses_before_any_heavy_import() -> None:
    code = (
        "import sys\nfrom cryoxr.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print('loaded:', [m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "usage: cryoxr" in result.stdout
    assert result.stdout.strip().endswith("loaded: []")


@pytest.mark.parametrize(
    "order",
    [
        "import cryoxr\nimport xarray as xr\nimport pandas as pd",
        "import xarray as xr\nimport cryoxr\nimport pandas as pd",
        "import pandas as pd\nimport cryoxr\nimport xarray as xr",
        "import cryoxr\nimport pandas as pd\nimport xarray as xr",
        "import numpy, dask.array\nimport cryoxr\nimport xarray as xr\nimport pandas as pd",
        "import cryoxr\nT = cryoxr.Tomogram\nimport xarray as xr\nimport pandas as pd",
    ],
)
def test_accessors_registered_in_any_import_order(order: str) -> None:
    code = (
        f"{order}\n"
        "print(all(hasattr(c, 'cryo') for c in (xr.DataArray, xr.Dataset, pd.DataFrame)))\n"
        "import sys; print(any(type(f).__name__ == '_RegisterAccessorsOnImport' for f in sys.meta_path))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]  # registered, and the import hook removed itself


def test_every_public_name_resolves_and_is_documented() -> None:
    for name in cryoxr.__all__:
        value = getattr(cryoxr, name)
        assert value is not None
        if name not in ("io", "PoseSet", "ProjectionModel"):  # a module and two type aliases
            assert (value.__doc__ or "").strip(), f"cryoxr.{name} has no docstring"
    assert set(cryoxr.__all__) <= set(dir(cryoxr))


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        _ = cryoxr.nonesuch  # type: ignore[attr-defined]


def test_image_writers_load_io_on_first_use(tmp_path: object) -> None:
    code = (
        "import sys, tempfile, numpy as np, cryoxr\n"
        "t = cryoxr.Tomogram.from_array(np.zeros((2, 2, 2), 'f4'), pixel_spacing=1.0, experiment_id='a')\n"
        "print('cryoxr.io' in sys.modules)\n"
        "d = tempfile.mkdtemp(); t.to_mrc(d + '/a.mrc'); t.to_zarr(d + '/a.ome.zarr')\n"
        "print('cryoxr.io' in sys.modules, cryoxr.io.read_mrc(d + '/a.mrc').shape)"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["False", "True (2, 2, 2)"]
