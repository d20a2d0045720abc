"""The cluster files: Ray's own offline validation, broken copies rejected, and the shipped experiment configs'
resource requests fit the node types (pure arithmetic, plus one run of Ray's fake multi-node autoscaler)."""
from __future__ import annotations

import copy
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from sigma_ray.cluster import (ClusterConfigError, check_placement, experiment_request, load_cluster_config, main,
                               node_type_table, plan_placement, validate_cluster_config)
from sigma_ray.train.config import load_pretrain_config

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster.yaml"
LOCAL = ROOT / "cluster.local.yaml"
# the pretraining experiments (evaluation and sweep configs are other kinds)
PRETRAIN_CONFIGS = sorted(p for p in (ROOT / "experiments" / "configs").glob("*.yaml")
                          if not p.name.startswith(("eval_", "sweep_")))
# The README's command: python experiments/pretrain.py --config experiments/configs/k400_vitb.yaml --num-workers 16
README_NUM_WORKERS = {"k400_vitb.yaml": 16}


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _gpu_configs() -> list[Path]:
    return [p for p in PRETRAIN_CONFIGS if load_pretrain_config(p).train.use_gpu]


GPU_CONFIGS = _gpu_configs()


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=lambda p: p.name)
def test_cluster_file_passes_ray_validation(path):
    cfg = load_cluster_config(path)
    assert cfg["head_node_type"] in cfg["available_node_types"]
    # the project is installed from the working tree shipped by file_mounts
    assert "." in cfg["file_mounts"].values()
    assert any("pip install" in c and "-e ~/sigma-ray" in c for c in cfg["setup_commands"])
    assert any("torch" in c and "pip install" in c for c in cfg["setup_commands"])


def test_aws_node_types_have_explicit_resources():
    cfg = load_cluster_config(AWS)
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    for name, t in types.items():
        assert "CPU" in t["resources"], f"{name}: CPU must be explicit so the autoscaler plans without credentials"
        assert t["node_config"].get("InstanceType"), name
    gpu = [n for n, t in types.items() if t["resources"].get("GPU", 0) > 0 and n != cfg["head_node_type"]]
    decode = [n for n, t in types.items() if t["resources"].get("decode_node", 0) > 0]
    assert gpu and decode and not set(gpu) & set(decode)
    assert all(types[n]["max_workers"] > 0 for n in gpu + decode)
    assert cfg["idle_timeout_minutes"] > 0
    assert "gpu" in cfg["docker"]["image"]


def _broken_aws() -> list[tuple[str, callable, str]]:
    def misspelled_top(c):
        c["max_worker"] = c.pop("max_workers")

    def misspelled_node_key(c):
        t = c["available_node_types"]["gpu_8x_a100"]
        t["min_worker"] = t.pop("min_workers")

    def misspelled_resources(c):
        t = c["available_node_types"]["cpu_decode"]
        t["resource"] = t.pop("resources")

    def head_not_a_type(c):
        c["head_node_type"] = "ray.head.gpu"

    def min_over_max(c):
        c["available_node_types"]["gpu_8x_a100"]["min_workers"] = 5  # its max_workers is 4

    def mins_over_cluster_max(c):
        c["max_workers"] = 2
        c["available_node_types"]["cpu_decode"]["min_workers"] = 2
        c["available_node_types"]["gpu_8x_a100"]["min_workers"] = 1

    def fractional_gpu(c):
        c["available_node_types"]["gpu_8x_a100"]["resources"]["GPU"] = 7.5

    def no_provider_type(c):
        del c["provider"]["type"]

    return [("misspelled top-level key", misspelled_top, "max_worker"),
            ("misspelled node-type key", misspelled_node_key, "min_worker"),
            ("misspelled resources", misspelled_resources, "resource"),
            ("head type not in node types", head_not_a_type, "head_node_type"),
            ("min_workers over max_workers", min_over_max, "min_workers = 5 exceeds max_workers = 4"),
            ("sum of min_workers over max_workers", mins_over_cluster_max, "max_workers"),
            ("fractional GPU count", fractional_gpu, "GPU"),
            ("provider without type", no_provider_type, "type")]


@pytest.mark.parametrize("what,breaks,message", _broken_aws(), ids=[b[0] for b in _broken_aws()])
def test_broken_copy_of_cluster_yaml_is_rejected(what, breaks, message):
    raw = _raw(AWS)
    validate_cluster_config(copy.deepcopy(raw))  # the intact file passes
    breaks(raw)
    with pytest.raises(ClusterConfigError) as e:
        validate_cluster_config(raw, name="broken")
    assert message in str(e.value)


