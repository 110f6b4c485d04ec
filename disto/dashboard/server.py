"""The dashboard's HTTP server: aiohttp on the node's own event loop (no thread, no second loop).

Every route asks for the cluster token: ``Authorization: Bearer <token>`` (what Prometheus' scrape config sends),
a link carrying ``?token=<token>`` (as Jupyter prints one; opening it sets a cookie so the page's own requests
carry it), or that cookie. Without it: 401. It binds 127.0.0.1 unless told otherwise.

    /              the live page (static HTML + JavaScript that polls /api/cluster)
    /api/cluster   every node's state, actors, peers and the timeline, as JSON
    /api/stacks    every node's threads and asyncio tasks, and the call each one runs
    /api/logs      ?node=ADDRESS&actor=LABEL: an actor's recent output
    /metrics       the Prometheus text format, for the whole cluster
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import pathlib
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..actor import SystemActor, system_ref
from ..cluster.inspect import cluster_stacks
from ..errors import DistoError
from ..node import Node
from .collect import cluster_snapshot
from .prom import CONTENT_TYPE, render_metrics

log = logging.getLogger("disto.dashboard")
PAGE = pathlib.Path(__file__).with_name("page.html")
COOKIE = "disto_token"
FAILURE_LOG_EVERY = 10.0  # seconds: at most one log line per this long about refused requests


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(data, default=repr), content_type="application/json")


class Dashboard:
    """``await Dashboard(node).start("127.0.0.1:0")`` serves the dashboard of ``node``'s cluster; returns its URL."""

    def __init__(self, node: Node, token: bytes) -> None:
        self.node = node
        self._token = token
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._refused = 0
        self._last_refusal_log = 0.0

    # ------------------------------------------------------------------ authentication
    def _authorized(self, request: web.Request) -> bool:
        given = ""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[len("Bearer "):].strip()
        given = given or request.query.get("token", "") or request.cookies.get(COOKIE, "")
        return bool(given) and hmac.compare_digest(given.encode(), self._token)

    def _refuse(self, request: web.Request) -> web.Response:
        self._refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= FAILURE_LOG_EVERY:  # rate-limited: a scanner must not flood the log
            log.warning("dashboard refused %d request(s) without the cluster token (latest from %s for %s)",
                        self._refused, request.remote, request.path)
            self._refused = 0
            self._last_refusal_log = now
        return web.Response(status=401, text="401: this dashboard needs the cluster token: open the link with "
                            "?token=<token>, or send Authorization: Bearer <token>\n",
                            headers={"WWW-Authenticate": 'Bearer realm="disto"'})

    @web.middleware
    async def _auth(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if not self._authorized(request):
            return self._refuse(request)
        response = await handler(request)
        if request.query.get("token") and request.cookies.get(COOKIE) != request.query["token"]:
            response.set_cookie(COOKIE, request.query["token"], httponly=True, samesite="Strict")
        return response

    # ------------------------------------------------------------------ routes
    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def _cluster(self, request: web.Request) -> web.Response:
        return _json(await cluster_snapshot(self.node))

    async def _metrics(self, request: web.Request) -> web.Response:
        body = render_metrics(await cluster_snapshot(self.node))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _stacks(self, request: web.Request) -> web.Response:
        return _json(await cluster_stacks(self.node))

    async def _logs(self, request: web.Request) -> web.Response:
        address, actor = request.query.get("node", ""), request.query.get("actor", "")
        if not address or not actor:
            return web.Response(status=400, text="400: give ?node=ADDRESS&actor=LABEL\n")
        service = system_ref(SystemActor.NODE_SERVICE, address, via=self.node)
        try:
            lines = await asyncio.wait_for(asyncio.ensure_future(service.logs(actor, 500)), 5.0)
        except (DistoError, asyncio.TimeoutError) as e:
            return web.Response(status=502, text=f"502: {address} did not answer: {e}\n")
        return _json({"node": address, "actor": actor, "lines": lines})

    # ------------------------------------------------------------------ lifecycle
    async def start(self, address: str) -> str:
        """Listen on ``HOST:PORT`` (port 0: any free one); returns the base URL (no token in it)."""
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise DistoError(f"dashboard address must be HOST:PORT, got {address!r}")
        app = web.Application(middlewares=[self._auth])
        app.add_routes([web.get("/", self._page), web.get("/api/cluster", self._cluster),
                        web.get("/api/stacks", self._stacks), web.get("/api/logs", self._logs),
                        web.get("/metrics", self._metrics)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host.strip("[]"), int(port), reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise DistoError(f"the dashboard cannot listen on {address}: {e.strerror or e}"
                             + (" (the port is in use: pick another, or :0 for any free one)"
                                if e.errno == 98 else "")) from None
        self._runner = runner
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        bound_host, bound_port = sock.getsockname()[:2]
        self.url = f"http://{bound_host if ':' not in bound_host else f'[{bound_host}]'}:{bound_port}"
        log.info("dashboard on %s", self.url)
        return self.url

    def link(self) -> str:
        """The URL with the token in it: opening it in a browser is enough."""
        return f"{self.url}/?token={self._token.decode(errors='replace')}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
