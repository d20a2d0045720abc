"""The embedded demo (``make demo`` / ``sigma-ray demo``): does SIGMA learn, on a laptop CPU, in minutes?

1. Writes the synthetic temporal set (classes differ only in motion; see :mod:`sigma_ray.data.synthetic`).
2. Pretrains the ``tiny`` model twice on the local Ray, at equal compute (same clips, steps, batch, masks,
   schedule and initial weights): SIGMA-MLP and the VideoMAE pixel baseline. A kNN probe runs every
   ``probe_every`` steps inside the training loop.
3. Evaluates both encoders and a randomly initialized one (the same initial weights the two runs started from)
   by kNN and linear probe on the validation split.
4. Prints the table and writes ``report.md`` with plots: loss curves, prototype usage, kNN accuracy during
   training, and a strip of frames with their tube mask and per-token prototype assignments.

Everything lands in ``out_dir`` (default ``runs/demo``): ``synthetic/``, one run directory per method,
``results.json``, ``report.md`` and the PNGs. Running it again reuses the finished runs (their checkpoints).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sigma_ray.config import ConfigError, check_range, from_dict
from sigma_ray.data.config import DataConfig
from sigma_ray.eval.features import Features, eval_batches, extract_features
from sigma_ray.eval.knn import KnnProbe, knn_eval
from sigma_ray.eval.linear import linear_probe
from sigma_ray.eval.metrics import single_thread
from sigma_ray.train.config import PretrainConfig

METHODS = {"sigma_mlp": "SIGMA-MLP", "videomae": "VideoMAE (pixels)", "random": "random init"}


@dataclass(frozen=True)
class DemoConfig:
    """The demo's knobs. Defaults finish in about 10 minutes on a 2-core CPU.

    ``scene_pool``: backgrounds and objects are drawn from this many, so with ~one per video the val clips show
    scenes the encoder never saw, and only motion is shared between a class's videos.

    Compute per method: ``steps x batch_size`` clips of ``num_frames x size x size``; the two pretraining runs see
    the same clips with the same masks (each seeded by video and epoch), in epochs shuffled the same way.
    """

    out_dir: str = "runs/demo"
    camera: bool = True                   # classes = camera pan directions (every token sees the motion)
    scene_pool: int = 512                 # backgrounds/objects to draw from: about one per video
    num_classes: int = 8
    train_per_class: int = 40
    val_per_class: int = 20
    video_frames: int = 32
    size: int = 64
    num_frames: int = 8
    sampling_rate: int = 2
    batch_size: int = 8
    steps: int = 600
    warmup_steps: int = 60
    base_lr: float = 0.024                # x batch 8 / 256 = 7.5e-4 peak
    num_prototypes: int = 32              # ~380 masked tokens per batch: a few per prototype (as in the paper)
    temperature: float = 0.1
    sinkhorn_iterations: int = 10
    mask_ratio: float = 0.75
    probe_every: int = 100
    linear_epochs: int = 100
    seed: int = 0

    def validate(self) -> None:
        check_range("num_classes", self.num_classes, 2, 10)
        check_range("train_per_class", self.train_per_class, 1)
        check_range("val_per_class", self.val_per_class, 1)
        check_range("steps", self.steps, 1)
        check_range("warmup_steps", self.warmup_steps, 0, self.steps)
        check_range("batch_size", self.batch_size, 1)
        check_range("num_prototypes", self.num_prototypes, 2)
        check_range("probe_every", self.probe_every, 1)
        check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, lo_open=True, hi_open=True)
        if self.num_classes * self.train_per_class < self.batch_size:
            raise ConfigError(f"train_per_class x num_classes = {self.num_classes * self.train_per_class} must "
                              f"hold at least one batch of batch_size = {self.batch_size}")


def pretrain_config(demo: DemoConfig, kind: str) -> PretrainConfig:
    """The tiny pretraining run of one method (``sigma_mlp`` or ``videomae``) on the demo's synthetic set."""
    root = str(Path(demo.out_dir, "synthetic").resolve())
    videos = demo.num_classes * demo.train_per_class
    steps_per_epoch = videos // demo.batch_size
    epochs = -(-demo.steps // steps_per_epoch)
    return from_dict(PretrainConfig, {
        "name": kind, "storage_path": str(Path(demo.out_dir).resolve()),
        "model": {"size": "tiny", "num_frames": demo.num_frames, "img_size": demo.size},
        "objective": {"kind": kind, "num_prototypes": demo.num_prototypes, "temperature": demo.temperature,
                      "sinkhorn_iterations": demo.sinkhorn_iterations},
        "data": {"root": root, "train_list": f"{root}/train.csv", "val_list": f"{root}/val.csv",
                 "num_classes": demo.num_classes, "num_frames": demo.num_frames,
                 "sampling_rate": demo.sampling_rate, "input_size": demo.size, "decode_short_side": demo.size,
                 "batch_size": demo.batch_size, "mask": {"ratio": demo.mask_ratio}, "seed": demo.seed,
                 "num_actors_min": 1, "num_actors_max": 1, "actor_num_cpus": 0.5},
        "train": {"epochs": epochs, "max_steps": demo.steps,
                  "warmup_epochs": epochs * demo.warmup_steps / demo.steps, "base_lr": demo.base_lr,
                  "min_lr": demo.base_lr / 100, "num_workers": 1, "cpus_per_worker": 0.5,
                  "log_every": 10, "checkpoint_every": demo.steps, "keep_checkpoints": 1,
                  "probe_every": demo.probe_every, "seed": demo.seed},
    })


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The run's ``metrics.jsonl`` rows; a resumed run's repeated steps keep their latest row."""
    rows: dict[int, dict] = {}
    for line in Path(run_dir, "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


def evaluate_encoders(encoders: dict[str, torch.nn.Module], data: DataConfig, num_classes: int,
                      linear_epochs: int, seed: int) -> dict[str, dict[str, float]]:
    """kNN (k = 20, 200; T = 0.07) and linear-probe accuracy (percent) of each encoder on the val split, with a
    train-split bank. The clips are decoded once and shared by all encoders."""
    train_batches, val_batches = list(eval_batches(data, "train")), list(eval_batches(data, "val"))
    results = {}
    for name, encoder in encoders.items():
        train, val = extract_features(encoder, train_batches), extract_features(encoder, val_batches)
        knn = knn_eval(train, val, num_classes, (20, 200))
        with single_thread():
            lin = linear_probe(train, val, num_classes, epochs=linear_epochs, seed=seed)
        results[name] = {"knn20_top1": knn["knn20_top1"], "knn200_top1": knn["knn200_top1"],
                         "linear_top1": lin["linear_top1"], "linear_top5": lin["linear_top5"],
                         "feature_std": float(_feature_spread(train))}
    return results


def _feature_spread(f: Features) -> float:
    """Mean per-dimension std of the L2-normalized features: near 0 means every video maps to the same point."""
    x = torch.nn.functional.normalize(f.feats, dim=1)
    return x.std(dim=0).mean().item()


def load_model(run_dir: str | Path, config: PretrainConfig):
    """The whole pretraining model (encoder, decoder, projection, prototypes) from the run's last checkpoint."""
    from sigma_ray.model.sigma import build_model
    from sigma_ray.train.checkpoint import load_model_state, newest_valid

    model = build_model(config.model, config.objective)
    model.load_state_dict(load_model_state(newest_valid(run_dir).path)[0])
    return model.eval()


def token_assignments(model, clip: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Prototype ids per token for one clip: the projection's (every token) and the video model's prediction
    (masked tokens; -1 on visible ones). ``clip``: uint8 ``T x H x W x C``; ``mask``: ``N`` bool."""
    from sigma_ray.model.vit import split_indices
    from sigma_ray.step import normalize_clips

    x = normalize_clips(clip[None])
    all_idx = torch.arange(mask.numel())[None]
    visible_idx, masked_idx = split_indices(mask[None])
    with torch.no_grad():
        model.prototypes.normalize_()
        target = model.prototypes(model.projection(x, all_idx)[0]).argmax(dim=1).numpy()
        pred = model.prototypes(model.video(x, visible_idx, masked_idx)[0]).argmax(dim=1).numpy()
    predicted = np.full(mask.numel(), -1)
    predicted[masked_idx[0].numpy()] = pred
    return target, predicted


def plot_curves(runs: dict[str, list[dict]], out: Path) -> dict[str, str]:
    """loss.png (each method's loss), usage.png (SIGMA's prototype usage perplexity) and knn.png (kNN top-1
    during pretraining). Returns {plot name: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.4))
    for ax, (kind, rows) in zip(np.atleast_1d(axes), runs.items()):
        steps = [r["step"] for r in rows]
        for key in ("loss", "loss_video", "loss_proj"):
            if key in rows[0]:
                ax.plot(steps, [r[key] for r in rows], label=key)
        ax.set(title=METHODS[kind], xlabel="step", ylabel="loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    files["loss curves"] = "loss.png"
    plt.close(fig)

    if "sigma_mlp" in runs:
        rows = runs["sigma_mlp"]
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for key, label in (("perplexity_video", "video model's codes"), ("perplexity_proj", "projection's codes")):
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=label)
        ax.set(title="prototype usage (perplexity; 1 = collapse)", xlabel="step", ylabel="perplexity")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "usage.png", dpi=110)
        files["prototype usage"] = "usage.png"
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for kind, rows in runs.items():
        probed = [r for r in rows if "knn_top1" in r]
        ax.plot([r["step"] for r in probed], [r["knn_top1"] for r in probed], marker="o", label=METHODS[kind])
    ax.set(title="kNN top-1 on val during pretraining (k=20)", xlabel="step", ylabel="accuracy (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "knn.png", dpi=110)
    files["kNN during pretraining"] = "knn.png"
    plt.close(fig)
    return files


def plot_strip(model, data: DataConfig, out: Path, seed: int) -> str:
    """strip.png: one val clip's frames (first frame of each tubelet), the tube mask, the projection's prototype
    per token and the video model's predicted prototype for the masked tokens, coloured by prototype id."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sigma_ray.masking import MaskGenerator

    batch = next(iter(eval_batches(dataclasses.replace(data, batch_size=1), "val")))
    clip = batch["clips"][0]
    grid = data.grid
    mask = torch.from_numpy(MaskGenerator(grid, data.mask)(np.random.default_rng(seed)))
    target, predicted = token_assignments(model, clip, mask)
    t, h, w = grid
    palette = plt.get_cmap("tab20")(np.arange(20))[:, :3]
    colour = lambda ids: np.where(ids[..., None] >= 0, palette[np.maximum(ids, 0) % 20], 1.0)  # noqa: E731
    up = clip.shape[1] // h
    fig, axes = plt.subplots(4, t, figsize=(1.6 * t, 6.8))
    rows = ("frame", "tube mask", "projection's prototype", "video model's prediction")
    for i in range(t):
        frame = clip[i * data.tubelet].numpy() / 255.0
        m = mask.view(t, h, w)[i].numpy().repeat(up, 0).repeat(up, 1)
        masked_frame = np.where(m[..., None], 0.25 + 0.1 * frame, frame)
        tgt = colour(target.reshape(t, h, w)[i]).repeat(up, 0).repeat(up, 1)
        prd = colour(predicted.reshape(t, h, w)[i]).repeat(up, 0).repeat(up, 1)
        for r, img in enumerate((frame, masked_frame, 0.85 * tgt + 0.15 * frame, prd)):
            axes[r, i].imshow(img)
            axes[r, i].set_xticks([])
            axes[r, i].set_yticks([])
            if i == 0:
                axes[r, i].set_ylabel(rows[r], fontsize=7)
    fig.suptitle("SIGMA-MLP on one val clip (colour = prototype id mod 20; white = visible, not predicted)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "strip.png", dpi=110)
    plt.close(fig)
    return "strip.png"


def format_table(results: dict[str, dict[str, float]], chance: float, seconds: dict[str, float]) -> str:
    """A markdown table of the results (percent)."""
    lines = ["| method | kNN k=20 top-1 | kNN k=200 top-1 | linear top-1 | linear top-5 | pretraining (s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for kind, r in results.items():
        secs = f"{seconds[kind]:.0f}" if kind in seconds else "-"
        lines.append(f"| {METHODS[kind]} | {r['knn20_top1']:.1f} | {r['knn200_top1']:.1f} | {r['linear_top1']:.1f} "
                     f"| {r['linear_top5']:.1f} | {secs} |")
    lines.append(f"| chance | {chance:.1f} | {chance:.1f} | {chance:.1f} | | |")
    return "\n".join(lines)


def run_demo(demo: DemoConfig = DemoConfig()) -> dict[str, Any]:
    """Run the whole demo (see the module docstring); returns the results dict also written to results.json."""
    from sigma_ray.data.synthetic import make_synthetic
    from sigma_ray.ray_session import init_ray
    from sigma_ray.model.sigma import build_model
    from sigma_ray.train.launch import pretrain

    demo.validate()
    t_start = time.perf_counter()
    out = Path(demo.out_dir).resolve()
    root = out / "synthetic"
    if not (root / "train.csv").is_file():
        print(f"[demo] writing the synthetic set ({demo.num_classes} {'camera' if demo.camera else 'object'}-motion "
              f"classes) to {root}", flush=True)
        make_synthetic(root, num_classes=demo.num_classes, train_per_class=demo.train_per_class,
                       val_per_class=demo.val_per_class, frames=demo.video_frames, size=demo.size, seed=demo.seed,
                       pool=demo.scene_pool, camera=demo.camera)
    # The dashboard: to watch the runs, and Ray Train V2's placement-group cleaner queries its state API.
    init_ray(include_dashboard=True)
    configs = {kind: pretrain_config(demo, kind) for kind in ("sigma_mlp", "videomae")}
    data = configs["sigma_mlp"].data
    probe = KnnProbe(data, demo.num_classes, k=20)

    seconds, runs, models = {}, {}, {}
    for kind, config in configs.items():
        print(f"[demo] pretraining {METHODS[kind]}: {demo.steps} steps x {demo.batch_size} clips", flush=True)
        t0 = time.perf_counter()
        result = pretrain(config, probe=probe)
        seconds[kind] = time.perf_counter() - t0
        runs[kind] = read_metrics(result.run_dir)
        models[kind] = load_model(result.run_dir, config)

    torch.manual_seed(demo.seed)  # the initial weights both runs started from (the trainer seeds the same way)
    random_model = build_model(configs["sigma_mlp"].model, configs["sigma_mlp"].objective)
    encoders = {"sigma_mlp": models["sigma_mlp"].encoder, "videomae": models["videomae"].encoder,
                "random": random_model.encoder.eval()}
    print("[demo] evaluating: kNN and linear probe on the val split", flush=True)
    results = evaluate_encoders(encoders, data, demo.num_classes, demo.linear_epochs, demo.seed)

    plots = plot_curves(runs, out)
    plots["frames, mask and prototype assignments"] = plot_strip(models["sigma_mlp"], data, out, demo.seed)
    chance = 100.0 / demo.num_classes
    table = format_table(results, chance, seconds)
    total = time.perf_counter() - t_start
    summary = {"config": dataclasses.asdict(demo), "results": results, "pretrain_seconds": seconds,
               "total_seconds": total, "chance": chance}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    verdict = compare(results)
    write_report(out / "report.md", demo, table, verdict, plots, total)
    print("\n" + table + f"\n\n{verdict}\n[demo] {total / 60:.1f} min; report: {out / 'report.md'}", flush=True)
    return summary


def compare(results: dict[str, dict[str, float]]) -> str:
    """One sentence on what the table shows: SIGMA-MLP's linear-probe accuracy against the other two."""
    sigma = results["sigma_mlp"]["linear_top1"]
    parts = []
    for kind in ("random", "videomae"):
        diff = sigma - results[kind]["linear_top1"]
        side = "above" if diff > 0 else "below" if diff < 0 else "level with"
        parts.append(f"{abs(diff):.1f} points {side} {METHODS[kind]}")
    return f"SIGMA-MLP's linear probe is {parts[0]} and {parts[1]}."


def write_report(path: Path, demo: DemoConfig, table: str, verdict: str, plots: dict[str, str],
                 total_s: float) -> None:
    n_train, n_val = demo.num_classes * demo.train_per_class, demo.num_classes * demo.val_per_class
    lines = [
        "# sigma-ray demo", "",
        f"The `tiny` video ViT pretrained for {demo.steps} steps x {demo.batch_size} clips "
        f"({demo.num_frames} frames at {demo.size}x{demo.size}, tube masks at ratio {demo.mask_ratio}) on the "
        f"synthetic {'camera-pan' if demo.camera else 'object-motion'} set ({demo.num_classes} classes that differ "
        f"only in motion, {n_train} train / {n_val} val videos), once with "
        f"SIGMA-MLP (K = {demo.num_prototypes} prototypes, temperature {demo.temperature}, "
        f"{demo.sinkhorn_iterations} Sinkhorn iterations) and once with the VideoMAE pixel target, at equal "
        "compute: the same clips, masks, schedule and initial weights. 'random init' is those initial weights.",
        "", "Accuracy on the val split in percent (kNN: bank from the train split, T = 0.07; linear: "
        f"BatchNorm + linear head, {demo.linear_epochs} epochs of SGD on frozen mean-pooled features):", "",
        table, "", verdict, "", f"Total time {total_s / 60:.1f} min.", ""]
    for title, file in plots.items():
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    path.write_text("\n".join(lines))
