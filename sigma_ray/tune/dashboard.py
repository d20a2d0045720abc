"""``sigma-ray dashboard SWEEP_DIR``: optuna-dashboard on a sweep's Optuna study, live while the sweep runs.

The study holds what the sweep's trials did (:class:`sigma_ray.tune.sweep.SweepSearch` writes it): the sampled
parameters, every kNN probe score as an intermediate value at its optimizer step, ASHA's early stops as PRUNED
trials, and user attributes with the Tune trial id, the pretraining run directory and the last probe's collapse
diagnostic. optuna-dashboard reads the study from its storage on every request, so the page follows a running
sweep (it refreshes itself) and still works after it ended.

The server binds to 127.0.0.1 unless ``--host`` says otherwise. On a cluster, run it on the head and forward the
port instead of opening it (``ray exec cluster.yaml --port-forward 8080 'sigma-ray dashboard ...'`` or
``ssh -L 8080:127.0.0.1:8080 HEAD``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sigma_ray.infra.checks import ConfigError
from sigma_ray.infra.config import load_config
from sigma_ray.runs.files import STUDY_FILE, SWEEP_FILE
from sigma_ray.tune.config import SweepConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def sweep_study(sweep_dir: str | Path) -> tuple[str, str]:
    """(study storage URL, study name) of the sweep in the local directory ``sweep_dir``, from the config the
    sweep saved there (its ``study_storage``, else the directory's ``study.db``). Raises ConfigError when the
    directory holds no sweep."""
    path = Path(sweep_dir).expanduser().resolve() / SWEEP_FILE
    if not path.is_file():
        raise ConfigError(f"{sweep_dir} holds no sweep ({SWEEP_FILE} is missing): pass the directory a sweep "
                          "writes, storage_path/name, e.g. runs/sweeps/sweep_local")
    config = load_config(SweepConfig, path)
    return config.study_storage or f"sqlite:///{path.parent / STUDY_FILE}", config.name


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True   # the page polls; a request in flight must not keep Ctrl+C waiting


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:   # noqa: A002 - the base class's signature
        """Requests are not logged: the page polls the study every few seconds."""


def make_dashboard(storage_url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> WSGIServer:
    """A threaded WSGI server of optuna-dashboard on the study storage ``storage_url`` (any Optuna RDB URL),
    bound to ``host``:``port`` (0: a free port; ``server.server_address`` tells which); not yet serving."""
    import optuna
    import optuna_dashboard

    storage = optuna.storages.RDBStorage(storage_url)
    return make_server(host, port, optuna_dashboard.wsgi(storage), server_class=_Server, handler_class=_QuietHandler)


def serve(storage_url: str, study_name: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    """Serve the dashboard until Ctrl+C; prints the study's address first. Returns the exit status."""
    server = make_dashboard(storage_url, host, port)
    bound_host, bound_port = server.server_address[:2]
    print(f"[sigma-ray] optuna-dashboard of study {study_name} ({storage_url}) at "
          f"http://{bound_host}:{bound_port}/dashboard/ (Ctrl+C to stop)", flush=True)
    if bound_host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[sigma-ray] listening on {bound_host}: anyone who reaches this port sees the study", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_server_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to bind (default %(default)s: this machine only; on a cluster head keep it and "
                        "forward the port, e.g. ssh -L PORT:127.0.0.1:PORT HEAD)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s; 0: a free one)")
    return p


def main(argv: list[str] | None = None, prog: str = "sigma-ray dashboard") -> int:
    p = argparse.ArgumentParser(prog=prog, description="Serve optuna-dashboard on a sweep's Optuna study "
                                                       "(trials, parameters, probe scores, pruned trials)")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="the sweep's directory (storage_path/name)")
    args = add_server_arguments(p).parse_args(argv)
    try:
        url, name = sweep_study(args.sweep_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return serve(url, name, args.host, args.port)
