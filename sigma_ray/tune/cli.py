"""``python experiments/sweep_prototypes.py`` / ``sigma-ray sweep``: a Ray Tune + Optuna sweep of SIGMA pretraining.

    python experiments/sweep_prototypes.py            # the local sweep (experiments/configs/sweep_local.yaml)
    python experiments/sweep_prototypes.py --smoke    # its smoke version
    python experiments/sweep_prototypes.py --smoke --dashboard   # serve its live dashboard (another terminal)
    # on a cluster (the job's driver runs the sweep; trials' Train workers land on the GPU nodes)
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python experiments/sweep_prototypes.py --config experiments/configs/sweep_k400_vitb.yaml

Running the same command again resumes an interrupted sweep (its directory is ``storage_path/name``).
``--config`` defaults to the local sweep, relative to the working directory (the repository's root).
``--smoke``: 4 trials of 4 steps (2 probes), 2 at a time, named ``<name>_smoke`` (minutes with the local config).
``--dashboard`` serves optuna-dashboard on the sweep's study instead of running it (:mod:`sigma_ray.tune.dashboard`).
``--set section.field=value`` values are parsed as YAML. Exit status: 0 done, 2 configuration error, 1 the sweep
failed or was interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from sigma_ray.infra.config import run_config_command
from sigma_ray.tune.dashboard import add_server_arguments

DEFAULT_CONFIG = "experiments/configs/sweep_local.yaml"
SMOKE_OVERRIDES = ("num_samples=4", "max_concurrent=2", "trial.steps=4", "trial.probe_every=2",
                   "asha.grace_period=1", "asha.max_t=null")


def build_parser(prog: str = "sweep_prototypes") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Hyper-parameter sweep of SIGMA pretraining "
                                                       "(Ray Tune trials, Optuna TPE, ASHA early stopping)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="sweep YAML (experiments/configs/sweep_*.yaml; default %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field (repeatable); the value is parsed as YAML, "
                        "e.g. --set pretrain.data.batch_size=2")
    p.add_argument("--smoke", action="store_true", help="4 tiny trials (4 steps each) under <name>_smoke")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--dashboard", action="store_true",
                   help="serve optuna-dashboard on this sweep's study (live while the sweep runs) instead of "
                        "running it")
    return add_server_arguments(p)


def config_from_args(args: argparse.Namespace):
    from sigma_ray.infra.config import load_config
    from sigma_ray.tune.config import SweepConfig

    # --set comes after the smoke settings, so it can still change them
    overrides = [*(SMOKE_OVERRIDES if args.smoke else ()), *args.overrides]
    config = load_config(SweepConfig, args.config, overrides)
    if args.smoke:
        config = dataclasses.replace(config, name=f"{config.name}_smoke")
    config.validate()   # also checks that the base pretraining config loads, before Ray starts
    return config


def _sweep(config) -> int:
    from sigma_ray.tune.sweep import run_sweep

    return 0 if run_sweep(config).finished else 1


def main(argv: list[str] | None = None, prog: str = "sweep_prototypes") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = (lambda c: _dashboard(c, args.host, args.port)) if args.dashboard else _sweep
    return run_config_command(lambda: config_from_args(args), run, args.dry_run)


def _dashboard(config, host: str, port: int) -> int:
    """Serve the dashboard of ``config``'s sweep (a local sweep directory must hold a started sweep)."""
    from sigma_ray.tune.dashboard import serve, sweep_study

    url, name = (config.study_url, config.name) if "://" in config.sweep_dir else sweep_study(config.sweep_dir)
    return serve(url, name, host, port)


if __name__ == "__main__":
    sys.exit(main())