def test_broken_copy_of_local_yaml_is_rejected():
    raw = _raw(LOCAL)
    validate_cluster_config(copy.deepcopy(raw))
    raw["provider"]["worker_ip"] = raw["provider"].pop("worker_ips")  # misspelled: Ray's local checks abort
    with pytest.raises(ClusterConfigError):
        validate_cluster_config(raw)
    raw = _raw(LOCAL)
    raw["setup_command"] = raw.pop("setup_commands")
    with pytest.raises(ClusterConfigError, match="setup_command"):
        validate_cluster_config(raw)


def test_load_rejects_a_file_that_is_not_yaml(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("cluster_name: [unclosed\n")
    with pytest.raises(ClusterConfigError, match="not valid YAML"):
        load_cluster_config(bad)


# -------------------------------------------------------------------------------------------- placement

DECODE = {"decode_node": 0.01}


@pytest.fixture(scope="module")
def aws():
    return load_cluster_config(AWS)


def test_placement_fits_with_explicit_numbers(aws):
    plan = plan_placement(aws, num_workers=16, cpus_per_worker=10, gpus_per_worker=1, actors=64, actor_cpus=1,
                          actor_resources=DECODE)
    assert plan.problems == []
    assert plan.training_nodes == {"gpu_8x_a100": 2}
    assert plan.decode_nodes == {"cpu_decode": 1}
    # 8 workers of 13 CPUs cannot share one 96-CPU node: 7 + 1 on two nodes, still within max_workers
    assert plan_placement(aws, 8, 13, 1, 0, 1).training_nodes == {"gpu_8x_a100": 2}


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_workers=33, cpus_per_worker=10, gpus_per_worker=1), "33 training workers"),     # 4 nodes x 8 GPUs
    (dict(num_workers=8, cpus_per_worker=97, gpus_per_worker=1), "no node type provides"),   # CPUs per worker
    (dict(num_workers=1, cpus_per_worker=1, gpus_per_worker=9), "no node type provides"),    # GPUs per worker
    (dict(num_workers=16, cpus_per_worker=13, gpus_per_worker=1), "16 training workers"),    # 7 per node
    (dict(actors=900, actor_cpus=1, actor_resources=DECODE), "900 decode actors"),           # 100 per node x 8
    (dict(actors=4, actor_cpus=1, actor_resources={"decode_nodes": 0.01}), "decode_nodes"),  # misspelled resource
    (dict(actors=1, actor_cpus=65, actor_resources=DECODE), "decode actor needs"),
], ids=["too-many-workers", "worker-cpus", "worker-gpus", "cpu-bound-workers", "too-many-actors",
        "unknown-resource", "actor-cpus"])
def test_placement_reports_what_does_not_fit(aws, kwargs, message):
    args = dict(num_workers=0, cpus_per_worker=1, gpus_per_worker=1, actors=0, actor_cpus=1, actor_resources=None)
    args.update(kwargs)
    if message == "16 training workers":
        # 16 workers of 13 CPUs: 7 per 96-CPU node, 3 nodes; allow only 2 GPU nodes
        aws = copy.deepcopy(aws)
        aws["available_node_types"]["gpu_8x_a100"]["max_workers"] = 2
    problems = check_placement(aws, **args)
    assert problems and message in problems[0], problems


def test_placement_counts_the_cluster_max_workers_and_the_head(aws):
    small = copy.deepcopy(aws)
    small["max_workers"] = 2  # both GPU nodes use up the cluster: no decode node left
    problems = check_placement(small, 16, 10, 1, 8, 1, DECODE)
    assert len(problems) == 1 and "decode actors" in problems[0]
    # a head with GPUs takes training workers without a worker slot
    small["available_node_types"]["ray.head.default"]["resources"] = {"CPU": 96, "GPU": 8}
    plan = plan_placement(small, 16, 10, 1, 8, 1, DECODE)
    assert plan.fits and plan.training_nodes == {"ray.head.default": 1, "gpu_8x_a100": 1}
    # a cluster with no GPU type at all
    del small["available_node_types"]["gpu_8x_a100"]
    small["available_node_types"]["ray.head.default"]["resources"] = {"CPU": 0}
    assert "no node type provides" in check_placement(small, 1, 1, 1, 0, 1)[0]


