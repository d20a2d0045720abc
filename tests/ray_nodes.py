"""Real Ray nodes on this machine for the multi-node and object-storage tests: a head (`ray start --head --block`,
dashboard on 127.0.0.1) and worker nodes (`ray start --address ... --block`), each a raylet of its own with the
resources a test gives it, every port chosen below the ephemeral range (tests/test_cluster.py's free_port), so
they never collide with the session's Ray or another agent's. Stopping one stops only its own processes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from test_cluster import _alive, _process_tree, _stop, free_port

RAY = str(Path(sys.executable).with_name("ray"))


def _agent_ports() -> list[str]:
    """The per-node ports Ray otherwise takes at fixed defaults (two nodes on one host would clash)."""
    return [f"{flag}={free_port()}" for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                                 "--metrics-export-port", "--runtime-env-agent-port")]


class LocalCluster:
    """A head plus worker nodes on this host. ``env`` is every node's environment (their workers inherit it);
    :attr:`address` is what a driver's ``RAY_ADDRESS`` takes, :attr:`dashboard` the state API's address."""

    def __init__(self, log_dir: Path, env: dict[str, str], head_cpus: float = 0, head_resources: dict | None = None):
        from sigma_ray.infra.ray_compat import node_ip_address

        # unique (it marks every process of this cluster) and short (Ray's socket paths stay under 108 bytes)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="sigma-ray-mn-", dir="/tmp"))
        self.log_dir = log_dir
        self.env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
        # as sigma_ray.ray_session.init_ray does for a local Ray: a run starts ~10 worker processes at once
        self.env.setdefault("RAY_worker_maximum_startup_concurrency", "8")
        self.env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        port, dash = free_port(), free_port()
        self.address = f"{node_ip_address()}:{port}"
        self.dashboard = f"http://127.0.0.1:{dash}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.lost: dict[str, subprocess.Popen] = {}   # nodes killed by kill_raylet
        self._logs = []
        self._start("head", ["--head", f"--port={port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}",
                             f"--temp-dir={self.temp_dir}"], head_cpus, head_resources or {})
        try:
            self.wait_for(1)
        except Exception:
            self.stop()
            raise

    def _start(self, name: str, args: list[str], cpus: float, resources: dict) -> None:
        log = open(self.log_dir / f"{name}.log", "w")
        self._logs.append(log)
        self.nodes[name] = subprocess.Popen(
            [RAY, "start", "--block", *args, f"--num-cpus={cpus}", f"--resources={json.dumps(resources)}",
             "--object-store-memory=80000000", "--disable-usage-stats", *_agent_ports()],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def add_node(self, name: str, cpus: float, resources: dict | None = None) -> None:
        """Start worker node ``name`` and wait until it is alive (its log is ``<log_dir>/<name>.log``). One at a
        time, after the head: a node started before the head's GCS answered timed out on a loaded machine."""
        self._start(name, [f"--address={self.address}", f"--temp-dir={self.temp_dir}"], cpus, resources or {})
        self.wait_for(len(self.nodes))

    def alive_nodes(self) -> list[dict]:
        """The alive nodes the GCS knows (ray.util.state's NodeState dicts: node_id, resources_total...)."""
        from ray.util.state import list_nodes

        return [dataclasses.asdict(n) for n in list_nodes(address=self.dashboard, raise_on_missing_output=False)
                if n.state == "ALIVE"]

    def wait_for(self, count: int, timeout_s: float = 120) -> list[dict]:
        """Wait until ``count`` nodes are alive; returns them."""
        deadline = time.time() + timeout_s
        while True:
            for name, proc in self.nodes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"node {name} exited:\n{(self.log_dir / f'{name}.log').read_text()[-3000:]}")
            try:
                nodes = self.alive_nodes()
                if len(nodes) >= count:
                    return nodes
            except Exception:  # noqa: BLE001 - the dashboard is not up yet
                pass
            if time.time() > deadline:
                raise TimeoutError(f"{count} Ray nodes were not alive after {timeout_s} s")
            time.sleep(1)

    def kill_raylet(self, name: str) -> int:
        """SIGKILL node ``name``'s raylet (a child of its `ray start --block`), as a machine that dies takes it
        down; returns its pid. The node's worker processes exit once their raylet is gone."""
        proc = self.nodes.pop(name)
        self.lost[name] = proc
        for pid in _process_tree(proc.pid, "\0"):   # "\0" matches no command line: by parentage only
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if cmd.endswith(b"/raylet") and _alive(pid):
                os.kill(pid, signal.SIGKILL)
                return pid
        raise LookupError(f"node {name} has no raylet")

    def stop(self) -> None:
        """Stop every node this cluster started (worker nodes first), and only those."""
        nodes = {**self.lost, **self.nodes}
        for name in [n for n in nodes if n != "head"] + ["head"]:
            _stop(nodes[name], str(self.temp_dir))
        for log in self._logs:
            log.close()
        import shutil

        shutil.rmtree(self.temp_dir, ignore_errors=True)
