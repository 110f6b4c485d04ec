"""Placement on resources, as pure logic: what a node has (:mod:`.resources`), where requests go (:mod:`.decide`)
and what is held where (:mod:`.ledger`). No event loop, no IO beyond reading this machine's CPU, GPU and memory
counts once."""
from .decide import STRATEGIES, Infeasible, NodeRoom, check_strategy, check_timeout, place
from .ledger import Hold, Ledger
from .resources import (check_request, check_resources, detect_resources, format_resources, parse_resources,
                        visible_gpus)

__all__ = ["STRATEGIES", "Infeasible", "NodeRoom", "check_strategy", "check_timeout", "place", "Hold", "Ledger", "check_request", "check_resources",
           "detect_resources", "format_resources", "parse_resources", "visible_gpus"]
