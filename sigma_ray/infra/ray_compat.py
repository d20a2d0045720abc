"""Every use of a private Ray API, each behind one small function (tests/test_ray_compat.py calls each one, so an
upgrade that moves or changes them fails there, loudly, instead of deep inside a run). pyproject.toml pins Ray to
the versions these were checked against.

- :func:`autoscaling_enabled`: ``ray.data._internal...is_autoscaling_enabled`` and ``ray._private.state``;
- :func:`validate_cluster_file`: ``ray.autoscaler._private.util.prepare_config`` / ``validate_config``;
- :func:`train_report_logger_name`: the logger Ray Train's worker context prints each report with;
- :func:`auth_setup_logger_name`: the logger that warns, on every local ``ray.init()``, that token
  authentication is on;
- :func:`registered_checkpoints` / :func:`register_checkpoints`: Ray Train V2's checkpoint-manager snapshot
  (``checkpoint_manager_snapshot.json`` in the run directory), which decides what a resumed run starts from;
- :func:`node_ip_address`: ``ray._private.services.get_node_ip_address``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
# The snapshot keys this module reads and writes; a Ray version that renames one must fail here, not resume wrong.
_SNAPSHOT_KEYS = ("ray_version", "checkpoint_results", "checkpoint_report_indices", "latest_checkpoint_result",
                  "pending_training_results", "pending_validation_specs", "current_report_index")
_SNAPSHOT_NAME_LISTS = ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                        "failed_validation_checkpoint_dir_names")


class RayCompatError(RuntimeError):
    """A private Ray API this project relies on is not what it was when the project was tested."""


def autoscaling_enabled() -> bool:
    """True when an autoscaler may add nodes to the connected cluster (its resources may still grow)."""
    from ray.data._internal.cluster_autoscaler.util import is_autoscaling_enabled
    import ray._private.state

    if is_autoscaling_enabled():
        return True
    cfg = ray._private.state.state.get_cluster_config()
    return bool(cfg and cfg.node_group_configs)


def validate_cluster_file(raw: dict) -> dict:
    """Ray's own offline checks of a cluster-launcher config, as ``ray up`` runs them; returns the prepared dict
    (provider defaults filled in). Raises whatever Ray raises (jsonschema, click, ValueError...)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(raw)
    validate_config(prepared)
    return prepared


def train_report_logger_name() -> str:
    """The name of the logger that prints ``Reporting training result N: TrainingReport(...)`` in a Ray Train
    worker: Ray Train V2's worker context names it after its file path."""
    from ray.train.v2._internal.execution import context

    name = context.logger.name
    if name != context.__file__:
        raise RayCompatError(f"Ray Train's context logger is {name!r}, not named after {context.__file__}")
    return name


def auth_setup_logger_name() -> str:
    """The name of the logger Ray's token-authentication setup warns through."""
    from ray._private.authentication import authentication_token_setup as setup

    if setup.logger.name != setup.__name__:
        raise RayCompatError(f"Ray's token setup logs through {setup.logger.name!r}, not {setup.__name__!r}")
    return setup.logger.name


def node_ip_address() -> str:
    """The address Ray picks for this node."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def _snapshot_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / SNAPSHOT_FILE


def _read_snapshot(run_dir: str | Path) -> dict[str, Any] | None:
    path = _snapshot_path(run_dir)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    missing = [k for k in _SNAPSHOT_KEYS if k not in data]
    if missing:
        raise RayCompatError(f"{path}: Ray's checkpoint snapshot has no {', '.join(missing)}: its format changed")
    return data


def registered_checkpoints(run_dir: str | Path) -> list[str] | None:
    """The checkpoint directory names Ray Train has registered for a run (oldest first), or None without a
    snapshot."""
    data = _read_snapshot(run_dir)
    return None if data is None else [r["checkpoint_dir_name"] for r in data["checkpoint_results"]]


def register_checkpoints(run_dir: str | Path, checkpoints: list[tuple[str, dict]]) -> None:
    """Make Ray Train's snapshot list exactly ``checkpoints`` (``(dir name, metrics)``, oldest first; the last is
    what the next run resumes from). Entries Ray already had keep their report index and metrics; new ones (a
    checkpoint uploaded but never registered because the run died first) are appended in order. No snapshot and
    no checkpoint: nothing to do."""
    import ray

    from sigma_ray.runs.files import write_text_atomic   # the run directory's one writer (a leaf module)

    data = _read_snapshot(run_dir)
    if data is None:
        if not checkpoints:
            return
        data = {"ray_version": ray.__version__, "checkpoint_results": [], "checkpoint_report_indices": [],
                "latest_checkpoint_result": None, "pending_training_results": [], "pending_validation_specs": [],
                "current_report_index": 0, **{k: [] for k in _SNAPSHOT_NAME_LISTS}}
    known = {r["checkpoint_dir_name"]: (r, i) for r, i in zip(data["checkpoint_results"],
                                                              data["checkpoint_report_indices"])}
    results, indices, last = [], [], -1
    for name, metrics in checkpoints:
        result, index = known.get(name, ({"version": 0, "checkpoint_dir_name": name, "metrics": dict(metrics)}, -1))
        last = max(index, last + 1)
        results.append(result)
        indices.append(last)
    names = {name for name, _ in checkpoints}
    pending = [(r, s) for r, s in zip(data["pending_training_results"], data["pending_validation_specs"])
               if r["checkpoint_dir_name"] in names]
    data.update(checkpoint_results=results, checkpoint_report_indices=indices,
                latest_checkpoint_result=results[-1] if results else None,
                pending_training_results=[r for r, _ in pending], pending_validation_specs=[s for _, s in pending],
                current_report_index=max(int(data["current_report_index"]), last + 1))
    for key in _SNAPSHOT_NAME_LISTS:
        if key in data:
            data[key] = [n for n in data[key] if n in names]
    write_text_atomic(_snapshot_path(run_dir), json.dumps(data))
