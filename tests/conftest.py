"""Shared fixtures: the shared data folder beside the repository and one Ray session for the whole run."""
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for all tests that need it (ray.init costs seconds); shut down at the end."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> dict:
    """A small synthetic set for the trainer tests: 4 classes x 6 train videos of 16 frames at 64x64 (~2 s)."""
    from sigma_ray.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("tiny_synthetic"), num_classes=4, train_per_class=6,
                          val_per_class=1, frames=16, size=64)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors on a shared 2-core machine: one intra-op thread is several times faster than two."""
    from sigma_ray.eval.metrics import single_thread

    with single_thread():
        yield


@pytest.fixture(scope="module")
def tiny_encoder():
    """A randomly initialized ``tiny`` encoder for 8 frames at 64x64, in eval mode (seed 0)."""
    import torch

    from sigma_ray.model.vit import ModelConfig, VideoEncoder

    torch.manual_seed(0)
    return VideoEncoder(ModelConfig(size="tiny", num_frames=8, img_size=64)).eval()
