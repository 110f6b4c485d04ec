"""Failure detection, pure: timestamps in, decisions out. No asyncio, sockets, threads or clocks of their own
(the node's liveness loop feeds them ``time.monotonic()``; tests feed them a fake clock)."""
from .detector import FailureDetector
from .monitor import LivenessMonitor, Tick

__all__ = ["FailureDetector", "LivenessMonitor", "Tick"]
