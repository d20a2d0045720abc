"""How much of the demo's mean-pooled features the class explains, and kNN on standardized features: why a
linear probe can find a class that a kNN misses (docs/studies/transfer.md, "What holds, and what does not").

    python experiments/pooled_variance.py DEMO_OUT_DIR [--data-kind motion]

For each seed of a finished ``sigma-ray demo`` run in DEMO_OUT_DIR, and each of SIGMA-MLP, VideoMAE and the random
initial weights: kNN k=20 top-1 on the mean-pooled val features (the demo's number), the same after standardizing
each feature with the train split's statistics, and the share of the train features' variance between the class
means (``sigma_ray.eval.metrics.class_variance_share``; labels that say nothing give about (C - 1) / (N - 1)).
One JSON line per encoder, then a Markdown table of the means over seeds.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from sigma_ray.demo import METHODS, DemoConfig, demo_data, pretrain_config
    from sigma_ray.eval.features import Features, eval_batches, extract_features
    from sigma_ray.eval.knn import knn_eval
    from sigma_ray.eval.metrics import class_variance_share
    from sigma_ray.method.sigma import build_model
    from sigma_ray.runs.encoders import load_model

    parser = argparse.ArgumentParser(prog="pooled_variance.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--data-kind", default="patterns", help="the demo's --data family (patterns, motion, ...)")
    args = parser.parse_args(argv)
    demo = DemoConfig(out_dir=str(args.out_dir), data_kind=args.data_kind)
    dataset = demo_data(demo)
    data = pretrain_config(demo, "sigma_mlp", data=dataset).data
    train_batches, val_batches = list(eval_batches(data, "train")), list(eval_batches(data, "val"))
    seeds = sorted(int(p.name.rsplit("seed", 1)[1]) for p in args.out_dir.glob("sigma_mlp_seed*"))
    rows = []
    for seed in seeds:
        config = pretrain_config(demo, "sigma_mlp", seed, dataset)
        torch.manual_seed(seed)  # the demo's random encoder: the initial weights of both runs
        encoders = {"random": build_model(config.model, config.objective).encoder.eval()}
        for kind in ("sigma_mlp", "videomae"):
            run = pretrain_config(demo, kind, seed, dataset)
            encoders[kind] = load_model(args.out_dir / f"{kind}_seed{seed}", run.model, run.objective).encoder
        for kind, encoder in encoders.items():
            train, val = extract_features(encoder, train_batches), extract_features(encoder, val_batches)
            mean, std = train.feats.mean(dim=0), train.feats.std(dim=0) + 1e-6
            z = lambda f: Features((f.feats - mean) / std, f.labels, f.video_ids)  # noqa: E731
            row = {"seed": seed, "method": kind,
                   "knn20_top1": knn_eval(train, val, dataset.num_classes, ks=(20,))["knn20_top1"],
                   "knn20_top1_standardized": knn_eval(z(train), z(val), dataset.num_classes, ks=(20,))["knn20_top1"],
                   "class_variance_share": 100 * class_variance_share(train.feats, train.labels)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    floor = 100 * (dataset.num_classes - 1) / (dataset.num_train - 1)
    print(f"\n{dataset.name}, seeds {seeds}; class share of uninformative labels: {floor:.2f}%\n")
    print("| method | kNN k=20 | kNN k=20, standardized features | class share of the variance (%) |")
    print("| --- | --- | --- | --- |")
    for kind in ("sigma_mlp", "videomae", "random"):
        mine = [r for r in rows if r["method"] == kind]
        mean = {k: sum(r[k] for r in mine) / len(mine) for k in mine[0] if k not in ("seed", "method")}
        print(f"| {METHODS[kind]} | {mean['knn20_top1']:.1f} | {mean['knn20_top1_standardized']:.1f} | "
              f"{mean['class_variance_share']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
