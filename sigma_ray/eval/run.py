"""``evaluate(config)``: load a pretrained encoder, run kNN / linear probe / fine-tuning, write the results.

Outputs in ``config.out_dir``: ``results.json`` (the returned dict: metrics in percent, sizes, timings, where the
encoder came from) and ``confusion_<protocol>.png`` per protocol.

The encoder may be an ``encoder.pt`` export (:mod:`sigma_ray.runs.export`), a run directory holding one (or,
without it, checkpoints), or a training checkpoint directory. A checkpoint is read (verified, weights-only)
through :mod:`sigma_ray.runs.checkpoint`, which imports no Ray: its model state holds the encoder under
``video.encoder.``, and the encoder's ModelConfig is the ``model`` section of ``config.yaml`` in the run
directory above the checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from sigma_ray.data.config import SHARED_SIZES, DataConfig
from sigma_ray.data.synthetic import ensure_synthetic
from sigma_ray.eval.config import EvalConfig
from sigma_ray.eval.features import features_for_split
from sigma_ray.eval.knn import knn_eval
from sigma_ray.eval.linear import linear_probe
from sigma_ray.eval.metrics import log
from sigma_ray.infra.checks import ConfigError
from sigma_ray.method.step import amp_dtype_for
from sigma_ray.method.vit import ModelConfig
from sigma_ray.runs.encoders import load_any_encoder

def check_shapes(model: ModelConfig, data: DataConfig) -> None:
    """The clips must be what the encoder was trained on (a mismatch is an error, never silently fixed)."""
    for data_field, model_field in SHARED_SIZES:
        if getattr(data, data_field) != getattr(model, model_field):
            raise ConfigError(f"data.{data_field} = {getattr(data, data_field)} but the encoder was trained with "
                              f"{model_field} = {getattr(model, model_field)}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device = {name!r} but CUDA is not available")
    return device


def read_class_names(config: EvalConfig) -> list[str]:
    """Class names for the plot axes: ``config.class_names``, else ``classes.txt`` beside the train list or in
    ``data.root``, else ``0 .. C-1``. Lines may be ``name`` or ``index name`` (UCF101's classInd.txt)."""
    n = config.data.num_classes
    folders = [Path(config.data.train_list).parent] if config.data.train_list else []
    folders += [Path(config.data.root)] if config.data.root else []
    candidates = [config.class_names] if config.class_names else [str(f / "classes.txt") for f in folders]
    for candidate in candidates:
        if Path(candidate).is_file():
            names = []
            for line in Path(candidate).read_text().splitlines():
                parts = line.split()
                if parts:
                    names.append(parts[-1] if len(parts) > 1 and parts[0].isdigit() else line.strip())
            if len(names) == n:
                return names
            if config.class_names:
                raise ConfigError(f"class_names = {candidate} lists {len(names)} classes, data.num_classes = {n}")
    return [str(i) for i in range(n)]


def confusion_matrix(targets: Sequence[int], preds: Sequence[int], num_classes: int) -> torch.Tensor:
    """Counts ``C x C`` int64: row = true class, column = predicted class."""
    t = torch.as_tensor(list(targets), dtype=torch.int64)
    p = torch.as_tensor(list(preds), dtype=torch.int64)
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).view(num_classes, num_classes)


