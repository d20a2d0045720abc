"""The ``sigma-ray`` command. Each subcommand imports its layer lazily, so ``make-synthetic`` needs no Ray."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _step_demo(args: argparse.Namespace) -> int:
    """One SIGMA-MLP training step of the ``tiny`` model on a random clip: the smallest real thing."""
    import numpy as np
    import torch

    from sigma_ray.method.masking import MaskGenerator
    from sigma_ray.method.sigma import ObjectiveConfig, SigmaModel
    from sigma_ray.method.step import metrics_to_floats, train_step
    from sigma_ray.method.vit import ModelConfig, count_parameters

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model_cfg = ModelConfig(size="tiny", num_frames=16, img_size=64)
    objective = ObjectiveConfig(num_prototypes=args.prototypes)
    model = SigmaModel(model_cfg, objective)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    batch = {"clips": torch.from_numpy(rng.integers(0, 256, (args.batch, 16, 64, 64, 3), dtype=np.uint8)),
             "masks": torch.from_numpy(MaskGenerator(model_cfg.grid).batch(args.batch, rng))}
    metrics = metrics_to_floats(train_step(model, batch, optimizer))
    print(f"tiny SIGMA-MLP ({count_parameters(model) / 1e6:.1f}M parameters), one step on {args.batch} random "
          f"16x64x64 clips, {int(batch['masks'].sum())} masked tubes, K={args.prototypes}")
    print(f"loss {metrics['loss']:.4f} = video->proj codes {metrics['loss_video']:.4f} "
          f"+ proj->video codes {metrics['loss_proj']:.4f}; grad norm {metrics['grad_norm']:.3f}")
    print(f"prototype usage perplexity: video {metrics['perplexity_video']:.1f}, "
          f"projection {metrics['perplexity_proj']:.1f} (of {args.prototypes}; 1 = collapse)")
    return 0


def _make_synthetic(args: argparse.Namespace) -> int:
    from sigma_ray.data.synthetic import make_synthetic

    out = make_synthetic(args.out, num_classes=args.classes, train_per_class=args.train_per_class,
                         val_per_class=args.val_per_class, frames=args.frames, size=args.size, seed=args.seed,
                         kind=args.kind)
    print(f"wrote {out['train']}, {out['val']} and {out['classes']} ({args.classes} classes) under {out['root']}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import dataclasses

    from sigma_ray.demo import DemoConfig, quick_config, run_demo, with_data, with_overrides
    from sigma_ray.infra.checks import ConfigError

    base = quick_config() if args.quick else DemoConfig()
    changes = {k: v for k, v in (("out_dir", args.out), ("steps", args.steps), ("seeds", args.seeds),
                                 ("suite", args.suite or None)) if v is not None}
    demo = dataclasses.replace(base, **changes)
    if args.data is not None:
        demo = with_data(demo, args.data, keep_out_dir=args.out is not None)
    from sigma_ray.train.launch import RunInterrupted

    try:
        run_demo(with_overrides(demo, args.set))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except RunInterrupted as e:
        print(f"[sigma-ray] {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("[sigma-ray] demo interrupted; start the same command again: finished runs are kept",
              file=sys.stderr)
        return 130
    return 0


def _init_overrides(released, model_file: Path) -> list[str]:
    """``section.field=value`` overrides (YAML values) that make a pretraining config fit an imported model.pt."""
    import dataclasses

    import yaml

    from sigma_ray.method.vit import ModelConfig

    def item(key: str, value) -> str:
        return f"{key}={yaml.safe_dump(value).splitlines()[0]}"

    c, o = released.model_config, released.objective
    sets = [item(f"model.{f.name}", getattr(c, f.name)) for f in dataclasses.fields(ModelConfig)
            if f.name != "drop_path"]
    sets.append(item("objective.kind", o.kind))
    if o.kind != "videomae":
        sets.append(item("objective.num_prototypes", o.num_prototypes))
    if o.kind == "sigma_mlp":
        sets.append(item("objective.feature_dim", o.feature_dim))
    if o.kind == "sigma_dino":
        sets += [item("objective.teacher_model", o.teacher_model), "objective.teacher_checkpoint=TEACHER_FILE"]
    return sets + [item("train.init_from", str(model_file))]


def _import(args: argparse.Namespace) -> int:
    """Released weights (the SIGMA/VideoMAE release or transformers' VideoMAE) -> encoder.pt (+ model.pt)."""
    from sigma_ray.runs.release import ReleaseFormatError, import_released

    try:
        released, written = import_released(args.src, args.out, args.num_frames, args.img_size)
    except (ReleaseFormatError, FileNotFoundError) as e:
        print(f"sigma-ray import: {e}", file=sys.stderr)
        return 2
    c = released.model_config
    layout = "the SIGMA/VideoMAE release" if released.source_format == "release" else "transformers' VideoMAE"
    article = "an" if released.kind == "encoder" else "a"
    print(f"{released.source}: {article} {released.kind} checkpoint in {layout}'s layout: model.size={c.size}, "
          f"{c.num_frames} frames x {c.img_size} px, tubelet {c.tubelet}, patch {c.patch}, norm_eps {c.norm_eps:g}, "
          f"final_norm {c.final_norm}" + (f", objective.kind={released.objective.kind}" if released.objective else "")
          + (f", a {released.classifier_head['head.weight'].shape[0]}-class head" if released.classifier_head
             is not None else ""))
    print(f"wrote {written['encoder']}: sigma-ray eval --config CONFIG --encoder {written['encoder']}  "
          f"(data.num_frames={c.num_frames}, data.input_size={c.img_size})")
    if "model" in written:
        print(f"wrote {written['model']}: sigma-ray pretrain --config CONFIG "
              + " ".join(f"--set {x}" for x in _init_overrides(released, written["model"])))
    return 0


def _export(args: argparse.Namespace) -> int:
    """An encoder (encoder.pt, run or checkpoint directory) -> transformers' VideoMAEModel or the release layout."""
    from sigma_ray.runs.encoders import load_any_encoder
    from sigma_ray.runs.release import ReleaseFormatError, export_release, export_transformers
    from sigma_ray.runs.weights import CheckpointError

    try:
        encoder, source = load_any_encoder(args.encoder)
        if args.format == "transformers":
            out = export_transformers(encoder, args.out)
            print(f"wrote {out}/config.json and model.safetensors from {source}: "
                  f"transformers.VideoMAEModel.from_pretrained({str(out)!r})")
        else:
            out = export_release(encoder, Path(args.out) / "checkpoint.pth")
            print(f"wrote {out} from {source}: the SIGMA/VideoMAE code base fine-tunes from it (--finetune)")
    except (ReleaseFormatError, CheckpointError, FileNotFoundError) as e:
        print(f"sigma-ray export: {e}", file=sys.stderr)
        return 2
    if getattr(encoder, "classifier_head", None) is not None:
        print("note: the classifier head stored with this encoder is not exported (the encoder alone is)")
    return 0


# Commands with their own parsers: ``sigma-ray NAME ARGS`` runs the module's ``main(ARGS)`` (the jobs are also
# ``python experiments/SCRIPT ARGS``).
JOBS = {
    "pretrain": ("sigma_ray.train.cli", "SIGMA pretraining with Ray Train (experiments/pretrain.py)"),
    "eval": ("sigma_ray.eval.cli", "kNN / linear probe / fine-tune evaluation (experiments/evaluate.py)"),
    "sweep": ("sigma_ray.tune.cli", "Ray Tune + Optuna sweep (experiments/sweep_prototypes.py)"),
    "dashboard": ("sigma_ray.tune.dashboard", "optuna-dashboard on a sweep's study: sigma-ray dashboard SWEEP_DIR"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in JOBS:
        import importlib

        return importlib.import_module(JOBS[argv[0]][0]).main(argv[1:], prog=f"sigma-ray {argv[0]}")

    parser = argparse.ArgumentParser(prog="sigma-ray", description="SIGMA video pretraining on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in JOBS.items():
        sub.add_parser(name, help=help_text, add_help=False)

    p = sub.add_parser("demo", help="the embedded demo: synthetic set, SIGMA vs pixels vs random, report.md")
    p.add_argument("--out", default=None, help="output directory (default runs/demo)")
    p.add_argument("--steps", type=int, default=None, help="training steps per method and seed (default: "
                   "sigma_ray.demo.DemoConfig's)")
    p.add_argument("--seeds", type=int, default=None, help="seeds to run, each with its own initial weights, data "
                   "order and masks; the table shows mean +- std (default 1)")
    p.add_argument("--quick", action="store_true", help="the smallest end-to-end run (about a minute)")
    p.add_argument("--data", default=None, metavar="FAMILY_OR_DIR",
                   help="the data set: a synthetic family (patterns, the default; motion: objects whose motion "
                        "alone names the class; shapes: shape x direction), written under OUT/synthetic, or a "
                        "directory with VideoMAE lists train.csv / val.csv (paths relative to it). The output "
                        "directory defaults to runs/demo_NAME for anything but patterns")
    p.add_argument("--suite", action="store_true",
                   help="then run the evaluation suite on fresh held-back copies of the generated families "
                        "(probes, 4/16 per class, fine-tuning curves, arrow of time, counting, multi-label, "
                        "segmentation) and add its tables to report.md (OUT/suite/suite.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sigma_ray.demo.DemoConfig field (supervised=false) or a field of the SIGMA-MLP "
                   "run, the VideoMAE run or both, as in their experiments experiments/configs/demo_*.yaml "
                   "(sigma.objective.queue_length=64, pixels.objective.normalize_target=false, "
                   "runs.data.batch_size=4); repeatable")
    p.set_defaults(func=_demo)

    p = sub.add_parser("step-demo", help="one training step of the tiny model on a random clip (no Ray)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--prototypes", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_step_demo)

    # the data kinds live with their generator (sigma_ray/data/synthetic.py); importing it loads av, not Ray
    from sigma_ray.data.synthetic import KINDS

    p = sub.add_parser("make-synthetic", help="write the synthetic temporal video set (mp4 + train/val.csv)")
    p.add_argument("--out", required=True)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--val-per-class", type=int, default=10)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", default="patterns", choices=KINDS,
                   help="patterns: wall pattern x camera pan (the demo's); motion: object speed x direction over "
                        "natural-image-like textures; shapes: object shape x direction; fine: 8 directions 45 "
                        "degrees apart; count: 1-3 back-and-forth cycles per 16 frames (--classes 3 at most); "
                        "scenes: scene kind x pan; object: its motion; camera: 8 pans; arrow: paint/melt x direction")
    p.set_defaults(func=_make_synthetic)

    p = sub.add_parser("import", help="released SIGMA/VideoMAE or transformers VideoMAE weights -> sigma-ray files",
                       description="Read a checkpoint of the SIGMA/VideoMAE release (.pth: pretraining or fine-tuned) "
                                   "or of transformers' VideoMAE (a model directory, .safetensors or .bin; weights "
                                   "only) and write OUT/encoder.pt (eval, fine-tuning) and, for pretraining "
                                   "checkpoints, OUT/model.pt (train.init_from). Refuses what it cannot map exactly.")
    p.add_argument("src", help="checkpoint file, or a transformers model directory (config.json + weights)")
    p.add_argument("out", help="output directory")
    p.add_argument("--num-frames", type=int, default=None,
                   help="frames per clip when the checkpoint does not say (default 16)")
    p.add_argument("--img-size", type=int, default=None, help="frame size when the checkpoint does not say (224)")
    p.set_defaults(func=_import)

    p = sub.add_parser("export", help="a sigma-ray encoder -> transformers' VideoMAEModel (or the release layout)")
    p.add_argument("encoder", help="encoder.pt, run directory or checkpoint directory")
    p.add_argument("out", help="output directory")
    p.add_argument("--format", choices=("transformers", "release"), default="transformers",
                   help="transformers: config.json + model.safetensors for VideoMAEModel.from_pretrained; "
                        "release: checkpoint.pth for the SIGMA/VideoMAE code base")
    p.set_defaults(func=_export)

    # the prepare options live beside the job (sigma_ray/data/prepare.py); importing them loads av, not Ray
    from sigma_ray.data.prepare import add_arguments as prepare_arguments, run_prepare

    p = prepare_arguments(sub.add_parser(
        "prepare", help="turn a raw video data set into a training-ready copy (parallel Ray tasks)",
        description="Resize and re-encode every video (H.264, short key-frame interval, no audio) in parallel "
                    "Ray tasks; write VideoMAE lists and manifest.parquet. Resumable: a rerun skips finished "
                    "videos."))
    p.set_defaults(func=run_prepare)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
