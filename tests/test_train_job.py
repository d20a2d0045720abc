"""The job path: a real local head with the dashboard, `ray job submit` and JobSubmissionClient, /api/jobs/, Ray
Train's run state (/api/train/v2/runs/v1) and the job's dashboard page rendered in headless Chromium.

The head runs as `ray start --head --block` in a subprocess, so stopping it stops only this cluster (`ray stop`
would kill every Ray on the machine, including the test session's).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sigma_ray.runs.checkpoint import list_checkpoints
from sigma_ray.runs.rundir import read_jsonl

from auth_proxy import AuthProxy
from test_cluster import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """The README's local head (token authentication on, dashboard on 127.0.0.1) with the session's token; yields
    its URL, its Popen and the environment a client needs (RAY_AUTH_MODE=token sends the token)."""
    ray_bin = Path(sys.executable).parent / "ray"
    port, dash = free_port(), free_port()
    # Every port Ray would otherwise take by default: the session's own Ray (other tests) already holds those,
    # and a head whose dashboard agent cannot bind never accepts a job ("No available agent to submit job").
    ports = {flag: free_port() for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                            "--metrics-export-port", "--runtime-env-agent-port",
                                            "--ray-client-server-port")}
    env = {**os.environ, "RAY_AUTH_MODE": "token",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # the jobs' python
    temp_dir = tmp_path_factory.mktemp("ray_head")
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         f"--temp-dir={temp_dir}", "--disable-usage-stats", *(f"{k}={v}" for k, v in ports.items())],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{dash}"
    auth = {"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"}
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/version", headers=auth), timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"the local head did not start (exit {proc.poll()})")
            time.sleep(1)
    # The dashboard answers before the node's job agent is up ("No available agent to submit job"): submit a
    # no-op job until one is accepted and finishes.
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(url, headers=auth)
    while True:
        try:
            ready = client.submit_job(entrypoint="python -c pass")
            break
        except RuntimeError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("the local head's job agent did not come up")
            time.sleep(2)
    while client.get_job_status(ready) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        time.sleep(1)
    yield {"url": url, "env": env, "proc": proc, "port": port, "auth": auth}
    proc.terminate()  # --block: the head takes down the processes it started
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def job_args(synthetic: dict, storage: Path, name: str) -> list[str]:
    sets = [f"data.root={synthetic['root']}", f"data.train_list={synthetic['train']}",
            f"data.val_list={synthetic['val']}", "synthetic=false", "train.max_steps=4", "train.log_every=2",
            "train.checkpoint_every=2", "data.batch_size=2", "objective.num_prototypes=16",
            "data.actor_num_cpus=0.25", "train.cpus_per_worker=0.25"]
    args = ["python", "experiments/pretrain.py", "--config", "experiments/configs/local_tiny.yaml",
            "--name", name, "--storage-path", str(storage)]
    for s in sets:
        args += ["--set", s]
    return args


def check_run(run_dir: Path) -> None:
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint_00000002", "checkpoint_00000004"]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "encoder.pt").is_file() and (run_dir / "config.yaml").is_file()


def test_submit_with_the_cli_and_the_client_then_read_the_dashboard(head, tiny_synthetic, tmp_path, chromium):
    from ray.job_submission import JobStatus, JobSubmissionClient

    # 1. `ray job submit`, exactly as the README says (it waits for the job and streams its logs)
    ray_bin = str(Path(sys.executable).parent / "ray")
    cmd = [ray_bin, "job", "submit", "--address", head["url"], "--working-dir", str(ROOT),
           "--submission-id", "cli-job", "--"] + job_args(tiny_synthetic, tmp_path, "via_cli")
    out = subprocess.run(cmd, env=head["env"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "succeeded" in out.stdout.lower()
    assert "[sigma-ray] run via_cli: 4/4 steps" in out.stdout
    assert "[sigma-ray] step 4/4 (100.0%)" in out.stdout                 # rank 0's lines, relayed by the driver
    # Ray's own output stays in its logs; only the raylet's node-level messages (a worker killed for memory...)
    # still reach the driver, prefixed "(raylet)"
    lines = [line for line in out.stdout.splitlines() if "(raylet)" not in line]
    for noise in ("TrainingReport(", "Reporting training result", "(RayTrainWorker", "(TrainController",
                  "(SplitCoordinator", "WARNING"):
        assert not any(noise in line for line in lines), noise
    check_run(tmp_path / "via_cli")

    # 2. the Python client
    client = JobSubmissionClient(head["url"], headers=head["auth"])
    job_id = client.submit_job(entrypoint=" ".join(job_args(tiny_synthetic, tmp_path, "via_client")),
                               runtime_env={"working_dir": str(ROOT)}, submission_id="client-job")
    deadline = time.time() + 600
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                             JobStatus.STOPPED}:
        assert time.time() < deadline, "the job did not finish in 10 minutes"
        time.sleep(2)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "[sigma-ray] run via_client: 4/4 steps" in logs
    check_run(tmp_path / "via_client")
    # one config, seed and data set run twice: the same losses to the last bit (the training stream keeps its order)
    losses = lambda name: [r["loss"] for r in read_jsonl(tmp_path / name / "metrics.jsonl")]
    assert len(losses("via_cli")) == 2 and losses("via_cli") == losses("via_client")

    # 3. the dashboard's REST endpoint lists both jobs as succeeded
    with urllib.request.urlopen(urllib.request.Request(f"{head['url']}/api/jobs/", headers=head["auth"]),
                                timeout=10) as r:
        jobs = {j["submission_id"]: j for j in json.load(r)}
    assert jobs["cli-job"]["status"] == jobs["client-job"]["status"] == "SUCCEEDED"
    assert "experiments/pretrain.py" in jobs["client-job"]["entrypoint"]

    # 4. Ray Train's run state (pretrain turns its tracking on): each run by its name, finished, with its job
    # and its one worker's log file; the progress lines are in the job's log
    with urllib.request.urlopen(urllib.request.Request(f"{head['url']}/api/train/v2/runs/v1", headers=head["auth"]),
                                timeout=30) as r:
        runs = {run["name"]: run for run in json.load(r)["train_runs"]}
    for name, submission in (("via_cli", "cli-job"), ("via_client", "client-job")):
        run = runs[name]
        assert run["status"] == "FINISHED" and run["job_details"]["submission_id"] == submission
        workers = run["attempts"][-1]["workers"]
        assert [w["world_rank"] for w in workers] == [0] and workers[0]["log_file_path"]
    assert "[sigma-ray] step 4/4 (100.0%)" in client.get_job_logs("cli-job")

    # 5. the Ray dashboard's page of the finished job, rendered in headless Chromium: submission id, status,
    # the entrypoint with the run's name and the driver's log naming the run
    # the dashboard's API refuses requests without the token: the browser talks to it as a signed-in one would
    with AuthProxy(head["url"], head["auth"]) as dashboard:
        text = chromium.text(f"{dashboard}/#/jobs/cli-job", expect="Running entrypoint for job")
    assert "Submission ID cli-job" in text and "SUCCEEDED" in text and "--name via_cli" in text
    # the log viewer splits a line into highlighted tokens: compare without whitespace
    assert "[sigma-ray]runvia_cli:4stepson1worker(s)" in "".join(text.split())


def test_a_bad_config_fails_the_job_with_the_field_name(head, tmp_path):
    """A config error exits 2 with the field's name before any worker starts; the job is FAILED."""
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", head["url"],
           "--working-dir", str(ROOT), "--",
           "python", "experiments/pretrain.py", "--config", "experiments/configs/local_tiny.yaml",
           "--set", "data.mask.ratio=1.5", "--storage-path", str(tmp_path)]
    out = subprocess.run(cmd, env=head["env"], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "ratio" in out.stdout and "failed" in out.stdout.lower()
    assert not list(tmp_path.iterdir())


def test_the_local_head_exposes_only_what_the_readme_says(head):
    """The README's head: the dashboard and job API on 127.0.0.1 only, refusing requests without the token; the
    GCS refusing a call without it from any address; nothing else answering plain HTTP but metrics exporters."""
    import psutil

    from test_security import audit, http_status, listeners

    root = psutil.Process(head["proc"].pid)
    processes = [root] + root.children(recursive=True)
    dash = int(head["url"].rsplit(":", 1)[1])
    on_dash = [ip for ip, port, _ in listeners(processes) if port == dash]
    assert on_dash and set(on_dash) <= {"127.0.0.1"}
    assert http_status("127.0.0.1", dash) == 401
    assert http_status("127.0.0.1", dash, os.environ["RAY_AUTH_TOKEN"]) == 200
    audit(processes, f"127.0.0.1:{head['port']}", os.environ["RAY_AUTH_TOKEN"])
    cli = subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "list", "--address", head["url"]],
                         env={**head["env"], "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode != 0                                       # a client without the token is refused