def test_experiment_request_reads_the_pretrain_config():
    """An experiment that omits the resource keys asks for what the run itself would: PretrainConfig's defaults."""
    from sigma_ray.infra.checks import ConfigError
    from sigma_ray.train.config import PretrainConfig

    defaults = PretrainConfig()
    assert experiment_request({}) == dict(
        num_workers=defaults.train.num_workers, cpus_per_worker=defaults.train.cpus_per_worker,
        gpus_per_worker=0.0, actors=defaults.data.num_actors_max, actor_cpus=defaults.data.actor_num_cpus,
        actor_resources={})
    assert experiment_request({})["actor_cpus"] == 0.5 and experiment_request({})["actors"] == 2
    assert experiment_request({"train": {"use_gpu": True}})["gpus_per_worker"] == 1.0
    raw = {"train": {"num_workers": 8, "use_gpu": True, "cpus_per_worker": 10},
           "data": {"num_actors_min": 4, "num_actors_max": 32, "actor_num_cpus": 1.5,
                    "actor_resources": {"decode_node": 0.01}}}
    assert experiment_request(raw, num_workers=16) == dict(
        num_workers=16, cpus_per_worker=10.0, gpus_per_worker=1.0, actors=32, actor_cpus=1.5,
        actor_resources={"decode_node": 0.01})
    with pytest.raises(ConfigError, match="num_actors_max"):
        experiment_request({"data": {"num_actors_min": 4, "num_actors_max": 2}})


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_shipped_gpu_config_fits_cluster_yaml(aws, path):
    config = load_pretrain_config(path)
    counts = {config.train.num_workers, README_NUM_WORKERS.get(path.name, config.train.num_workers)}
    for n in sorted(counts):
        request = experiment_request(config, num_workers=n)
        assert request["gpus_per_worker"] > 0
        plan = plan_placement(aws, **request)
        assert plan.problems == [], f"{path.name} with {n} workers: {plan.problems}"


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_shipped_gpu_config_actors_find_their_resources_on_prem(path):
    """On-prem nodes advertise custom resources through `ray start --resources`: the decode actors' must be there."""
    request = experiment_request(load_pretrain_config(path))
    local = load_cluster_config(LOCAL)
    table = node_type_table(local)
    for name, t in table.items():
        missing = set(request["actor_resources"]) - set(t["resources"])
        assert not missing, f"{LOCAL.name}: {name} start command does not advertise {missing}"
    assert check_placement(local, 0, 0, 0, request["actors"], 0, request["actor_resources"]) == []


def test_local_nodes_advertise_the_decode_resource():
    table = node_type_table(load_cluster_config(LOCAL))
    assert table["head"]["resources"] == {"decode_node": 1.0}
    assert table["worker"]["resources"] == {"decode_node": 1.0} and table["worker"]["max_workers"] >= 1


