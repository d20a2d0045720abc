"""A pretraining run spread over three real Ray nodes on this machine, and one of them lost mid-run.

The cluster (tests/ray_nodes.py): the head and a worker node ``gpu_b`` with 2 CPUs each stand for the GPU node
type (a training worker asks for 2 CPUs, so exactly one fits on each), and ``cpu_decode`` has 1 CPU and the
``decode_node`` resource that cluster.yaml's decode nodes advertise, which the decode actors request
(``data.actor_resources``). Each node is its own raylet with its own ports.

- Sinkhorn gathered across the two nodes (gloo over TCP between two raylets' workers) gives the codes one process
  computes on the whole batch (the reference of tests/test_train_run.py).
- ``experiments/pretrain.py`` with 2 workers: Ray's state API shows the training workers on two nodes and the
  decode actors on the CPU node. Then ``gpu_b``'s raylet is SIGKILLed and a node of the same kind started
  again: Ray Train restarts the worker group (``train.max_failures=1``) from the last checkpoint and the run ends
  at its last step with one metrics row per step.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "configs" / "local_tiny.yaml"
GPU_NODE = {"cpus": 2}                            # one training worker (2 CPUs) per node
DECODE_NODE = {"cpus": 1, "resources": {"decode_node": 1}}   # too few CPUs for a training worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray_nodes import LocalCluster

    nodes = LocalCluster(tmp_path_factory.mktemp("multinode"), dict(os.environ), head_cpus=GPU_NODE["cpus"])
    try:
        nodes.add_node("gpu_b", GPU_NODE["cpus"])
        nodes.add_node("cpu_decode", DECODE_NODE["cpus"], DECODE_NODE["resources"])
        yield nodes
    finally:
        nodes.stop()


_CODES_DRIVER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np, ray, ray.cloudpickle, ray.train, torch
    from ray.train.torch import TorchTrainer
    import test_train_run
    from sigma_ray.method.masking import MaskConfig, MaskGenerator
    from sigma_ray.method.sigma import ObjectiveConfig
    from sigma_ray.method.vit import ModelConfig

    out = sys.argv[1]
    mc, oc = ModelConfig(size="tiny", num_frames=8, img_size=64), ObjectiveConfig(num_prototypes=16)
    clips = torch.randn(4, 3, 8, 64, 64, generator=torch.Generator().manual_seed(1))
    mask = torch.from_numpy(MaskGenerator(mc.grid, MaskConfig(ratio=0.75)).batch(4, np.random.default_rng(0)))

    def loop(cfg):
        test_train_run._codes_loop(cfg)
        rank = ray.train.get_context().get_world_rank()
        Path(cfg["out"], f"node_rank{rank}.txt").write_text(ray.get_runtime_context().get_node_id())

    ray.init(logging_level="ERROR", log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(test_train_run)   # workers cannot import the tests
    TorchTrainer(loop, train_loop_config={"model": mc, "objective": oc, "clips": clips, "mask": mask, "out": out},
                 scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 2}),
                 run_config=ray.train.RunConfig(name="codes", storage_path=str(Path(out) / "ray"))).fit()
    torch.save({"clips": clips, "mask": mask}, Path(out) / "batch.pt")
""")


