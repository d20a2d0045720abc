"""The package's layers (docs/guide/architecture.md): what each folder may import, read from the source itself.

Every ``import`` and ``from ... import`` statement counts, also the ones inside functions, so a lazy import
cannot hide a forbidden dependency.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sigma_ray"

# folder -> the sigma_ray modules it may import (a name allows the module and everything below it)
ALLOWED = {
    "method": {"method", "infra.checks"},
    "infra": {"infra", "runs.files"},
    "runs": {"method", "infra", "runs"},
    "data": {"method", "infra", "runs.files", "data"},
    "eval": {"method", "infra", "runs", "data", "eval"},
    "train": {"method", "infra", "runs", "data", "train", "cluster"},
    "tune": {"method", "infra", "runs", "data", "eval", "train", "tune"},
}
# third-party packages a folder must not import: the method runs on a machine with torch and timm alone
FORBIDDEN = {
    "method": {"ray", "yaml", "pyarrow", "av", "safetensors", "transformers", "optuna"},
    "runs": {"ray", "optuna"},
    "infra": {"torch", "optuna"},
}


def imports(path: Path) -> list[str]:
    """The module names ``path`` imports (absolute names; the package uses no relative imports)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names.append(node.module)
    return names


def violations(folder: str) -> list[str]:
    found = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for name in imports(path):
            parts = name.split(".")
            if parts[0] == "sigma_ray":
                target = ".".join(parts[1:])
                if not any(target == a or target.startswith(a + ".") for a in ALLOWED[folder]):
                    found.append(f"{path.relative_to(PACKAGE)} imports {name}")
            elif parts[0] in FORBIDDEN.get(folder, ()):
                found.append(f"{path.relative_to(PACKAGE)} imports {name}")
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_folder_imports_only_the_layers_below_it(folder):
    assert violations(folder) == []


def test_the_rule_catches_a_forbidden_import(tmp_path, monkeypatch):
    """The checker itself: an eval module importing the trainer, and a method module importing Ray, are found."""
    for folder, line in (("eval", "from sigma_ray.train.launch import pretrain"), ("method", "import ray")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "bad.py").write_text(f"def f():\n    {line}\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path)
    assert violations("eval") == ["eval/bad.py imports sigma_ray.train.launch"]
    assert violations("method") == ["method/bad.py imports ray"]


def test_every_folder_has_a_rule():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(ALLOWED)


def test_the_method_imports_nothing_but_torch_and_timm():
    """Importing every module of the method loads no Ray, no Arrow, no decoder and no Tune. (timm itself loads
    yaml and safetensors, so those are checked in the source only, by the rule above.)"""
    modules = sorted(f"sigma_ray.method.{p.stem}" for p in (PACKAGE / "method").glob("*.py") if p.stem != "__init__")
    assert "sigma_ray.method.sinkhorn" in modules and "sigma_ray.method.step" in modules
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
            f"print(sorted(m for m in ('ray', 'pyarrow', 'av', 'transformers', 'optuna') "
            f"if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_each_run_file_name_is_defined_once():
    """The run directory's file names are string constants in runs/files.py and nowhere else."""
    from sigma_ray.runs import files

    names = {v for k, v in vars(files).items() if k.isupper() and isinstance(v, str)}
    assert {"config.yaml", "metrics.jsonl", "encoder.pt", "state.pt", "LOCK"} <= names
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "runs" / "files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert found == []
