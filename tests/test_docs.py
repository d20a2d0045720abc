"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a missing page or an API reference
entry that names no module fails it), and the README stays a guide of at most 250 lines."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=root,
                          capture_output=True, text=True, env=env, timeout=300)


def test_the_site_builds_strictly_with_its_api_reference(tmp_path):
    out = build(ROOT, tmp_path / "site")
    assert out.returncode == 0, out.stderr[-3000:]
    method = (tmp_path / "site" / "reference" / "method" / "index.html").read_text()
    assert "sigma_ray.method.sinkhorn" in method and "doc-heading" in method          # rendered from the docstrings


def test_a_broken_link_fails_the_build(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    shutil.copytree(ROOT / "sigma_ray", copy / "sigma_ray")
    with (copy / "docs" / "index.md").open("a") as f:
        f.write("\nSee [a page that is not there](guide/missing.md).\n")
    out = build(copy, tmp_path / "site")
    assert out.returncode != 0 and "guide/missing.md" in out.stderr


def test_the_readme_is_a_short_guide_with_the_two_commands_first():
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(readme) <= 250
    setup = readme.index("## Set-up: two commands")
    commands = [line.split("#")[0].strip() for line in readme[setup:setup + 8] if line.startswith("    make ")]
    assert commands == ["make demo", "make test"]
