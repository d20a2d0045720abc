"""The in-process pretraining loop (sigma_ray.train.local) trains exactly as one Ray Train worker does: the same
initial weights, batches, schedule and steps, so a study run with it stands for a run of the demo's trainer."""
from __future__ import annotations

import json

import pytest
import torch

from sigma_ray.data.annotations import load_split
from sigma_ray.data.iterator import ClipIterator
from sigma_ray.train.local import pretrain_local, training_batches
from test_train_run import tiny_run


def test_the_stream_is_each_epochs_iterator_cut_to_whole_batches(tiny_synthetic):
    """Epoch e's batches are the plain iterator's epoch e (same rows, order, clips and masks), cut to
    ``rows_per_epoch`` rows, and the next epoch follows."""
    config = tiny_run(tiny_synthetic, "unused", "x", "train.num_workers=1").data
    records = load_split(config, "train")
    stream = training_batches(config, records, rows_per_epoch=20)
    for epoch in (0, 1):
        expected = list(ClipIterator(config, "train", epoch=epoch, as_torch=True))[:10]   # 20 rows / batch 2
        for want in expected:
            got = next(stream)
            assert torch.equal(got["clips"], want["clips"]) and torch.equal(got["masks"], want["masks"])
            assert torch.equal(got["video_ids"], want["video_ids"]) and set(got["epochs"].tolist()) == {epoch}


@pytest.mark.slow
def test_the_local_loop_repeats_a_ray_train_run(ray_session, tiny_synthetic, tmp_path):
    """One worker, SIGMA-MLP, 24 steps: every logged loss and perplexity of the Ray Train run equals the in-process
    loop's."""
    from sigma_ray.train.launch import pretrain

    config = tiny_run(tiny_synthetic, tmp_path, "local_vs_ray", "train.num_workers=1", "train.cpus_per_worker=0.5",
                      "train.torch_threads=1", "train.checkpoint_every=100")
    result = pretrain(config)
    ray_rows = [json.loads(line) for line in (tmp_path / "local_vs_ray" / "metrics.jsonl").read_text().splitlines()]
    _, local_rows = pretrain_local(config)
    assert [r["step"] for r in local_rows] == [r["step"] for r in ray_rows] and result.steps == 24
    for mine, theirs in zip(local_rows, ray_rows):
        for key in ("loss", "loss_video", "loss_proj", "perplexity_proj", "lr"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), (mine["step"], key)
