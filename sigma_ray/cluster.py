"""Cluster files (``cluster.yaml``, ``cluster.local.yaml``): load them the way ``ray up`` does, and check that a
pretraining run's resource requests fit their node types before anyone pays for a GPU node.

:func:`load_cluster_config` runs Ray's own offline checks (``prepare_config`` merges the provider's defaults,
``validate_config`` checks the JSON schema, the head type and the worker counts) plus the ones Ray leaves out
(a node type whose ``min_workers`` exceeds its ``max_workers``). :func:`check_placement` is pure arithmetic on
plain numbers: it says why a Ray Train worker group or the Ray Data decode actors would wait forever for nodes
the autoscaler can never launch. :func:`experiment_request` reads those numbers from an experiment's
PretrainConfig.

Command line (prints the plan, exits 1 on a problem)::

    python -m sigma_ray.cluster cluster.yaml experiments/configs/k400_vitb.yaml --num-workers 16
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from sigma_ray.infra.config import yaml_problem

# Ray schedules resources in units of 1/10000: compare amounts in those units so 100 x 0.01 == 1 exactly.
_UNIT = 10_000


class ClusterConfigError(ValueError):
    """A cluster file is rejected by Ray's validation or by the checks Ray leaves out."""


def load_cluster_config(path: str | Path) -> dict[str, Any]:
    """Read a cluster YAML, fill in the provider's defaults and validate it offline, as ``ray up`` does.

    Returns the prepared config (node types with ``min_workers``/``max_workers`` filled in). Raises
    :class:`ClusterConfigError` naming the problem. Needs no cloud credentials.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ClusterConfigError(f"not valid YAML: {yaml_problem(e, path)}") from None
    return validate_cluster_config(raw, name=str(path))


def validate_cluster_config(raw: Any, name: str = "cluster config") -> dict[str, Any]:
    """Ray's ``prepare_config`` + ``validate_config`` on a dict, then the extra checks; returns the prepared dict."""
    import click
    import jsonschema

    from sigma_ray.infra.ray_compat import validate_cluster_file

    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{name}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        prepared = validate_cluster_file(copy.deepcopy(raw))
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "<top level>"
        raise ClusterConfigError(f"{name}: {where}: {e.message}") from e
    except (ValueError, KeyError, RuntimeError, AssertionError) as e:
        raise ClusterConfigError(f"{name}: {e}") from e
    except (click.ClickException, SystemExit) as e:  # the local provider's checks abort through cli_logger
        detail = e.format_message() if isinstance(e, click.ClickException) else e
        raise ClusterConfigError(f"{name}: {detail}") from e
    problems = []
    for type_name, node_type in prepared["available_node_types"].items():
        lo, hi = node_type.get("min_workers", 0), node_type.get("max_workers", 0)
        if lo > hi:
            problems.append(f"available_node_types.{type_name}: min_workers = {lo} exceeds max_workers = {hi}")
        if hi > prepared["max_workers"] and type_name != prepared["head_node_type"]:
            problems.append(f"available_node_types.{type_name}: max_workers = {hi} exceeds the cluster's "
                            f"max_workers = {prepared['max_workers']}")
    if problems:
        raise ClusterConfigError(f"{name}: " + "; ".join(problems))
    return prepared


# --------------------------------------------------------------------------------------------- placement


@dataclass
class PlacementPlan:
    """Where a run would go: nodes of each type started for training and for decoding, and what cannot fit."""

    problems: list[str] = field(default_factory=list)
    training_nodes: dict[str, int] = field(default_factory=dict)
    decode_nodes: dict[str, int] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return not self.problems


def _units(amounts: Mapping[str, float]) -> dict[str, int]:
    return {k: int(round(float(v) * _UNIT)) for k, v in amounts.items() if float(v) > 0}


def _fmt(amounts: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in amounts.items()) + "}"


