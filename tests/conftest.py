import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """Tests never download, and write caches and outputs under a temporary folder."""
    os.environ["RECBENCH_OFFLINE"] = "1"
    os.environ.setdefault("RECBENCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    os.environ["RECBENCH_OUTPUTS"] = str(tmp_path_factory.mktemp("outputs"))
    yield


def data_dir(sub: str) -> Path:
    """A real dataset folder under RECBENCH_DATA_DIR, or skip saying why."""
    base = os.environ.get("RECBENCH_DATA_DIR")
    if not base:
        pytest.skip("real data: set RECBENCH_DATA_DIR to the folder holding ml-100k/ etc.")
    path = Path(base) / sub
    if not path.exists():
        pytest.skip(f"real data: {path} does not exist")
    return path


@pytest.fixture
def ml100k() -> Path:
    return data_dir("ml-100k")
