"""Starting or joining Ray the project's way, in one place (pretraining, evaluation, prepare, the sweep, the demo).

- Ray's own output stays in its log files: ``log_to_driver=False`` keeps the workers' and actors' lines (Ray
  Train's reports, Ray Data's execution plans, deprecation and startup warnings) out of the console, and the
  driver's own Ray logger shows warnings only. Where they go: ``<session dir>/logs`` (``/tmp/ray/session_latest/
  logs`` by default; ``RAY_TMPDIR`` moves it), printed by :func:`init_ray` when it starts or joins Ray. The project's lines reach the
  console through :mod:`sigma_ray.train.console`.
- A new local Ray runs with token authentication, Ray 2.60's default for ``ray.init()`` (its warning saying so
  is not shown; ``RAY_AUTH_MODE=disabled`` still opts out): its gRPC servers listen on every interface and
  refuse callers without the token, the dashboard and the job API listen on 127.0.0.1 only
  (tests/test_security.py shows both). Ray writes a new token to ``~/.ray/auth_token`` with the process's umask
  (0644, readable by every user of the machine, with the usual 022); :func:`init_ray` makes it 0600.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from sigma_ray.infra.ray_compat import auth_setup_logger_name


def restrict_token_file(path: str | os.PathLike | None = None) -> bool:
    """Make Ray's token file (``~/.ray/auth_token`` by default) readable by its owner only, when this user owns
    it and others may read it; True when it changed the mode. Ray itself reads it as the same user."""
    import stat
    from pathlib import Path

    path = Path(path) if path is not None else Path.home() / ".ray" / "auth_token"
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_uid != os.getuid() or not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return False
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return True


def init_ray(include_dashboard: bool = False, quiet: bool = False, log_to_driver: bool = False, **kwargs: Any):
    """Join the cluster ``RAY_ADDRESS`` names (inside ``ray job submit`` too) or start a local Ray; nothing when
    Ray is already initialized. ``log_to_driver``: show the workers' output here after all (for a task whose
    own lines are the point). Returns Ray's context (None when it was already up)."""
    import ray

    if ray.is_initialized():
        return None
    # The raylet warns on the console once 4 x its startup concurrency (min(CPUs, num_cpus): 2 on a laptop) worker
    # processes have started, and a run starts about ten (Train's controller and workers, the decode actors, the
    # cursor, the console relay...): every run on a laptop warned. Letting 8 start at once keeps it quiet; a
    # 2-core run took as long (32.6 vs 33.3 s, two tries each). Never lowers Ray's default.
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(max(8, os.cpu_count() or 1)))
    auth_log = logging.getLogger(auth_setup_logger_name())
    level = auth_log.level
    auth_log.setLevel(logging.ERROR)
    try:
        context = ray.init(include_dashboard=include_dashboard, dashboard_host="127.0.0.1",
                           log_to_driver=log_to_driver, logging_level=logging.WARNING, **kwargs)
    finally:
        auth_log.setLevel(level)
    restrict_token_file()
    if not quiet:
        print(f"[sigma-ray] Ray's own logs: {os.path.join(context.address_info['session_dir'], 'logs')}",
              flush=True)
        if include_dashboard and context.dashboard_url:
            print(f"[sigma-ray] Ray dashboard: http://{context.dashboard_url}", flush=True)
    return context
