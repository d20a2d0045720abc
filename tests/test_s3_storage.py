"""Run directories on object storage, against a real S3-compatible server: moto's server mode on 127.0.0.1,
which pyarrow (Ray Train's checkpoints, the run's files) and boto3 (the run directory's lock object) reach over
HTTP as they would reach S3, through the standard ``AWS_ENDPOINT_URL`` and credentials variables.

One moto server and one Ray head (its workers inherit the same variables) serve the module. A run is trained with
``--storage-path s3://...`` by ``experiments/pretrain.py`` in a subprocess, its driver SIGKILLed after a
checkpoint and the same command run again; the finished run is evaluated from ``s3://``, its newest checkpoint
corrupted and the run continued past it; a one-trial smoke sweep runs with an ``s3://`` storage path and an SQLite
study; and the lock object refuses a second start and gives way to a stale one.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "configs" / "local_tiny.yaml"
BUCKET = "sigma-runs"
RUNS = f"s3://{BUCKET}/runs"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with the bucket made; the AWS variables that point clients at it are set in
    this process for the module (and given to every Ray node and driver below)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from test_cluster import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # one line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield {"env": env, "client": client}
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(scope="module")
def head(s3, tmp_path_factory):
    """One Ray node (2 CPUs, the dashboard on for Tune over Train) whose workers inherit the S3 variables."""
    from ray_nodes import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("s3_ray"), {**os.environ, **s3["env"]}, head_cpus=2)
    try:
        cluster.wait_for(1)
        yield cluster
    finally:
        cluster.stop()


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def rows(client, key: str) -> list[dict]:
    try:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    except client.exceptions.NoSuchKey:
        return []
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def pretrain_cmd(synthetic: dict, name: str, *overrides: str) -> list[str]:
    """experiments/pretrain.py, tiny model: 2 workers x batch 2 on 24 videos -> 6 steps per epoch."""
    sets = ["synthetic=false", f"data.train_list={synthetic['train']}", f"data.val_list={synthetic['val']}",
            f"data.root={synthetic['root']}", "data.batch_size=2", "data.num_actors_max=1",
            "data.actor_num_cpus=0.25", "train.num_workers=2", "train.cpus_per_worker=0.25", "train.epochs=2",
            "train.steps_per_epoch=null", "train.warmup_epochs=0.5", "train.log_every=2",
            "train.checkpoint_every=2", "train.keep_checkpoints=4", "objective.num_prototypes=32", *overrides]
    return [sys.executable, str(ROOT / "experiments" / "pretrain.py"), "--config", str(TINY), "--name", name,
            "--storage-path", RUNS, *(a for s in sets for a in ("--set", s))]


def driver_env(head) -> dict[str, str]:
    return {**head.env, "RAY_ADDRESS": head.address}


def run_driver(cmd: list[str], env: dict, log: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    with log.open("w") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)
    return proc


# ------------------------------------------------------------------------------------------------------- lock

def test_a_second_start_on_a_locked_s3_run_is_refused_and_a_stale_lock_is_taken_over(s3, tiny_synthetic, capsys):
    """The lock object: a live owner refuses a second `pretrain` before Ray starts (naming the owner); the owner's
    heartbeat rewrites it; a lock whose heartbeat stopped is taken over, and its old owner sees it was."""
    from sigma_ray.runs.object_lock import ObjectRunLock
    from sigma_ray.runs.rundir import RunLockedError
    from sigma_ray.train.config import load_pretrain_config
    from sigma_ray.train.launch import pretrain

    client = s3["client"]
    config = load_pretrain_config(TINY, ["synthetic=false", f"data.train_list={tiny_synthetic['train']}",
                                         f"data.root={tiny_synthetic['root']}"], name="locked", storage_path=RUNS)
    with ObjectRunLock(f"{RUNS}/locked", heartbeat_s=0.5, stale_s=5) as owner:
        first = client.head_object(Bucket=BUCKET, Key="runs/locked/LOCK")
        t0 = time.monotonic()
        with pytest.raises(RunLockedError, match=rf"in use by another run \(host .*, pid {os.getpid()}"):
            pretrain(config)
        assert time.monotonic() - t0 < 30, "refused only after its wait, before any Ray work"
        assert client.head_object(Bucket=BUCKET, Key="runs/locked/LOCK")["ETag"] != first["ETag"], \
            "the owner's heartbeat rewrote the lock object"
        assert owner._etag is not None
    assert keys(client, "runs/locked/") == [], "the owner deleted its lock object; nothing else was written"

    # A lock whose owner stopped beating (another host: its pid cannot be checked) is stale after stale_s.
    stale_owner = ObjectRunLock(f"{RUNS}/stale", heartbeat_s=1, stale_s=2)
    stale_owner.__enter__()
    stale_owner._stop.set()   # its heartbeat stops, as a partitioned or frozen owner's would
    stale_owner._thread.join()
    stale_owner._owner["host"] = "elsewhere"
    stale_owner._etag = stale_owner._put(IfMatch=stale_owner._etag)   # now it reads as another host's lock
    with pytest.raises(RunLockedError, match="host elsewhere"):
        with ObjectRunLock(f"{RUNS}/stale", wait_s=0, heartbeat_s=1, stale_s=2):
            pass
    time.sleep(3.5)
    with ObjectRunLock(f"{RUNS}/stale", wait_s=0, heartbeat_s=1, stale_s=2):
        holder = json.loads(client.get_object(Bucket=BUCKET, Key="runs/stale/LOCK")["Body"].read())
        assert holder["pid"] == os.getpid() and holder["host"] != "elsewhere"
        assert "took over the lock" in capsys.readouterr().err
        stale_owner.__exit__(None, None, None)   # the old owner's delete is conditional: the new lock stays
        assert keys(client, "runs/stale/") == ["runs/stale/LOCK"]
    assert keys(client, "runs/stale/") == []


def test_an_s3_bucket_that_does_not_exist_fails_before_ray_naming_storage_path(s3, tiny_synthetic):
    from sigma_ray.infra.checks import ConfigError
    from sigma_ray.train.config import load_pretrain_config
    from sigma_ray.train.launch import pretrain

    config = load_pretrain_config(TINY, ["synthetic=false", f"data.train_list={tiny_synthetic['train']}",
                                         f"data.root={tiny_synthetic['root']}"], name="r",
                                  storage_path="s3://no-such-bucket/runs")
    with pytest.raises(ConfigError, match=r"storage_path s3://no-such-bucket/runs/r: .*NoSuchBucket"):
        pretrain(config)


# --------------------------------------------------------------------------------- train, kill, resume, eval

@pytest.fixture(scope="module")
def resumed_run(s3, head, tiny_synthetic, tmp_path_factory) -> dict:
    """`pretrain.py --storage-path s3://...` (checkpoints every 2 steps) SIGKILLed once step 6 is logged in S3;
    then the newest checkpoint that has its state.pt is corrupted in S3 (one byte flipped), and the same command
    runs again: it must take over the dead driver's lock, set the corrupt (and any half-uploaded) checkpoint
    aside and resume from the newest valid one. Returns what each attempt left."""
    client = s3["client"]
    logs = tmp_path_factory.mktemp("s3_run")
    cmd = pretrain_cmd(tiny_synthetic, "killed")
    with (logs / "first.log").open("w") as out:
        first = subprocess.Popen(cmd, env=driver_env(head), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.time() + 300
            while not any(r["step"] >= 6 for r in rows(client, "runs/killed/metrics.jsonl")):
                assert first.poll() is None, f"the first driver ended early:\n{(logs / 'first.log').read_text()}"
                assert time.time() < deadline, "no step 6 logged in S3"
                time.sleep(0.5)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
    time.sleep(5)   # the dead driver's workers stop within seconds; what they uploaded until then stays
    after_kill = keys(client, "runs/killed/")
    killed_rows = rows(client, "runs/killed/metrics.jsonl")
    complete = sorted({k.split("/")[2] for k in after_kill if k.endswith("/state.pt")})
    corrupt = complete[-1]
    body = bytearray(client.get_object(Bucket=BUCKET, Key=f"runs/killed/{corrupt}/state.pt")["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=f"runs/killed/{corrupt}/state.pt", Body=bytes(body))
    t0 = time.monotonic()
    second = run_driver(cmd, driver_env(head), logs / "second.log")
    return {"after_kill": after_kill, "killed_rows": killed_rows, "corrupt": corrupt, "complete": complete,
            "rc": second.returncode, "log": (logs / "second.log").read_text(), "seconds": time.monotonic() - t0}


def test_a_sigkilled_driver_on_s3_resumes_past_a_corrupt_checkpoint_with_one_row_per_step(s3, resumed_run):
    client = s3["client"]
    log = resumed_run["log"]
    assert resumed_run["rc"] == 0, log[-4000:]
    assert "runs/killed/LOCK" in resumed_run["after_kill"], "the killed driver's lock object stayed behind"
    assert "took over the lock" in log and "is gone" in log, \
        "the dead driver's lock (this host, pid gone) is taken over at once"
    corrupt = resumed_run["corrupt"]
    assert f"skipped {corrupt}: state.pt does not match the SHA-256" in log
    resume_step = int(resumed_run["complete"][-2].split("_")[1])
    assert resume_step >= 2 and f"resuming at step {resume_step}/12" in log
    names = keys(client, "runs/killed/")
    assert f"runs/killed/rejected_{corrupt}/state.pt" in names, "set aside, and kept"
    final = rows(client, "runs/killed/metrics.jsonl")
    assert [r["step"] for r in final] == [2, 4, 6, 8, 10, 12], "one row per step, the latest attempt's"
    assert {r["resumed_from_step"] for r in final if r["step"] > resume_step} == {resume_step}
    assert {"runs/killed/encoder.pt", "runs/killed/config.yaml", "runs/killed/checkpoint_00000012/state.pt",
            "runs/killed/checkpoint_00000012/manifest_rank1.json"} <= set(names)
    assert "runs/killed/LOCK" not in names, "the finished run released its lock object"
    assert any(n.startswith("runs/killed/tensorboard/") for n in names)


def test_evaluation_reads_the_run_from_s3(s3, resumed_run, tiny_synthetic, tmp_path):
    from sigma_ray.data.config import DataConfig
    from sigma_ray.eval.config import EvalConfig, KnnConfig
    from sigma_ray.eval.run import evaluate, load_any_encoder

    data = DataConfig(train_list=tiny_synthetic["train"], val_list=tiny_synthetic["val"],
                      root=tiny_synthetic["root"], num_classes=4, num_frames=8, sampling_rate=2, input_size=64,
                      decode_short_side=64)
    config = EvalConfig(encoder=f"{RUNS}/killed", protocols=("knn",), out_dir=str(tmp_path), use_ray=False,
                        knn=KnnConfig(ks=(3,)), data=data, device="cpu")
    config.validate()
    results = evaluate(config)
    assert results["encoder"] == f"{RUNS}/killed/encoder.pt"
    assert results["encoder_meta"]["step"] == 12
    assert 0 <= results["metrics"]["knn3_top1"] <= 100
    # a checkpoint on S3 too (its run's config.yaml one level up)
    encoder, source = load_any_encoder(f"{RUNS}/killed/checkpoint_00000010")
    assert source == f"{RUNS}/killed/checkpoint_00000010" and encoder.export_meta["step"] == 10


# --------------------------------------------------------------------------------------------------- sweep

def test_the_smoke_sweep_runs_with_an_s3_storage_path_and_an_sqlite_study(s3, head, tiny_synthetic, tmp_path):
    """One smoke trial (4 steps, 2 probes): Tune's experiment state, the trial's run directory (checkpoints,
    metrics) and the report on S3; the Optuna study in a local SQLite file (study_storage)."""
    import optuna

    study = tmp_path / "study.db"
    sets = [f"storage_path=s3://{BUCKET}/sweeps", "num_samples=1", "max_concurrent=1",
            f"study_storage=sqlite:///{study}", "pretrain.synthetic=false",
            f"pretrain.data.train_list={tiny_synthetic['train']}", f"pretrain.data.val_list={tiny_synthetic['val']}",
            f"pretrain.data.root={tiny_synthetic['root']}", "probe.train_per_class=null",
            "probe.val_per_class=null", "probe.num_classes=4", "probe.k=3"]
    cmd = [sys.executable, str(ROOT / "experiments" / "sweep_prototypes.py"), "--config",
           str(ROOT / "experiments" / "configs" / "sweep_local.yaml"), "--smoke",
           *(a for s in sets for a in ("--set", s))]
    proc = run_driver(cmd, driver_env(head), tmp_path / "sweep.log", timeout=400)
    log = (tmp_path / "sweep.log").read_text()
    assert proc.returncode == 0, log[-4000:]
    trials = optuna.load_study(study_name="sweep_local_smoke", storage=f"sqlite:///{study}").get_trials()
    assert len(trials) == 1 and trials[0].state == optuna.trial.TrialState.COMPLETE
    names = keys(s3["client"], "sweeps/sweep_local_smoke/")
    trial_runs = [n for n in names if "/trials/" in n and n.endswith("/metrics.jsonl")]
    assert len(trial_runs) == 1, names
    trial_dir = trial_runs[0].rsplit("/", 1)[0]
    assert f"{trial_dir}/checkpoint_00000004/state.pt" in names
    assert [r["step"] for r in rows(s3["client"], trial_runs[0])][-1] == 4
    assert any(n.endswith("experiment_state") or "experiment_state" in n for n in names), \
        "Tune's experiment state is on S3 (Tuner.restore reads it from there)"
