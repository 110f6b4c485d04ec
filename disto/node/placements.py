"""The seed's side of placement: the ledger of what every worker node has and holds, reservations that wait for
room, and the member lists of actor groups. Owned by the registry, which forwards its calls here."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Mapping, Sequence

from ..actor import ActorRef
from ..errors import PlacementError
from ..placement import Hold, Infeasible, Ledger, check_request, check_strategy, check_timeout
from ..placement.decide import describe_request

Grant = tuple[int, str, str]  # (hold id, node id, node address)


class Placements:
    def __init__(self, event: Callable[[str, str, str], None], is_member: Callable[[str], bool]) -> None:
        self.ledger = Ledger()
        self._event = event  # (kind, node address, detail) into the registry's timeline
        self._is_member = is_member
        self._waiters: list[asyncio.Future] = []
        self.waiting: dict[int, dict[str, Any]] = {}  # reservations waiting for room, for the listing
        self._next_wait = 0
        self.groups: dict[str, list[ActorRef]] = {}

    # ------------------------------------------------------------------ nodes come and go
    def node_joined(self, info: Mapping[str, Any]) -> None:
        if info.get("role") == "worker":
            self.ledger.add_node(info["node_id"], info["address"], info.get("resources") or {})
            self._changed()

    def node_gone(self, node_id: str) -> list[Hold]:
        gone = self.ledger.remove_node(node_id)
        self._changed()
        return gone

    def _changed(self) -> None:
        """Room may have appeared: every waiting reservation tries again."""
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # ------------------------------------------------------------------ reservations
    async def reserve(self, requests: Sequence[Mapping[str, float]], strategy: str, owner: str,
                      node_id: str | None, timeout: float | None, what: str) -> list[Grant]:
        check_strategy(strategy)
        check_timeout(timeout)
        clean = [check_request(r) for r in requests]
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        self._next_wait += 1
        wait_id = self._next_wait
        try:
            return await self._reserve(clean, strategy, owner, node_id, timeout, what, deadline, wait_id)
        finally:
            self.waiting.pop(wait_id, None)

    async def _reserve(self, clean: list[dict[str, float]], strategy: str, owner: str, node_id: str | None,
                       timeout: float | None, what: str, deadline: float | None, wait_id: int) -> list[Grant]:
        loop = asyncio.get_running_loop()
        while True:
            got = self.ledger.reserve(clean, strategy, owner, node_id)
            if not isinstance(got, Infeasible):
                if owner and not self._is_member(owner):  # it left while waiting: nobody would bind these
                    for h in got:
                        self.ledger.release(h.hold_id)
                    raise PlacementError(f"{owner} is no longer a member", clean, strategy)
                self._placed(got, clean, strategy, what)
                return [(h.hold_id, h.node_id, self.ledger.address(h.node_id)) for h in got]
            left = None if deadline is None else deadline - loop.time()
            if left is None or left <= 0:
                reason = got.reason + (f" (waited {timeout:g} s)" if timeout else "")
                self._event("unplaceable", "", f"{what}: {reason}")
                raise PlacementError(reason, clean, strategy, got.free)
            self.waiting.setdefault(wait_id, {"what": what, "requests": clean, "strategy": strategy,
                                              "owner": owner, "since": time.time(), "timeout": timeout,
                                              "reason": got.reason})
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except asyncio.TimeoutError:
                pass
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _placed(self, holds: list[Hold], requests: list[dict[str, float]], strategy: str, what: str) -> None:
        per_node: dict[str, int] = {}
        for h in holds:
            address = self.ledger.address(h.node_id)
            per_node[address] = per_node.get(address, 0) + 1
        where = ", ".join(f"{a} x{n}" for a, n in per_node.items())
        asked = describe_request(requests) if any(requests) else f"{len(requests)} x nothing"
        self._event("placed", next(iter(per_node), ""), f"{what}: {asked} ({strategy}) on {where}")

    def bind(self, hold_id: int, ref: ActorRef) -> bool:
        return self.ledger.bind(int(hold_id), (ref.node_id, ref.actor_id))

    def release(self, hold_ids: Sequence[int]) -> int:
        n = sum(self.ledger.release(int(h)) is not None for h in hold_ids)
        if n:
            self._changed()
        return n

    def actor_stopped(self, node_id: str, actor_id: int) -> None:
        if self.ledger.release_actor((node_id, actor_id)):
            self._changed()

    def hold_again(self, node_id: str, request: Mapping[str, float], ref: ActorRef) -> None:
        if node_id in self.ledger.nodes:
            self.ledger.hold_again(node_id, check_request(request), (ref.node_id, ref.actor_id))

    def report(self) -> list[dict[str, Any]]:
        return self.ledger.report()

    # ------------------------------------------------------------------ groups
    def restarted(self, group_id: str | None, rank: int | None, ref: ActorRef) -> None:
        members = self.groups.get(group_id or "")
        if members is not None and rank is not None and 0 <= rank < len(members):
            members[rank] = ref

