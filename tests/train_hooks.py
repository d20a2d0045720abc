"""Test seams for the trainer, passed as ``pretrain(..., wrap_batches=...)`` or as a Ray Train callback (never
used by real runs).

Ray workers cannot import the tests, so a test registers this module for pickling by value
(``ray.cloudpickle.register_pickle_by_value``) before it hands a hook to ``pretrain``.
"""
from __future__ import annotations

import json
from pathlib import Path

import ray.train

FAIL_MARKER = "fail_hook.json"


class FailAtStep:
    """The last worker raises when it asks for the first batch of step ``step`` (1-based), once per run directory:
    a marker file records that it did, and which checkpoints Ray had registered at that moment."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self, batches, ctx: dict):
        marker = Path(ctx["run_dir"]) / FAIL_MARKER
        if ctx["rank"] != ctx["world"] - 1 or marker.exists():
            return batches
        return self._fail(batches, ctx, marker)

    def _fail(self, batches, ctx: dict, marker: Path):
        from sigma_ray.infra.ray_compat import registered_checkpoints

        fail_at = (self.step - 1 - ctx["start_step"]) * ctx["accumulate_steps"]
        for i, batch in enumerate(batches):
            if i == fail_at:
                marker.write_text(json.dumps({"step": self.step, "rank": ctx["rank"],
                                              "registered": registered_checkpoints(ctx["run_dir"])}))
                raise RuntimeError(f"test hook: worker {ctx['rank']} fails at step {self.step}")
            yield batch


class ReportLog(ray.train.UserCallback):
    """Appends one JSON line per report the Train controller takes (its step, whether it carries a checkpoint) to
    ``path``."""

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": metrics[0].get("step"), "checkpoint": checkpoint is not None}) + "\n")