def _per_node(free: Mapping[str, int], need: Mapping[str, int]) -> int:
    """How many bundles ``need`` fit into ``free`` (a huge number when the bundle asks for nothing)."""
    if not need:
        return 1 << 30
    return min(free.get(r, 0) // n for r, n in need.items())


def _consume(node: dict[str, int], need: Mapping[str, int], k: int) -> None:
    for r, n in need.items():
        if k:
            node[r] -= k * n


def node_type_table(cluster_cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{type: {"resources", "max_workers", "head"}}`` from a (prepared or raw) cluster config.

    For the ``local`` provider the YAML declares no resources; custom resources are read from the
    ``--resources`` flag of the start commands and CPU/GPU are unknown (left out).
    """
    provider = cluster_cfg.get("provider", {})
    types = cluster_cfg.get("available_node_types") or {}
    if provider.get("type") == "local" and (not types or all(not t.get("resources") for t in types.values())):
        workers = len(provider.get("worker_ips") or [])
        return {
            "head": {"resources": advertised_resources(cluster_cfg.get("head_start_ray_commands", [])),
                     "max_workers": 0, "head": True},
            "worker": {"resources": advertised_resources(cluster_cfg.get("worker_start_ray_commands", [])),
                       "max_workers": workers, "head": False},
        }
    head = cluster_cfg.get("head_node_type")
    table = {}
    for name, t in types.items():
        is_head = name == head
        default_max = 0 if is_head else cluster_cfg.get("max_workers", 0)
        table[name] = {"resources": dict(t.get("resources") or {}),
                       "max_workers": int(t.get("max_workers", default_max)), "head": is_head}
    return table


def advertised_resources(commands: list[str]) -> dict[str, float]:
    """Custom resources a node advertises through ``ray start --resources='{...}'`` in its start commands."""
    found: dict[str, float] = {}
    for cmd in commands:
        for part in cmd.split(";"):
            try:
                tokens = shlex.split(part)
            except ValueError:
                continue
            if "ray" not in tokens or "start" not in tokens:
                continue
            for i, tok in enumerate(tokens):
                value = None
                if tok.startswith("--resources="):
                    value = tok.split("=", 1)[1]
                elif tok == "--resources" and i + 1 < len(tokens):
                    value = tokens[i + 1]
                if value is not None:
                    found.update({k: float(v) for k, v in json.loads(value).items()})
    return found


def plan_placement(cluster_cfg: Mapping[str, Any], num_workers: int, cpus_per_worker: float,
                   gpus_per_worker: float, actors: int, actor_cpus: float,
                   actor_resources: Mapping[str, float] | None = None) -> PlacementPlan:
    """Place ``num_workers`` training bundles ``{CPU, GPU}`` and ``actors`` decode bundles
    ``{CPU: actor_cpus, **actor_resources}`` on the cluster at its largest (every worker type at its
    ``max_workers``, all types together within the cluster's ``max_workers``), the head included.

    Training goes first (Ray Train's placement group is all-or-nothing: if it cannot be placed the run waits
    forever); decode actors then use what training leaves on its nodes and further nodes that provide their
    custom resources. Greedy, per node type largest-capacity first.
    """
    plan = PlacementPlan()
    table = node_type_table(cluster_cfg)
    global_left = int(cluster_cfg.get("max_workers", sum(t["max_workers"] for t in table.values() if not t["head"])))
    left = {name: (1 if t["head"] else t["max_workers"]) for name, t in table.items()}
    free_of = {name: _units(t["resources"]) for name, t in table.items()}
    started: list[tuple[str, dict[str, int]]] = []  # (type, free resources) of nodes in use

    def take(name: str) -> dict[str, int] | None:
        nonlocal global_left
        if left[name] <= 0 or (not table[name]["head"] and global_left <= 0):
            return None
        left[name] -= 1
        if not table[name]["head"]:
            global_left -= 1
        node = dict(free_of[name])
        started.append((name, node))
        return node

    def order(need: dict[str, int]) -> list[str]:
        fitting = [n for n in table if _per_node(free_of[n], need) > 0]
        # the head costs no worker slot: use it first; then the types holding the most bundles per node
        return sorted(fitting, key=lambda n: (not table[n]["head"], -_per_node(free_of[n], need)))

    # --- training workers
    worker = _units({"CPU": cpus_per_worker, "GPU": gpus_per_worker})
    if num_workers > 0:
        types = order(worker)
        if not types:
            plan.problems.append(
                f"a training worker needs {_fmt({'CPU': cpus_per_worker, 'GPU': gpus_per_worker})} but no node "
                f"type provides that on one node: " + ", ".join(
                    f"{n} {_fmt(t['resources'])}" for n, t in table.items()))
        placed = 0
        for name in types:
            while placed < num_workers:
                node = take(name)
                if node is None:
                    break
                k = min(_per_node(node, worker), num_workers - placed)
                _consume(node, worker, k)
                placed += k
                plan.training_nodes[name] = plan.training_nodes.get(name, 0) + 1
        if types and placed < num_workers:
            cap = ", ".join(f"{n}: {_per_node(free_of[n], worker)} per node x "
                            f"{1 if table[n]['head'] else table[n]['max_workers']}" for n in types)
            plan.problems.append(
                f"{num_workers} training workers of {_fmt({'CPU': cpus_per_worker, 'GPU': gpus_per_worker})} "
                f"do not fit: the cluster at its largest holds {placed} ({cap}; cluster max_workers = "
                f"{cluster_cfg.get('max_workers')}); the placement group would wait forever")

    # --- decode actors
    actor_resources = dict(actor_resources or {})
    actor = _units({"CPU": actor_cpus, **actor_resources})
    if actors > 0:
        missing = [r for r in actor_resources if not any(r in t["resources"] for t in table.values())]
        if missing:
            plan.problems.append(
                f"decode actors request the custom resource(s) {', '.join(missing)}, which no node type provides")
        elif not order(actor):
            plan.problems.append(
                f"a decode actor needs {_fmt({'CPU': actor_cpus, **actor_resources})} but no node type provides "
                f"that on one node")
        else:
            placed = 0
            for _, node in started:
                k = min(_per_node(node, actor), actors - placed)
                _consume(node, actor, k)
                placed += k
            for name in order(actor):
                while placed < actors:
                    node = take(name)
                    if node is None:
                        break
                    k = min(_per_node(node, actor), actors - placed)
                    _consume(node, actor, k)
                    placed += k
                    plan.decode_nodes[name] = plan.decode_nodes.get(name, 0) + 1
            if placed < actors:
                plan.problems.append(
                    f"{actors} decode actors of {_fmt({'CPU': actor_cpus, **actor_resources})} do not fit next "
                    f"to the training workers: the cluster at its largest holds {placed}")
    return plan


def check_placement(cluster_cfg: Mapping[str, Any], num_workers: int, cpus_per_worker: float,
                    gpus_per_worker: float, actors: int, actor_cpus: float,
                    actor_resources: Mapping[str, float] | None = None) -> list[str]:
    """The problems of :func:`plan_placement`; empty when the run fits the cluster."""
    return plan_placement(cluster_cfg, num_workers, cpus_per_worker, gpus_per_worker, actors, actor_cpus,
                          actor_resources).problems


def experiment_request(experiment, num_workers: int | None = None) -> dict[str, Any]:
    """The resource numbers of an experiment, as keyword arguments of :func:`check_placement`.

    ``experiment``: a PretrainConfig, or an experiment YAML's mapping (loaded as one, so an omitted key takes the
    config's default and a bad value is a ConfigError). ``num_workers`` overrides ``train.num_workers``. GPUs per
    worker are ``train.worker_gpus`` (0 without ``use_gpu``); the actor count is ``data.num_actors_max``: the pool
    should be able to grow to its maximum.
    """
    from sigma_ray.infra.config import from_dict
    from sigma_ray.train.config import PretrainConfig

    config = experiment if isinstance(experiment, PretrainConfig) else from_dict(PretrainConfig, dict(experiment))
    tc, dc = config.train, config.data
    return {
        "num_workers": int(num_workers if num_workers is not None else tc.num_workers),
        "cpus_per_worker": float(tc.cpus_per_worker),
        "gpus_per_worker": float(tc.worker_gpus),
        "actors": int(dc.num_actors_max),
        "actor_cpus": float(dc.actor_num_cpus),
        "actor_resources": {str(k): float(v) for k, v in dc.actor_resources.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sigma_ray.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("cluster", help="cluster YAML (cluster.yaml or cluster.local.yaml)")
    parser.add_argument("experiments", nargs="*", help="experiment YAMLs to check against it")
    parser.add_argument("--num-workers", type=int, default=None, help="override train.num_workers")
    args = parser.parse_args(argv)
    try:
        cfg = load_cluster_config(args.cluster)
    except ClusterConfigError as e:
        print(f"INVALID {e}")
        return 1
    print(f"OK {args.cluster}: node types " + ", ".join(
        f"{n} {_fmt(t['resources'])} x{1 if t['head'] else t['max_workers']}"
        for n, t in node_type_table(cfg).items()))
    status = 0
    for path in args.experiments:
        from sigma_ray.train.config import load_pretrain_config

        request = experiment_request(load_pretrain_config(path), args.num_workers)
        plan = plan_placement(cfg, **request)
        if plan.fits:
            print(f"FITS {path}: training on {plan.training_nodes}, decode actors add {plan.decode_nodes}")
        else:
            status = 1
            for problem in plan.problems:
                print(f"DOES NOT FIT {path}: {problem}")
    return status


if __name__ == "__main__":
    sys.exit(main())