def test_command_line(tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"train": {"num_workers": 16, "use_gpu": True, "cpus_per_worker": 8},
                                   "data": {"num_actors_max": 64, "actor_resources": DECODE}}))
    assert main([str(AWS), str(exp)]) == 0
    assert "FITS" in capsys.readouterr().out
    assert main([str(AWS), str(exp), "--num-workers", "40"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


# ------------------------------------------------------------------ Ray's fake multi-node autoscaler


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A free TCP port below the kernel's ephemeral range. A port from ``bind(("", 0))`` is ephemeral, and every
    Ray worker's gRPC server binds port 0 too, so one of them could take it before ``ray start`` binds it (CI once
    failed so); ports below the range are never handed out that way."""
    lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    while True:
        port = rng.randrange(20000, lowest_ephemeral)
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port


def _process_tree(root: int, marker: str) -> set[int]:
    """``root`` and its descendants, plus processes whose command line names ``marker`` (our temp dir): the fake
    nodes' raylets outlive the monitor that spawned them."""
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            table[int(d)] = (ppid, cmd)
    found = {root} if root in table else set()
    grew = True
    while grew:
        grew = False
        for pid, (ppid, cmd) in table.items():
            if pid not in found and (ppid in found or marker in cmd):
                found.add(pid)
                grew = True
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop(head: subprocess.Popen, marker: str) -> None:
    """Stop only what this test started (never `ray stop`, which would kill other Ray sessions on the machine)."""
    pids = _process_tree(head.pid, marker)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids | _process_tree(head.pid, marker):
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _fake_cluster_config(cfg: dict, gcs_address: str) -> dict:
    """cluster.yaml's node types (same resources and counts) on Ray's `fake_multinode` provider."""
    head = cfg["head_node_type"]
    types = {}
    for name, t in cfg["available_node_types"].items():
        res = dict(t["resources"])
        if name != head:
            res["object_store_memory"] = 80 * 1024 * 1024  # keep each fake node's object store small
        # the fake provider knows its head as "ray.head.default"
        types["ray.head.default" if name == head else name] = {
            "resources": res, "node_config": {}, "min_workers": 0,
            "max_workers": t["max_workers"]}
    return {"cluster_name": "sigma-ray-fake", "max_workers": cfg["max_workers"], "upscaling_speed": 10.0,
            "idle_timeout_minutes": 5,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": gcs_address},
            "available_node_types": types, "head_node_type": "ray.head.default", "auth": {}, "docker": {},
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": []}


_DRIVER = textwrap.dedent("""
    import json, sys, time
    import ray
    from ray.util.placement_group import placement_group
    req = json.loads(sys.argv[2])
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    # Ray Train's worker group: one bundle per worker, PACK (its default strategy)
    train = placement_group([{"CPU": req["cpus_per_worker"], "GPU": req["gpus_per_worker"]}] * req["num_workers"],
                            strategy="PACK")
    train_ok = train.wait(timeout_seconds=float(sys.argv[3]))
    decode_ok = None
    if train_ok and req["actors"]:
        decode = placement_group([{"CPU": req["actor_cpus"], **req["actor_resources"]}] * req["actors"],
                                 strategy="PACK")
        decode_ok = decode.wait(timeout_seconds=float(sys.argv[3]))
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    print("RESULT " + json.dumps({"train": train_ok, "decode": decode_ok, "nodes": nodes}))
""")


def _fake_request() -> dict:
    k400 = ROOT / "experiments" / "configs" / "k400_vitb.yaml"
    if k400 in GPU_CONFIGS:
        return experiment_request(load_pretrain_config(k400), num_workers=README_NUM_WORKERS["k400_vitb.yaml"])
    return dict(num_workers=16, cpus_per_worker=8.0, gpus_per_worker=1.0, actors=64, actor_cpus=1.0,
                actor_resources=DECODE)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc to stop only its own processes")
def test_fake_multinode_autoscaler_places_the_pretraining_job(tmp_path):
    """`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...` with cluster.yaml's node types: the pretraining
    placement group (and the decode actors' resources) make the autoscaler launch fake GPU and decode nodes."""
    cfg = load_cluster_config(AWS)
    request = _fake_request()
    plan = plan_placement(cfg, **request)
    assert plan.fits, plan.problems

    from sigma_ray.infra.ray_compat import node_ip_address

    port = free_port()
    address = f"{node_ip_address()}:{port}"
    autoscaling = tmp_path / "fake.yaml"
    autoscaling.write_text(yaml.safe_dump(_fake_cluster_config(cfg, address)))
    # unique (it marks every process of this cluster) and short (Ray's socket paths must stay under 108 bytes)
    temp_dir = Path(tempfile.mkdtemp(prefix="sigma-ray-fake-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_FAKE_CLUSTER="1", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    head_res = cfg["available_node_types"][cfg["head_node_type"]]["resources"]
    ray_bin = str(Path(sys.executable).with_name("ray"))
    cmd = [ray_bin, "start", "--head", "--block", f"--port={port}", f"--autoscaling-config={autoscaling}",
           f"--num-cpus={head_res.get('CPU', 0)}", f"--num-gpus={head_res.get('GPU', 0)}",
           "--include-dashboard=false", f"--dashboard-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
           f"--temp-dir={temp_dir}", "--object-store-memory=100000000", "--disable-usage-stats"]
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while head.poll() is None and time.time() < deadline:  # wait for the GCS to listen, or the head to die
            try:
                socket.create_connection(address.rsplit(":", 1), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        assert head.poll() is None, f"ray start --head failed:\n{(tmp_path / 'head.log').read_text()[-3000:]}"
        # each placement group may wait 180 s: a fake node is a real raylet, and on a loaded 2-core machine the
        # autoscaler took over 60 s to start them (the wait ends as soon as the group is placed)
        out = subprocess.run([sys.executable, "-c", _DRIVER, address, json.dumps(request), "180"], env=env,
                             capture_output=True, text=True, timeout=420)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        assert lines, f"driver failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}\n" \
                      f"{(tmp_path / 'head.log').read_text()[-3000:]}"
        result = json.loads(lines[-1][len("RESULT "):])
        assert result["train"] is True, "the pretraining placement group was never created"
        assert result["decode"] in (True, None), "the decode actors' resources were never provided"
        gpu_type = next(iter(plan.training_nodes))
        gpu_res = cfg["available_node_types"][gpu_type]["resources"]
        gpu_nodes = [n for n in result["nodes"] if n.get("GPU", 0) == gpu_res["GPU"]]
        assert len(gpu_nodes) == plan.training_nodes[gpu_type]
        if request["actors"]:
            assert sum(1 for n in result["nodes"] if n.get("decode_node")) == sum(plan.decode_nodes.values())
    finally:
        _stop(head, str(temp_dir))
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
