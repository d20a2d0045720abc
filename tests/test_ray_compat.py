"""Each private Ray API the project uses, called through its adapter (sigma_ray/infra/ray_compat.py): a Ray upgrade that
moves or changes one fails here, by name, instead of deep inside a run. pyproject.toml pins Ray below the next
minor version for the same reason."""
from __future__ import annotations

import inspect
import ipaddress
import json
import logging
from pathlib import Path

import pytest

from sigma_ray.infra import ray_compat

ROOT = Path(__file__).resolve().parents[1]


def test_autoscaling_is_off_on_the_local_session(ray_session):
    assert ray_compat.autoscaling_enabled() is False


def test_cluster_files_validate_with_rays_own_checks():
    import yaml

    prepared = ray_compat.validate_cluster_file(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    assert prepared["head_node_type"] in prepared["available_node_types"]
    with pytest.raises(Exception, match="max_worker"):
        ray_compat.validate_cluster_file({**prepared, "max_worker": 1})


def test_the_report_logger_is_the_one_that_prints_reports():
    from ray.train.v2._internal.execution import context

    name = ray_compat.train_report_logger_name()
    assert logging.getLogger(name) is context.logger
    assert "Reporting training result" in inspect.getsource(context)


def test_the_token_warning_logger_is_the_one_that_warns():
    from ray._private.authentication import authentication_token_setup as setup

    assert logging.getLogger(ray_compat.auth_setup_logger_name()) is setup.logger
    assert "Token authentication is enabled" in inspect.getsource(setup._warn_token_auth_enabled)


def test_the_checkpoint_snapshot_format_is_the_one_ray_reads(tmp_path):
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _CheckpointManagerState

    assert ray_compat.SNAPSHOT_FILE == CHECKPOINT_MANAGER_SNAPSHOT_FILENAME
    fields = set(getattr(_CheckpointManagerState, "model_fields", None) or _CheckpointManagerState.__fields__)
    assert set(ray_compat._SNAPSHOT_KEYS) | set(ray_compat._SNAPSHOT_NAME_LISTS) <= fields
    ray_compat.register_checkpoints(tmp_path, [("checkpoint_00000002", {"step": 2}),
                                               ("checkpoint_00000004", {"step": 4})])
    written = json.loads((tmp_path / ray_compat.SNAPSHOT_FILE).read_text())
    validate = getattr(_CheckpointManagerState, "model_validate", None) or _CheckpointManagerState.parse_obj
    state = validate(written)                                    # what Ray does on resume
    assert state.latest_checkpoint_result.checkpoint_dir_name == "checkpoint_00000004"
    assert ray_compat.registered_checkpoints(tmp_path) == ["checkpoint_00000002", "checkpoint_00000004"]
    (tmp_path / ray_compat.SNAPSHOT_FILE).write_text(json.dumps({"checkpoints": []}))
    with pytest.raises(ray_compat.RayCompatError, match="format changed"):
        ray_compat.registered_checkpoints(tmp_path)


def test_node_ip_address_is_an_address():
    ipaddress.ip_address(ray_compat.node_ip_address())
