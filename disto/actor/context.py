"""Which node runs the current code: refs created or unpickled here talk through it.

Set while a node dispatches a message or runs an actor (a context variable, so every task and callback sees the
node that started it); outside of that, the process's most recently started node that is still running.
"""
from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

from ..errors import ClosedError

if TYPE_CHECKING:
    from ..node import Node

current: contextvars.ContextVar["Node | None"] = contextvars.ContextVar("disto_node", default=None)
_started: list["Node"] = []  # nodes of this process, oldest first


def current_node() -> "Node":
    """The disto node of the running code (inside an actor: its node; in a driver: the node it started)."""
    node = current.get()
    if node is not None and not node.closed:
        return node
    for node in reversed(_started):
        if not node.closed:
            return node
    raise ClosedError("no disto node is running in this process: use disto.LocalCluster(), disto.connect() "
                      "or disto.Node")


def node_started(node: Any) -> None:
    _started.append(node)


def node_stopped(node: Any) -> None:
    if node in _started:
        _started.remove(node)