def plot_confusion(targets: Sequence[int], preds: Sequence[int], class_names: Sequence[str], path: str | Path,
                   title: str | None = None) -> Path:
    """Write a row-normalized confusion matrix (each true class's rows sum to 1) as a PNG; returns the path.

    Uses matplotlib's Agg canvas directly, so it works headless and never changes the process's backend.
    Class names label the axes up to 40 classes; beyond that the ticks would be unreadable and are left off.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(class_names)
    counts = confusion_matrix(targets, preds, n).double()
    rows = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    accuracy = 100.0 * counts.diag().sum().item() / max(counts.sum().item(), 1)
    side = min(4 + 0.3 * n, 24)
    fig = Figure(figsize=(side, side * 0.9))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 40:
        ax.set_xticks(range(n), list(class_names), rotation=90, fontsize=8)
        ax.set_yticks(range(n), list(class_names), fontsize=8)
        if n <= 15:   # small matrices: print the counts too
            for i in range(n):
                for j in range(n):
                    if counts[i, j] > 0:
                        ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title + ': ' if title else ''}top-1 {accuracy:.1f}% ({int(counts.sum())} videos)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Run ``config.protocols`` on the encoder ``config.encoder``; write results.json and the confusion PNGs.

    Returns the results dict: ``metrics`` (``knn{k}_top1/5``, ``linear_top1/5``, ``finetune_top1/5``, percent),
    ``confusion`` (protocol -> PNG path), ``num_train`` / ``num_query`` (videos), ``seconds`` per stage,
    ``encoder`` (the file or checkpoint used) and its ``encoder_meta``.
    """
    t_start = time.perf_counter()
    ensure_synthetic(config.synthetic, config.data)
    device = resolve_device(config.device)
    encoder, source = load_any_encoder(config.encoder)
    check_shapes(encoder.config, config.data)
    encoder.to(device)
    data = config.data
    num_classes = data.num_classes
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    class_names = read_class_names(config)
    log(f"encoder {source} ({encoder.config.size}, {encoder.config.num_frames}x{encoder.config.img_size}px) on "
        f"{device}; protocols {', '.join(config.protocols)}")

    results: dict[str, Any] = {"encoder": str(source), "encoder_meta": dict(getattr(encoder, "export_meta", {})),
                               "protocols": list(config.protocols), "num_classes": num_classes,
                               "device": str(device), "metrics": {}, "confusion": {}, "seconds": {}}
    outputs: dict[str, dict] = {}
    if "knn" in config.protocols or "linear" in config.protocols:
        t0 = time.perf_counter()
        kwargs = dict(device=device, use_ray=config.use_ray, batch_size=config.feature_batch_size,
                      amp_dtype=amp_dtype_for("auto", device))
        train = features_for_split(encoder, data, "train", **kwargs)
        query = features_for_split(encoder, data, config.query_split, **kwargs)
        results["seconds"]["features"] = time.perf_counter() - t0
        results.update(num_train=len(train), num_query=len(query), query_split=config.query_split,
                       feature_dim=train.dim)
        log(f"features: {len(train)} train and {len(query)} {config.query_split} videos, "
            f"{train.dim}-d, {results['seconds']['features']:.1f} s")
        if "knn" in config.protocols:
            t0 = time.perf_counter()
            outputs["knn"] = knn_eval(train, query, num_classes, config.knn.ks, config.knn.temperature,
                                      config.knn.chunk)
            results["seconds"]["knn"] = time.perf_counter() - t0
        if "linear" in config.protocols:
            t0 = time.perf_counter()
            lc = config.linear
            outputs["linear"] = linear_probe(train, query, num_classes, lc.epochs, lc.lr, lc.optimizer,
                                             lc.batch_size, lc.weight_decay, config.seed, device)
            results["seconds"]["linear"] = time.perf_counter() - t0
    if "finetune" in config.protocols:
        from sigma_ray.eval.finetune import finetune

        t0 = time.perf_counter()
        outputs["finetune"] = finetune(encoder, config.finetune, data, num_classes, device=device,
                                       use_ray=config.use_ray, seed=config.seed)
        results["seconds"]["finetune"] = time.perf_counter() - t0
        results["finetune_history"] = outputs["finetune"].get("history", [])

    for name, out in outputs.items():
        metrics = {k: v for k, v in out.items() if isinstance(v, float)}
        results["metrics"].update(metrics)
        log(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        png = plot_confusion(out["targets"], out["predictions"], class_names, out_dir / f"confusion_{name}.png",
                             title=name)
        results["confusion"][name] = str(png)
    results["seconds"]["total"] = time.perf_counter() - t_start
    results["config"] = dataclasses.asdict(config)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    log(f"wrote {out_dir / 'results.json'} ({results['seconds']['total']:.1f} s)")
    return results


def evaluate_as_ray_task(config: EvalConfig, num_gpus: float = 1.0, num_cpus: float = 1.0) -> dict[str, Any]:
    """Run :func:`evaluate` as a Ray task holding ``num_gpus`` GPUs (on a cluster: on a GPU node, while the decode
    actors of ``use_ray`` run wherever ``data.actor_resources`` puts them). Connects to the running Ray
    (``RAY_ADDRESS``) or starts a local one. Paths in ``config`` must be readable and ``out_dir`` writable from
    the node the task lands on (shared storage)."""
    import ray

    from sigma_ray.infra.ray_session import init_ray

    init_ray(log_to_driver=True)   # the task's progress lines are its output
    task = ray.remote(num_gpus=num_gpus, num_cpus=num_cpus)(evaluate)
    return ray.get(task.remote(config))
