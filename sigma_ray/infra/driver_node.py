"""Where the driver's helper actors live: on the driver's own node.

A run's small bookkeeping actors (the console relay, the data cursor, the skip statistics) need no resources
(``num_cpus=0``), so Ray would place them on any node, a worker node included; when that node died, the actor
died with it and took the whole run down, though Ray Train could have restarted the worker group
(tests/test_multinode.py lost a node so before they were pinned). On the driver's node they live as long as the
driver, which the run cannot outlive anyway.
"""
from __future__ import annotations

from typing import Any


def on_driver_node() -> dict[str, Any]:
    """``.options(**on_driver_node())`` for an actor created by the driver: hard affinity to this process's node
    (it needs no resources there, so it is always placeable)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                   soft=False)}
