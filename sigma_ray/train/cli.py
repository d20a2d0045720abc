"""``python experiments/pretrain.py`` / ``sigma-ray pretrain``: load a config, apply overrides, run pretraining.

    python experiments/pretrain.py --config experiments/configs/local_tiny.yaml
    python experiments/pretrain.py --config experiments/configs/k400_vitb.yaml --num-workers 16 \\
        --set train.epochs=10 --set train.use_gpu=true --name k400-short --storage-path s3://bucket/runs

``--set section.field=value`` values are parsed as YAML (``true``/``false`` are booleans, ``[0.9, 0.95]`` a
list, ``null`` None). Exit status: 0 done; 2 the input is unusable (a configuration or annotation error, a config
change a resumed run cannot take, an unwritable storage path, too many unreadable videos); 1 the run failed (a
non-finite loss, another run owns the run directory, no valid checkpoint to resume from or a refused one, workers
failed); 130 Ctrl-C (the message says the step reached and the last checkpoint; the same command resumes).
"""
from __future__ import annotations

import argparse
import logging
import sys

from sigma_ray.infra.config import run_config_command


def build_parser(prog: str = "pretrain") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="SIGMA pretraining with Ray Train")
    p.add_argument("--config", help="experiment YAML (experiments/configs/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field (repeatable); the value is parsed as YAML")
    p.add_argument("--num-workers", type=int, default=None, help="train.num_workers")
    p.add_argument("--name", default=None, help="run name (a run with the same name resumes)")
    p.add_argument("--storage-path", default=None, help="where run directories go (local path or URI)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    return p


def config_from_args(args: argparse.Namespace):
    from sigma_ray.train.config import load_pretrain_config

    overrides = list(args.overrides)
    if args.num_workers is not None:
        overrides.append(f"train.num_workers={args.num_workers}")
    return load_pretrain_config(args.config, overrides, name=args.name, storage_path=args.storage_path)


def _pretrain(config) -> int:
    from sigma_ray.train.launch import RunInterrupted, pretrain

    try:
        pretrain(config)
    except RunInterrupted as e:
        print(f"[sigma-ray] {e}", file=sys.stderr, flush=True)
        return 130
    return 0


def main(argv: list[str] | None = None, prog: str = "pretrain") -> int:
    from ray.train import TrainingFailedError

    from sigma_ray.data.stats import SkipBoundError
    from sigma_ray.runs.checkpoint import CheckpointError
    from sigma_ray.runs.rundir import RunLockedError
    from sigma_ray.train.launch import NonFiniteLossError

    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    failures = {SkipBoundError: 2, NonFiniteLossError: 1, RunLockedError: 1, CheckpointError: 1,
                TrainingFailedError: 1}
    return run_config_command(lambda: config_from_args(args), _pretrain, args.dry_run, failures)


if __name__ == "__main__":
    sys.exit(main())
