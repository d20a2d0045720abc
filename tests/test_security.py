"""What a Ray started the project's way exposes, and to whom (the README's security paragraph says exactly this).

Ray 2.60 cannot keep its gRPC servers on the loopback interface (``--node-ip-address=127.0.0.1`` is replaced by
the machine's address), so the guarantees are: the dashboard and job API listen on 127.0.0.1 only; token
authentication is on, and the GCS (where every client connects first) refuses a call without the token from any
address; no listener answers plain HTTP without the token except Ray's Prometheus metrics exporters (read-only
metrics: the dashboard's, the autoscaler's and each node agent's). The cluster files turn token authentication on
explicitly.
"""
from __future__ import annotations

import os
import shlex
import socket
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def listeners(processes) -> list[tuple[str, int, str]]:
    """(address, port, command) of every listening TCP socket of ``processes``."""
    found = []
    for p in processes:
        try:
            cmd = " ".join(p.cmdline()) or p.name()
            found += [(c.laddr.ip, c.laddr.port, cmd) for c in p.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    return found


def outside_address() -> str | None:
    """An address of this machine other than loopback (None when it has none)."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


def gcs_call(address: str, token: str | None):
    """``GetClusterId`` on the GCS at ``address``; returns the gRPC status code (OK when it answered)."""
    import grpc

    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")(b"", timeout=20, metadata=metadata)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()


def http_status(host: str, port: int, token: str | None = None) -> int | str:
    """The status of ``GET /api/version`` (an int), or what went wrong when the server is not plain HTTP."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/api/version", headers=headers),
                                    timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception as e:  # noqa: BLE001 - a gRPC server answers HTTP/1.1 with garbage or hangs up
        return type(e).__name__


def audit(processes, gcs_address: str, token: str) -> list[tuple[str, int, str]]:
    """Check a Ray's listening sockets as the module docstring says; returns those beyond loopback."""
    import grpc

    found = listeners(processes)
    assert found, "no listening socket found: the processes are not the Ray they should be"
    gcs_port = int(gcs_address.rsplit(":", 1)[1])
    hosts = ["127.0.0.1"] + ([outside_address()] if outside_address() else [])
    for host in hosts:
        assert gcs_call(f"{host}:{gcs_port}", None) == grpc.StatusCode.UNAUTHENTICATED, host
        assert gcs_call(f"{host}:{gcs_port}", "0" * 64) == grpc.StatusCode.UNAUTHENTICATED, host
    assert gcs_call(f"127.0.0.1:{gcs_port}", token) == grpc.StatusCode.OK
    outside = [(ip, port, cmd) for ip, port, cmd in found if ip not in LOOPBACK]
    for ip, port, cmd in outside:
        host = hosts[-1] if ip in ("::", "0.0.0.0") else ip.removeprefix("::ffff:")
        if http_status(host, port) == 200:   # only a Prometheus exporter may answer without the token
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
                body = r.read().decode(errors="replace")
            assert body.startswith("# HELP") or body.startswith("# TYPE"), \
                f"{cmd} answers HTTP without the token on {ip}:{port}, and not with metrics"
    return outside


def test_cluster_files_turn_token_auth_on_and_keep_the_dashboard_on_loopback():
    for name in ("cluster.yaml", "cluster.local.yaml"):
        cfg = yaml.safe_load((ROOT / name).read_text())
        starts = [part for key in ("head_start_ray_commands", "worker_start_ray_commands") for cmd in cfg[key]
                  for part in cmd.split(";") if "ray start" in part]
        assert len(starts) == 2, name
        for part in starts:
            tokens = shlex.split(part)
            assert tokens[tokens.index("ray") - 1] == "RAY_AUTH_MODE=token", f"{name}: {part}"
            assert not any(t.startswith("--dashboard-host") for t in tokens), f"{name}: {part}"
        assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token", name   # one token, every node


def test_the_session_ray_dashboard_less_refuses_callers_without_the_token(ray_session):
    """The Ray the tests share is started like every command's (sigma_ray.infra.ray_session.init_ray)."""
    me = psutil.Process()
    outside = audit(me.children(recursive=True), ray_session.get_runtime_context().gcs_address,
                    os.environ["RAY_AUTH_TOKEN"])
    assert any("gcs_server" in cmd for _, _, cmd in outside)     # what Ray cannot keep on loopback


def test_the_token_file_is_readable_by_its_owner_only(ray_session, tmp_path):
    """Ray writes ~/.ray/auth_token with the umask (0644 with 022): init_ray leaves it 0600, and the helper it uses
    changes only a file this user owns that others may read."""
    import stat

    from sigma_ray.infra.ray_session import restrict_token_file

    token = Path.home() / ".ray" / "auth_token"
    assert token.is_file() and stat.S_IMODE(token.stat().st_mode) == 0o600
    loose = tmp_path / "auth_token"
    loose.write_text("x" * 64)
    loose.chmod(0o644)
    assert restrict_token_file(loose) and stat.S_IMODE(loose.stat().st_mode) == 0o600
    assert not restrict_token_file(loose)                            # already private: left alone
    assert not restrict_token_file(tmp_path / "missing")
