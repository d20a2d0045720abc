"""Shared fixtures: the test videos (made here, see tests/videos.py) and one Ray session for the whole run."""
import os
import secrets
from pathlib import Path

import pytest

# Token authentication with a token of this test session's own: Ray's default token file (~/.ray/auth_token) is
# shared by every Ray on the machine, and two sessions generating it at once can leave a head and its driver
# with different tokens. Every Ray process (and every head or job a test starts) inherits this one.
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


@pytest.fixture(scope="session")
def test_videos(tmp_path_factory) -> dict[str, Path]:
    """The suite's own real videos (H.264 with irregular key frames and audio, letterboxed, a 29.97 fps phone-size
    clip, odd-sized, VP9/webm) and the broken files made from a good one: name -> path (see tests/videos.py)."""
    from videos import make_videos

    return make_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for all tests that need it (ray.init costs seconds); shut down at the end."""
    import ray

    from sigma_ray.ray_session import init_ray

    started = not ray.is_initialized()
    if started:
        init_ray(num_cpus=2, quiet=True)
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