def driver_env(cluster) -> dict[str, str]:
    return {**cluster.env, "RAY_ADDRESS": cluster.address,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


def test_sinkhorn_gathered_across_two_nodes_equals_the_one_process_reference(cluster, tmp_path):
    import torch

    from sigma_ray.method.sigma import ObjectiveConfig
    from sigma_ray.method.vit import ModelConfig
    from test_train_run import seeded_model, soft_codes

    proc = subprocess.run([sys.executable, "-c", _CODES_DRIVER, str(tmp_path)], env=driver_env(cluster),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    nodes = {(tmp_path / f"node_rank{r}.txt").read_text() for r in range(2)}
    assert len(nodes) == 2, "the two workers ran on two different Ray nodes"
    batch = torch.load(tmp_path / "batch.pt", weights_only=True)
    cfg = {"model": ModelConfig(size="tiny", num_frames=8, img_size=64), "objective": ObjectiveConfig(num_prototypes=16)}
    model = seeded_model(cfg)
    single, scores = soft_codes(model, batch["clips"], batch["mask"])
    parts = [torch.load(tmp_path / f"codes_rank{r}.pt", weights_only=True) for r in range(2)]
    for side in ("video", "proj"):
        gathered = torch.cat([p[side] for p in parts])
        torch.testing.assert_close(gathered, single[side], atol=2e-5, rtol=1e-4)
        alone = model.loss.codes(scores[side][:2])   # not near-uniform codes by chance: one half alone differs
        assert (alone - single[side][:2]).abs().max() > 1e-3


def metrics_steps(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_run_across_nodes_places_its_actors_and_survives_losing_a_node(cluster, tiny_synthetic, tmp_path):
    from ray.util.state import list_actors

    sets = ["synthetic=false", f"data.train_list={tiny_synthetic['train']}", f"data.val_list={tiny_synthetic['val']}",
            f"data.root={tiny_synthetic['root']}", "data.batch_size=2", "data.num_actors_min=1",
            "data.num_actors_max=1", "data.actor_num_cpus=0.5", "data.actor_resources={decode_node: 0.01}",
            "train.num_workers=2", f"train.cpus_per_worker={GPU_NODE['cpus']}", "train.torch_threads=1",
            "train.epochs=2", "train.steps_per_epoch=null", "train.warmup_epochs=0.5", "train.log_every=2",
            "train.checkpoint_every=2", "train.keep_checkpoints=2", "train.max_failures=1",
            "objective.num_prototypes=32"]
    cmd = [sys.executable, str(ROOT / "experiments" / "pretrain.py"), "--config", str(TINY), "--name", "mn",
           "--storage-path", str(tmp_path / "runs"), *(a for s in sets for a in ("--set", s))]
    run_dir = tmp_path / "runs" / "mn"
    log_path = tmp_path / "driver.log"
    ids = {n["node_id"]: n for n in cluster.alive_nodes()}
    by_name = {"cpu_decode": next(i for i, n in ids.items() if n["resources_total"].get("decode_node")),
               "head": next(i for i, n in ids.items() if n["is_head_node"])}
    by_name["gpu_b"] = next(i for i in ids if i not in by_name.values())
    with log_path.open("w") as out:
        driver = subprocess.Popen(cmd, env=driver_env(cluster), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.time() + 300
            while not any(r["step"] >= 4 for r in metrics_steps(run_dir / "metrics.jsonl")):
                assert driver.poll() is None, f"the driver ended early:\n{log_path.read_text()[-4000:]}"
                assert time.time() < deadline, "no step 4 logged"
                time.sleep(0.5)
            # every actor of the cluster so far, dead ones included: the decode actors of the tiny set may
            # have decoded all of it (and ended) by now
            actors = [dataclasses.asdict(a) for a in list_actors(address=cluster.dashboard, limit=10000,
                                                                 raise_on_missing_output=False)]
            workers = [a for a in actors if a["class_name"] == "RayTrainWorker" and a["state"] == "ALIVE"]
            decoders = [a for a in actors if "MapWorker" in a["class_name"]]
            where = [(a["class_name"], a["state"], a["node_id"]) for a in actors]
            assert {a["node_id"] for a in workers} == {by_name["head"], by_name["gpu_b"]} and len(workers) == 2, \
                f"the two training workers on the two GPU-type nodes, one each: {where} on {by_name}"
            assert decoders and {a["node_id"] for a in decoders} == {by_name["cpu_decode"]}, \
                f"the decode actors on the CPU node: {where} on {by_name}"
            killed_at = max(r["step"] for r in metrics_steps(run_dir / "metrics.jsonl"))
            cluster.kill_raylet("gpu_b")                           # the node dies: its workers with it
            cluster.add_node("gpu_c", GPU_NODE["cpus"])            # and a node of the same kind comes back
            driver.wait(timeout=400)
        finally:
            if driver.poll() is None:
                driver.kill()
    log = log_path.read_text()
    assert driver.returncode == 0, log[-4000:]
    rows = metrics_steps(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12], "one row per step, the final step count"
    resumed = {r["resumed_from_step"] for r in rows if r["resumed_from_step"] > 0}
    assert len(resumed) == 1 and "resuming at step" in log, log[-3000:]
    redone = killed_at - resumed.pop()
    print(f"node lost after step {killed_at}; resumed from step {killed_at - redone}: {redone} step(s) redone")
    assert 0 <= redone <= 2 * 2   # at most the steps since the last checkpoint (checkpoint_every=2), plus the kill's lag
    from sigma_ray.runs.checkpoint import newest_valid

    assert newest_valid(run_dir).step == 12
