"""The small-batch levers: SwAV's feature queue (one process and 2 real gloo processes), the prototype freeze,
the per-clip code diagnostic, and a checkpoint round trip that continues with the same queue."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sigma_ray.method.losses import SwappedPredictionLoss
from sigma_ray.method.masking import MaskConfig, MaskGenerator
from sigma_ray.method.queue import FeatureQueue
from sigma_ray.method.sigma import ObjectiveConfig, SigmaModel
from sigma_ray.method.sinkhorn import codes_per_clip, sinkhorn
from sigma_ray.method.step import normalize_clips, train_step
from sigma_ray.method.vit import ModelConfig, split_indices
from sigma_ray.runs.checkpoint import load_checkpoint, save_checkpoint

TINY = ModelConfig(size="tiny", num_frames=4, img_size=32, patch=8)


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def batch(seed: int, b: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    clips = rng.integers(0, 256, (b, TINY.num_frames, TINY.img_size, TINY.img_size, 3), dtype=np.uint8)
    masks = MaskGenerator(TINY.grid, MaskConfig(ratio=0.75)).batch(b, rng)
    return {"clips": torch.from_numpy(clips), "masks": torch.from_numpy(masks)}


def test_queue_keeps_the_newest_rows_first_and_drops_the_oldest():
    q = FeatureQueue(5)
    assert q.features() is None
    a, b = unit_rows(3, 4, 0), unit_rows(3, 4, 1)
    q.push(a)
    assert torch.equal(q.features(), a)
    q.push(b)
    assert torch.equal(q.features(), torch.cat([b, a[:2]]))
    q.push(unit_rows(7, 4, 2))           # more rows than the queue holds: only the first 5 of them stay
    assert torch.equal(q.features(), unit_rows(7, 4, 2)[:5])
    with pytest.raises(ValueError, match="length"):
        FeatureQueue(0)


def test_queued_codes_equal_plain_sinkhorn_over_queue_and_batch_restricted_to_the_batch():
    loss = SwappedPredictionLoss(16, sinkhorn_eps=0.05, sinkhorn_iterations=5)
    protos = unit_rows(16, 8, 0)
    queued, scores = unit_rows(40, 8, 1) @ protos.t(), unit_rows(12, 8, 2) @ protos.t()
    ref = sinkhorn(torch.cat([queued, scores]), 0.05, 5)[40:]
    assert torch.equal(loss.codes(scores, queued), ref)
    # and the queue changes the codes: without it the 12 tokens alone are equipartitioned
    assert not torch.allclose(loss.codes(scores), ref, atol=1e-3)


def test_model_uses_the_last_batches_features_against_the_current_prototypes():
    torch.manual_seed(0)
    obj = ObjectiveConfig(num_prototypes=16, feature_dim=32, queue_length=200, queue_start=1, sinkhorn_iterations=3,
                          projection_hidden=(64,))
    model = SigmaModel(TINY, obj).train()
    b1, b2, b3 = batch(1), batch(2), batch(3)

    def sides(b):  # the video model's and the projection's unit features for the masked tokens of a batch
        x = normalize_clips(b["clips"])
        vis, msk = split_indices(b["masks"])
        with torch.no_grad():
            return (F.normalize(model.video(x, vis, msk).flatten(0, 1), dim=1),
                    F.normalize(model.projection(x, msk).flatten(0, 1), dim=1))

    model(normalize_clips(b1["clips"]), b1["masks"])      # batch 0: before queue_start, only pushes
    assert model.queues["video"].filled == int(b1["masks"].sum()) and model.batches_seen == 1
    model(normalize_clips(b2["clips"]), b2["masks"])
    v1, p1 = sides(b1)
    v2, p2 = sides(b2)
    assert torch.allclose(model.queues["video"].features(), torch.cat([v2, v1]), atol=1e-6)
    assert torch.allclose(model.queues["proj"].features(), torch.cat([p2, p1]), atol=1e-6)
    v3, p3 = sides(b3)
    w = F.normalize(model.prototypes.weight.detach(), dim=1)
    out = model(normalize_clips(b3["clips"]), b3["masks"])
    for side, (q, new) in {"video": (torch.cat([v2, v1]), v3), "proj": (torch.cat([p2, p1]), p3)}.items():
        ref = sinkhorn(torch.cat([q @ w.t(), new @ w.t()]), obj.sinkhorn_eps, 3)[q.shape[0]:]
        assert torch.equal(out[f"codes_{side}"], ref.argmax(dim=1)), side
    assert model.queues["video"].filled == min(200, 3 * int(b1["masks"].sum()))


def test_queue_start_keeps_the_queue_out_of_the_first_batches():
    torch.manual_seed(0)
    obj = ObjectiveConfig(num_prototypes=16, feature_dim=32, queue_length=100, queue_start=3, projection_hidden=(64,))
    model = SigmaModel(TINY, obj).train()
    torch.manual_seed(0)
    plain = SigmaModel(TINY, ObjectiveConfig(num_prototypes=16, feature_dim=32, projection_hidden=(64,))).train()
    for i in range(4):
        b = batch(i)
        out, ref = (m(normalize_clips(b["clips"]), b["masks"]) for m in (model, plain))
        same = torch.equal(out["codes_proj"], ref["codes_proj"])
        assert same == (i < 3), i


def _queue_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        protos = unit_rows(16, 8, 0)
        loss = SwappedPredictionLoss(16, sinkhorn_eps=0.05, sinkhorn_iterations=5, gather=True)
        queued = unit_rows(30 + 10 * rank, 8, 10 + rank) @ protos.t()   # unequal queues and batches per rank
        scores = unit_rows(12 + 4 * rank, 8, 20 + rank) @ protos.t()
        torch.save(loss.codes(scores, queued), f"{out_dir}/codes{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_with_their_own_queues_equal_one_sinkhorn_over_every_queue_and_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_queue_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    protos = unit_rows(16, 8, 0)
    rows = [unit_rows(30, 8, 10), unit_rows(12, 8, 20), unit_rows(40, 8, 11), unit_rows(16, 8, 21)]
    ref = sinkhorn(torch.cat(rows) @ protos.t(), 0.05, 5)
    assert torch.allclose(torch.load(tmp_path / "codes0.pt", weights_only=True), ref[30:42], atol=1e-5)
    assert torch.allclose(torch.load(tmp_path / "codes1.pt", weights_only=True), ref[82:98], atol=1e-5)
    # a worker's codes differ from a Sinkhorn over its own queue and batch alone
    alone = sinkhorn(torch.cat(rows[:2]) @ protos.t(), 0.05, 5)[30:]
    assert not torch.allclose(torch.load(tmp_path / "codes0.pt", weights_only=True), alone, atol=1e-3)


def test_frozen_prototypes_stay_put_with_zero_gradients_then_learn():
    torch.manual_seed(0)
    model = SigmaModel(TINY, ObjectiveConfig(num_prototypes=16, feature_dim=32, freeze_prototypes=3,
                                             projection_hidden=(64,)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    start = F.normalize(model.prototypes.weight.detach().clone(), dim=1)
    for i in range(3):
        loss = model(normalize_clips(batch(i)["clips"]), batch(i)["masks"])["loss"]
        opt.zero_grad()
        loss.backward()
        grad = model.prototypes.weight.grad
        assert grad is not None and torch.count_nonzero(grad) == 0   # zero, not None: DDP needs a gradient
        assert model.projection.mlp[0].weight.grad.abs().sum() > 0   # the projection still learns
        opt.step()
    model.prototypes.normalize_()
    assert torch.allclose(model.prototypes.weight, start, atol=1e-6)
    train_step(model, batch(9), opt)
    model.prototypes.normalize_()
    assert not torch.allclose(model.prototypes.weight, start, atol=1e-4)


def test_codes_per_clip_closed_forms():
    assert codes_per_clip(torch.zeros(3, 10, dtype=torch.long)).item() == 1.0
    assert codes_per_clip(torch.arange(20).view(2, 10)).item() == 10.0
    assert codes_per_clip(torch.tensor([[3, 1, 3, 1], [2, 2, 2, 5]])).item() == 2.0


def test_a_resumed_model_continues_with_the_same_queue(tmp_path):
    obj = ObjectiveConfig(num_prototypes=16, feature_dim=32, queue_length=150, freeze_prototypes=2,
                          projection_hidden=(64,))

    def fresh():
        torch.manual_seed(0)
        model = SigmaModel(TINY, obj)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    model, opt = fresh()
    for i in range(3):
        train_step(model, batch(i), opt)
    assert model.batches_seen == 3
    save_checkpoint(tmp_path, step=3, model=model, optimizer=opt, extra={"queues": model.queue_state_dict()})
    resumed, opt2 = fresh()
    restored = load_checkpoint(tmp_path, resumed, opt2)
    resumed.batches_seen = restored.step          # as the trainer does (one batch per step here)
    resumed.load_queue_state_dict(restored.extra["queues"], "cpu")
    for side in ("video", "proj"):
        assert torch.equal(resumed.queues[side].features(), model.queues[side].features())
    a, b = train_step(model, batch(5), opt), train_step(resumed, batch(5), opt2)
    assert torch.equal(a["loss"], b["loss"])
    assert torch.equal(model.queues["proj"].features(), resumed.queues["proj"].features())
