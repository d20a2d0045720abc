"""Shared fixtures: the test videos (made here, see tests/videos.py), one Ray session for the whole run, headless
Chromium."""
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

    from sigma_ray.infra.ray_session import init_ray

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

    from sigma_ray.method.vit import ModelConfig, VideoEncoder

    torch.manual_seed(0)
    return VideoEncoder(ModelConfig(size="tiny", num_frames=8, img_size=64)).eval()


class Chromium:
    """Headless Debian Chromium rendering pages served on this machine: the DOM after JavaScript ran
    (``--dump-dom`` once a virtual-time budget is spent; network fetches pause virtual time) and screenshots.
    Each call starts a fresh browser with an empty profile and every background connection off (the network is
    closed here)."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars")

    def __init__(self, binary: str, tmp: Path):
        self.binary, self.tmp = binary, tmp

    def _run(self, url: str, *args: str, budget_ms: int) -> str:
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory(dir=self.tmp) as profile:
            out = subprocess.run([self.binary, *self.FLAGS, f"--user-data-dir={profile}",
                                  f"--virtual-time-budget={budget_ms}", *args, url],
                                 capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            raise RuntimeError(f"chromium exited {out.returncode} on {url}: {out.stderr[-2000:]}")
        return out.stdout

    def dom(self, url: str, expect: str, budget_ms: int = 10000, tries: int = 3) -> str:
        """The rendered DOM of ``url`` once its visible text contains ``expect``, whitespace ignored (retried
        with a doubled budget: a loaded machine may need longer than the budget's virtual time for the page's
        fetches)."""
        html = ""
        for i in range(tries):
            html = self._run(url, "--dump-dom", budget_ms=budget_ms * 2 ** i)
            if "".join(expect.split()) in "".join(visible_text(html).split()):
                return html
        raise AssertionError(f"{expect!r} never appeared in the rendered {url}:\n{visible_text(html)[:3000]}")

    def text(self, url: str, expect: str, budget_ms: int = 10000) -> str:
        """What a person reads on the rendered ``url`` (see :func:`visible_text`), once it shows ``expect``."""
        return visible_text(self.dom(url, expect, budget_ms))

    def screenshot(self, url: str, path: Path, width: int = 1280, height: int = 900,
                   budget_ms: int = 10000) -> Path:
        self._run(url, f"--screenshot={path}", f"--window-size={width},{height}", budget_ms=budget_ms)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no PNG screenshot of {url}"
        return path


def visible_text(html: str) -> str:
    """The text a person reads in a rendered DOM: tags, styles and scripts dropped, whitespace collapsed."""
    import html as html_lib
    import re

    html = re.sub(r"<(style|script)\b.*?</\1>", " ", html, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html_lib.unescape(re.sub(r"<[^>]+>", " ", html))).strip()


@pytest.fixture(scope="session")
def chromium(tmp_path_factory) -> Chromium:
    """Debian's headless Chromium (``make test`` installs the ``chromium`` package)."""
    import shutil

    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium not found: install Debian's chromium package "
                    "(apt-get install chromium; `make test` does it)")
    return Chromium(binary, tmp_path_factory.mktemp("chromium"))
