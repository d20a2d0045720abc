"""``python experiments/evaluate.py`` / ``sigma-ray eval``: evaluate a pretrained encoder.

    python experiments/evaluate.py --config experiments/configs/eval_local.yaml
    python experiments/evaluate.py --config experiments/configs/eval_ucf101.yaml \\
        --encoder runs/k400_vitb/encoder.pt --out runs/eval/ucf101 --set protocols=[knn,linear]
    # on a cluster: decode on Ray Data actors, run the encoder in a task on a GPU node
    ray job submit --address http://HEAD:8265 --working-dir . -- python experiments/evaluate.py \\
        --config experiments/configs/eval_k400.yaml --set use_ray=true --num-gpus 1

``--encoder`` is an ``encoder.pt``, a run directory or a checkpoint directory; ``--set section.field=value``
values are parsed as YAML. ``--suite RUN_OR_DEMO_DIR...`` runs the evaluation suite instead
(:mod:`sigma_ray.eval.suite`: every run's encoder, and the random initial weights of each seed, on its
pretraining set and on ``--sets DIR...``, fine-tuned with 4 / 16 / all labels per class on ``--finetune SET...``;
writes suite.json, suite.md and the curves into ``--out``). Exit status: 0 done, 2 configuration error, 1 evaluation failed.
"""
from __future__ import annotations

import argparse
import json
import sys

from sigma_ray.infra.config import load_config, run_config_command


def build_parser(prog: str = "evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="kNN, linear probe and fine-tuning of a pretrained encoder")
    p.add_argument("--config", help="evaluation YAML (experiments/configs/eval_*.yaml)")
    p.add_argument("--encoder", default=None, help="encoder.pt, run directory or checkpoint directory (encoder=)")
    p.add_argument("--out", default=None, help="output directory for results.json and the PNGs (out_dir=)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field (repeatable); the value is parsed as YAML")
    p.add_argument("--num-gpus", type=float, default=0.0,
                   help="run the evaluation as a Ray task holding this many GPUs (a cluster's GPU node); "
                        "paths must then be visible from that node")
    p.add_argument("--suite", nargs="+", default=None, metavar="RUN_DIR",
                   help="run the evaluation suite on these run directories (or directories of them, e.g. a demo's "
                        "output, or encoder.pt exports) instead of one protocol run")
    p.add_argument("--sets", nargs="*", default=[], metavar="DATA_DIR",
                   help="with --suite: more data sets to evaluate every encoder on: folders of VideoMAE lists, "
                        "multi-label or count lists, DAVIS-2017 or YouTube-VOS; LISTS_DIR@VIDEO_ROOT when the "
                        "lists' paths are relative to another folder")
    p.add_argument("--only-sets", action="store_true",
                   help="with --suite: evaluate on --sets only, not on the runs' own pretraining sets")
    p.add_argument("--finetune", nargs="*", default=[], metavar="SET",
                   help="with --suite: also fine-tune the self-supervised encoders and the random init with 4, "
                        "16 and all labelled videos per class on these sets (by the name the tables give them, "
                        "e.g. patterns) and plot the curves")
    p.add_argument("--sampling-rate", type=int, default=None,
                   help="with --suite: the clips' frame stride (default: the first run's; a bare encoder file "
                        "does not record it)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    return p


def config_from_args(args: argparse.Namespace):
    from sigma_ray.eval.config import EvalConfig

    overrides = list(args.overrides)
    # explicit flags win over --set: they are applied last
    if args.encoder is not None:
        overrides.append(f"encoder={json.dumps(args.encoder)}")
    if args.out is not None:
        overrides.append(f"out_dir={json.dumps(args.out)}")
    return load_config(EvalConfig, args.config, overrides)


def main(argv: list[str] | None = None, prog: str = "evaluate") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.suite:
        return suite_main(args)

    def run(config) -> int:
        from sigma_ray.eval.run import evaluate, evaluate_as_ray_task

        results = evaluate_as_ray_task(config, args.num_gpus) if args.num_gpus > 0 else evaluate(config)
        print(json.dumps(results["metrics"], indent=2))
        return 0

    return run_config_command(lambda: config_from_args(args), run, args.dry_run,
                              {FileNotFoundError: 1, ValueError: 1})


def suite_main(args: argparse.Namespace) -> int:
    from sigma_ray.eval.suite import run_suite
    from sigma_ray.infra.checks import ConfigError

    try:
        result = run_suite(args.suite, args.sets, args.out or "runs/suite", own_sets=not args.only_sets,
                           finetune_sets=args.finetune, sampling_rate=args.sampling_rate)
    except (FileNotFoundError, ConfigError) as e:
        print(f"sigma-ray eval --suite: {e}", file=sys.stderr)
        return 2
    print(open(f"{args.out or 'runs/suite'}/suite.md").read())
    return 0 if result["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
