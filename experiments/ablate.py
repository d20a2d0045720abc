"""One-lever ablations of the demo's pretraining, in this process (no Ray): the study behind the demo's settings.

Each run is the demo's pretraining of one method and seed (``sigma_ray.demo.pretrain_config``, with demo overrides
``KEY=VALUE`` as ``sigma-ray demo --set`` takes them and run-config overrides ``cfg:SECTION.FIELD=VALUE``) on an
existing data set, trained by the in-process loop that repeats the Ray trainer's steps
(``sigma_ray.train.local``), then every frozen readout of its encoder (``sigma_ray.eval.readouts.frozen_probes``).
``random`` evaluates the initial weights instead. One JSON row per run is appended to ``--results``.

    python experiments/ablate.py run TAG METHOD DATA_DIR [KEY=VALUE | cfg:KEY=VALUE ...] --results rows.jsonl
    python experiments/ablate.py table rows.jsonl          # every run as a Markdown table

``METHOD`` is ``sigma_mlp``, ``videomae`` or ``random``; ``DATA_DIR`` holds train.csv / val.csv (and factors.json for
the factor probes), e.g. a set written by ``sigma-ray make-synthetic --kind motion --size 32 --train-per-class 200
--val-per-class 50 --seed 1`` (a tuning copy: the demo reports data seed 2). Torch runs on one thread per process,
so two runs share a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# the columns of the table: (result key, title)
COLUMNS = (("linear_top1", "linear"), ("knn20_top1", "kNN k=20"), ("time_linear_top1", "time-slice linear"),
           ("attentive_top1", "attentive"), ("effective_rank", "eff. rank"))


def run(tag: str, method: str, data_dir: str, overrides: list[str], results: Path, seed: int) -> dict:
    import torch

    from sigma_ray.demo import DemoConfig, demo_data, pretrain_config, with_overrides
    from sigma_ray.eval.features import eval_batches
    from sigma_ray.eval.readouts import frozen_probes
    from sigma_ray.infra.config import from_dict, merge_overrides, to_dict
    from sigma_ray.method.sigma import build_model
    from sigma_ray.train.local import pretrain_local

    torch.set_num_threads(1)
    demo = with_overrides(DemoConfig(data_dir=data_dir, torch_threads=1, seed=seed),
                          [o for o in overrides if not o.startswith("cfg:")])
    data = demo_data(demo)
    config = pretrain_config(demo, "sigma_mlp" if method == "random" else method, seed, data)
    config = from_dict(type(config), merge_overrides(to_dict(config), [o[4:] for o in overrides
                                                                       if o.startswith("cfg:")]))
    t0 = time.perf_counter()
    if method == "random":
        torch.manual_seed(seed)   # the initial weights every method's run starts from
        encoder, final = build_model(config.model, config.objective).encoder, {}
    else:
        model, rows = pretrain_local(config, log=lambda r: print(f"[ablate] {tag} step {r['step']}: loss "
                                                                 f"{r['loss']:.4f}", flush=True)
                                     if r["step"] % 400 == 0 else None)
        encoder, final = model.encoder, rows[-1]
    train_s = time.perf_counter() - t0
    probes = frozen_probes(encoder, list(eval_batches(config.data, "train")), list(eval_batches(config.data, "val")),
                           data.num_classes, data.factors, demo.linear_epochs, demo.attentive_epochs, seed)
    row = {"tag": tag, "method": method, "data": data.name, "seed": seed, "overrides": overrides,
           "probes": probes, "final": final, "train_s": train_s}
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def table(results: Path) -> str:
    """Every row of ``results`` as Markdown: the columns of :data:`COLUMNS`, each factor's linear probe, and the
    end of training (VideoMAE's pixel loss; SIGMA-MLP's projection-side prototype perplexity)."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    factors = sorted({k[:-len("_linear_top1")] for r in rows for k in r["probes"]
                      if k.endswith("_linear_top1") and not k.startswith("time_")})
    head = ["run", "set", "method", "levers", *(t for _, t in COLUMNS), *(f"{f} (linear)" for f in factors),
            "end of training"]
    lines = ["| " + " | ".join(head) + " |", "| --- " * len(head) + "|"]
    for r in rows:
        p, fin = r["probes"], r["final"]
        end = (f"pixel loss {fin['loss']:.3f}" if "loss_pixel" in fin else
               f"perplexity {fin['perplexity_proj']:.0f}" if "perplexity_proj" in fin else "")
        cells = [r["tag"], r["data"], r["method"], " ".join(r["overrides"]) or "(the demo's)",
                 *(f"{p[k]:.1f}" for k, _ in COLUMNS),
                 *(f"{p[f + '_linear_top1']:.1f}" if f + "_linear_top1" in p else "" for f in factors), end]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ablate.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train and evaluate one configuration")
    p.add_argument("tag")
    p.add_argument("method", choices=("sigma_mlp", "videomae", "random"))
    p.add_argument("data_dir")
    p.add_argument("overrides", nargs="*", help="demo KEY=VALUE, or cfg:SECTION.FIELD=VALUE for the run config")
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("table", help="every run of a results file as a Markdown table")
    p.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        row = run(args.tag, args.method, args.data_dir, args.overrides, args.results, args.seed)
        print(json.dumps(row["probes"]))
    else:
        print(table(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
