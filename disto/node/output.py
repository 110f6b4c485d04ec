"""What actors print or log, tagged with the actor that wrote it (as Ray does): each complete line becomes
``(Worker#3 name=w1 node=127.0.0.1:7001) the line``. The node keeps the recent lines of each actor (``disto
logs``, ``cluster.logs(ref)``) and sends them to the drivers of the cluster, which print them; with no driver
joined, the node prints them itself.

Installed in node processes (``disto node start``): :func:`capture` replaces ``sys.stdout`` and ``sys.stderr``
(and re-points logging handlers that wrote to them). Output that no actor wrote passes through untouched.
Which actor wrote a line: the actor's own thread (named ``disto <actor>``), an ``@on_loop`` method running
inline, or an async method's task."""
from __future__ import annotations

import asyncio
import collections
import io
import logging
import sys
import threading
from typing import Any, Callable

from ..actor import FIRST_USER_ACTOR_ID
from ..actor import mailbox as _mailbox

KEEP_LINES = 1000        # recent lines kept per actor
MAX_LINE = 16 << 10      # a longer line is cut (one print of a huge string must not flood the drivers)

Owner = Callable[[], "tuple[str, str] | None"]  # -> (actor label, tag) of the code writing now, or None


class ActorOutput:
    """Per-actor recent lines, and the batch of lines waiting to go to the drivers."""

    def __init__(self, owner: Owner, forward: Callable[[list[tuple[int, str]]], bool]) -> None:
        self._owner = owner
        self._forward = forward  # sends tagged lines to the drivers; False if there is none
        self.recent: dict[str, collections.deque[str]] = {}
        self._partial: dict[tuple[int, int, str], str] = {}
        self._batch: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.passthrough: dict[int, Any] = {}  # fd number (1, 2) -> the real stream

    def write(self, stream: int, text: str) -> bool:
        """Take ``text`` written to stdout (1) or stderr (2); False if no actor wrote it (pass it through)."""
        who = self._owner()
        if who is None:
            return False
        label, tag = who
        key = (stream, threading.get_ident(), label)
        with self._lock:
            text = self._partial.pop(key, "") + text
            *lines, rest = text.split("\n")
            if rest:
                self._partial[key] = rest[:MAX_LINE]
            if not lines:
                return True
            recent = self.recent.get(label)
            if recent is None:
                recent = self.recent[label] = collections.deque(maxlen=KEEP_LINES)
            first = not self._batch
            for line in lines:
                line = line[:MAX_LINE]
                recent.append(line)
                self._batch.append((stream, f"{tag} {line}"))
        if first:
            self._schedule()
        return True

    def _schedule(self) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            self.flush()
            return
        try:
            if threading.get_ident() == getattr(loop, "_thread_id", None):
                loop.call_soon(self.flush)
            else:
                loop.call_soon_threadsafe(self.flush)
        except RuntimeError:  # the loop is closing
            self.flush()

    def flush(self) -> None:
        with self._lock:
            batch, self._batch = self._batch, []
        if not batch:
            return
        try:
            sent = self._forward(batch)
        except Exception:  # noqa: BLE001 - never lose the lines because the drivers are gone
            sent = False
        if not sent:
            write_lines(batch, self.passthrough)

    def lines(self, label: str, n: int | None = None) -> list[str]:
        recent = list(self.recent.get(label, ()))
        return recent[-n:] if n else recent


def write_lines(batch: list[tuple[int, str]], streams: dict[int, Any] | None = None) -> None:
    """Print tagged lines on this process's stdout/stderr (a driver showing what its actors printed)."""
    for stream, line in batch:
        out = (streams or {}).get(stream) or (sys.stderr if stream == 2 else sys.stdout)
        try:
            out.write(line + "\n")
            out.flush()
        except (OSError, ValueError):
            pass


class _Tee(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: actor output to :class:`ActorOutput`, the rest to the real stream."""

    def __init__(self, real: Any, fd: int, output: ActorOutput) -> None:
        self._real = real
        self._fd = fd
        self._output = output

    def write(self, s: str) -> int:
        if not self._output.write(self._fd, s):
            self._real.write(s)
        return len(s)

    def flush(self) -> None:
        self._real.flush()

    def fileno(self) -> int:
        return self._real.fileno()

    def isatty(self) -> bool:
        return self._real.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._real.encoding


def owner_in(cells: Callable[[], Any], node_address: str) -> Owner:
    """Who is writing now, among the actors of ``cells()`` (an ActorTable's cells)."""

    def find(label: str) -> tuple[str, str] | None:
        for actor_id, cell in list(cells().items()):
            if actor_id >= FIRST_USER_ACTOR_ID and cell.mailbox.label == label:  # system actors log as the node
                ref = cell.ref
                name = f" name={ref.actor_name}" if ref.actor_name else ""
                return label, f"({ref.actor_class}#{ref.actor_id}{name} node={node_address})"
        return None

    def owner() -> tuple[str, str] | None:
        name = threading.current_thread().name
        if name.startswith("disto "):
            return find(name[len("disto "):])
        if _mailbox.inline_actor is not None:
            return find(_mailbox.inline_actor)
        try:
            task = asyncio.current_task()
        except RuntimeError:
            return None
        if task is None:
            return None
        for cell in list(cells().values()):
            if any(it.task is task for it in list(cell.mailbox.running_items)):
                return find(cell.mailbox.label)
        return None

    return owner


def capture(output: ActorOutput) -> Callable[[], None]:
    """Route this process's stdout and stderr through ``output``; returns the undo."""
    real_out, real_err = sys.stdout, sys.stderr
    output.passthrough = {1: real_out, 2: real_err}
    sys.stdout = _Tee(real_out, 1, output)  # type: ignore[assignment]
    sys.stderr = _Tee(real_err, 2, output)  # type: ignore[assignment]
    moved = []
    for h in logging.getLogger().handlers:  # basicConfig's handler holds the stream it was given
        if isinstance(h, logging.StreamHandler) and h.stream in (real_out, real_err):
            moved.append((h, h.stream))
            h.setStream(sys.stderr if h.stream is real_err else sys.stdout)

    def undo() -> None:
        output.flush()
        sys.stdout, sys.stderr = real_out, real_err
        for h, s in moved:
            h.setStream(s)

    return undo
