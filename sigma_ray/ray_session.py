"""Starting or joining Ray the project's way, in one place (pretraining, evaluation, prepare, the sweep, the demo).

- Ray's own output stays in its log files: ``log_to_driver=False`` keeps the workers' and actors' lines (Ray
  Train's reports, Ray Data's execution plans, deprecation and startup warnings) out of the console, and the
  driver's own Ray logger shows warnings only. Where they go: ``<session dir>/logs`` (``/tmp/ray/session_latest/
  logs`` by default; ``RAY_TMPDIR`` moves it), printed by :func:`init_ray` when it starts or joins Ray. The project's lines reach the
  console through :mod:`sigma_ray.train.console`.
- A new local Ray runs with token authentication, Ray 2.60's default for ``ray.init()`` (its warning saying so
  is not shown; ``RAY_AUTH_MODE=disabled`` still opts out): its gRPC servers listen on every interface and
  refuse callers without the token, the dashboard and the job API listen on 127.0.0.1 only
  (tests/test_security.py shows both).
"""
from __future__ import annotations

import logging
import os
from typing import Any

from sigma_ray.ray_compat import auth_setup_logger_name


def init_ray(include_dashboard: bool = False, quiet: bool = False, log_to_driver: bool = False, **kwargs: Any):
    """Join the cluster ``RAY_ADDRESS`` names (inside ``ray job submit`` too) or start a local Ray; nothing when
    Ray is already initialized. ``log_to_driver``: show the workers' output here after all (for a task whose
    own lines are the point). Returns Ray's context (None when it was already up)."""
    import ray

    if ray.is_initialized():
        return None
    auth_log = logging.getLogger(auth_setup_logger_name())
    level = auth_log.level
    auth_log.setLevel(logging.ERROR)
    try:
        context = ray.init(include_dashboard=include_dashboard, dashboard_host="127.0.0.1",
                           log_to_driver=log_to_driver, logging_level=logging.WARNING, **kwargs)
    finally:
        auth_log.setLevel(level)
    if not quiet:
        print(f"[sigma-ray] Ray's own logs: {os.path.join(context.address_info['session_dir'], 'logs')}",
              flush=True)
        if include_dashboard and context.dashboard_url:
            print(f"[sigma-ray] Ray dashboard: http://{context.dashboard_url}", flush=True)
    return context
