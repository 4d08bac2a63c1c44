"""Shared fixtures: one real local Ray per test session, paths to shared data, helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("EDITGEN_CACHE", str(ROOT / ".cache" / "editgen"))

from tests.support import SHARED_LAION, one_thread, tiny_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray cluster, started once per session and shared by every test that needs one."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            object_store_memory=300 * 1024 * 1024,
            logging_level="WARNING",
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        )
    yield ray
    # Leave Ray running until the interpreter exits: other session fixtures may still use it.


@pytest.fixture(scope="session")
def ray_address(ray_session) -> str:
    """GCS address of the session cluster, for CLI subprocesses that join it (--ray-address)."""
    return ray_session.get_runtime_context().gcs_address


@pytest.fixture(scope="session")
def laion_parquet() -> Path:
    if not SHARED_LAION.exists():
        pytest.skip(f"{SHARED_LAION} not present (../shared/data beside the project)")
    return SHARED_LAION


@pytest.fixture(scope="module")
def p2p_one_thread():
    """One torch thread for a whole P2P test module (`pytestmark = usefixtures(...)`): on 2 shared cores
    OpenMP spinning is far slower than 1 thread."""
    yield from one_thread()


@pytest.fixture(scope="module")
def p2p(tmp_path_factory, p2p_one_thread):
    """The tiny SD pipeline with DDIM, built once per module."""
    return tiny_pipeline(tmp_path_factory, "sd", "ddim")
