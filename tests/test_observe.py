"""Seeing inside a running cluster: call metrics, /metrics and the dashboard (also in a real headless browser),
the actor listing, stacks, actor output and logs, the timeline; and the pure parts they are built on."""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import subprocess
import tempfile

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import disto
from disto.dashboard import render_metrics
from disto.node.metrics import BOUNDS, CANCELLED, ERROR, OK, ActorStats
from disto.node.output import ActorOutput
from disto.transport.channel import AuthFailureLog

from actors import Talker, Worker
from helpers import NODE_ENV as ENV, any_call_running, eventually


# ---------------------------------------------------------------------------------------------- pure parts
def test_call_stats_count_outcomes_and_bucket_latencies_by_upper_bound() -> None:
    s = ActorStats()
    s.observe("m", BOUNDS[0] / 2, OK)
    s.observe("m", BOUNDS[1], OK)          # a bucket's bound is inclusive (Prometheus "le")
    s.observe("m", 1000.0, ERROR)          # past the last bound: +Inf
    s.observe("m", 0.001, CANCELLED)
    m = s.to_dict()["m"]
    assert m["counts"] == {"ok": 2, "error": 1, "cancelled": 1}
    assert m["buckets"][0] == 1 and m["buckets"][1] == 1 and m["buckets"][-1] == 1
    assert sum(m["buckets"]) == 4 and m["sum"] == pytest.approx(BOUNDS[0] / 2 + BOUNDS[1] + 1000.001)


def _snapshot() -> dict:
    stats = ActorStats()
    for dt in (0.0002, 0.003, 0.003):
        stats.observe("step", dt, OK)
    stats.observe("step", 0.5, ERROR)
    actor = {"id": 16, "class": "Worker", "name": "w", "state": "running", "restarts": 1, "queued": 2,
             "running": [{"method": "step", "age": 4.0, "remote": True}], "methods": stats.to_dict()}
    node = {"address": "127.0.0.1:7001", "role": "worker", "actors": [actor], "pending_calls": 3,
            "process": {"rss_bytes": 1000, "open_fds": 9, "tasks": 4}, "shm": {"segments": 2, "free": 1},
            "buffer_pool": {"bytes": 10, "in_use": 5}, "restarts": 1,
            "peer_stats": [{"address": "127.0.0.1:7002", "heartbeat_age": 0.25,
                            "bytes": {"tcp_in": 5, "tcp_out": 6, "shm_out": 7, "cuda_out": 0}}]}
    gone = {"address": "127.0.0.1:7002", "role": "worker", "error": "TimeoutError", "actors": []}
    return {"nodes": [node, gone], "timeline": [{"kind": "join"}, {"kind": "join"}, {"kind": "restart"}],
            "resources": [{"node_id": "n1", "address": "127.0.0.1:7001", "total": {"gpu": 2.0, "ps": 1.0},
                           "free": {"gpu": 1.0, "ps": 1.0}, "held": 1}]}


def _samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_text_has_the_named_series_with_a_node_label() -> None:
    got = _samples(render_metrics(_snapshot()).decode())
    lab = (("actor", "w"), ("method", "step"), ("node", "127.0.0.1:7001"))
    assert got[("disto_calls_total", tuple(sorted(lab + (("outcome", "ok"),))))] == 3
    assert got[("disto_calls_total", tuple(sorted(lab + (("outcome", "error"),))))] == 1
    assert got[("disto_call_duration_seconds_count", lab)] == 4
    assert got[("disto_call_duration_seconds_bucket", tuple(sorted(lab + (("le", "0.005"),))))] == 3  # cumulative
    assert got[("disto_call_duration_seconds_bucket", tuple(sorted(lab + (("le", "+Inf"),))))] == 4
    assert got[("disto_call_duration_seconds_sum", lab)] == pytest.approx(0.5062)
    actor = (("actor", "w"), ("node", "127.0.0.1:7001"))
    assert got[("disto_mailbox_depth", actor)] == 2
    assert got[("disto_calls_in_flight", actor)] == 1
    assert got[("disto_call_oldest_in_flight_seconds", actor)] == 4.0
    assert got[("disto_node_up", (("node", "127.0.0.1:7001"), ("role", "worker")))] == 1
    assert got[("disto_node_up", (("node", "127.0.0.1:7002"), ("role", "worker")))] == 0
    peer = (("direction", "out"), ("node", "127.0.0.1:7001"), ("peer", "127.0.0.1:7002"), ("route", "shm"))
    assert got[("disto_peer_bytes_total", peer)] == 7
    assert got[("disto_peer_heartbeat_age_seconds", (("node", "127.0.0.1:7001"), ("peer", "127.0.0.1:7002")))] \
        == 0.25
    assert got[("disto_cluster_events_total", (("kind", "restart"),))] == 1
    assert got[("disto_node_rss_bytes", (("node", "127.0.0.1:7001"),))] == 1000
    gpu = (("node", "127.0.0.1:7001"), ("resource", "gpu"))
    assert got[("disto_node_resource", gpu)] == 2 and got[("disto_node_resource_free", gpu)] == 1


def test_failed_authentications_are_logged_at_most_once_per_period(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = AuthFailureLog(every=10.0, clock=lambda: now[0])
    assert log.note("a", "token mismatch")
    assert not log.note("b", "token mismatch") and not log.note("c", "token mismatch")
    now[0] += 10.0
    assert log.note("d", "token mismatch")
    assert log.total == 4
    lines = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(lines) == 2 and "2 more since the last report" in lines[1]


def test_actor_output_is_tagged_kept_per_actor_and_forwarded_or_printed() -> None:
    forwarded: list = []
    owner = [("w", "(Worker#16 name=w node=n1)")]
    out = ActorOutput(lambda: owner[0], lambda batch: forwarded.extend(batch) or True)
    assert out.write(1, "hel") and out.write(1, "lo\nsecond line\npart")  # no loop: flushed at once
    assert forwarded == [(1, "(Worker#16 name=w node=n1) hello"), (1, "(Worker#16 name=w node=n1) second line")]
    assert out.lines("w") == ["hello", "second line"] and out.lines("w", 1) == ["second line"]
    owner[0] = None
    assert not out.write(1, "not an actor's\n")  # passed through by the caller
    # with no driver to send them to, the node prints them itself
    real = io.StringIO()
    quiet = ActorOutput(lambda: ("x", "(X#17 node=n1)"), lambda batch: False)
    quiet.passthrough = {1: real, 2: real}
    quiet.write(2, "oops\n")
    assert real.getvalue() == "(X#17 node=n1) oops\n"


def test_an_explicit_token_file_wins_over_the_environment(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from disto.cluster import resolve_token, token_source
    path = tmp_path / "token"
    disto.write_token_file(str(path), "from-the-file-0123456789")
    monkeypatch.setenv("DISTO_TOKEN", "from-the-environment-0123")
    assert resolve_token(None, str(path)) == "from-the-file-0123456789"
    assert token_source(None, str(path)) == f"the token file {path}"
    assert resolve_token() == "from-the-environment-0123" and token_source() == "DISTO_TOKEN"
    assert resolve_token("explicit-0123456789abcdef", str(path)) == "explicit-0123456789abcdef"


# ---------------------------------------------------------------------------------------------- real clusters
async def _get(url: str, **kw: object) -> tuple[int, str, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.get(url, **kw) as r:  # type: ignore[arg-type]
            return r.status, await r.text(), dict(r.cookies)


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(90)
async def test_metrics_need_the_token_and_count_each_call_by_outcome() -> None:
    async with disto.LocalCluster(nodes=2, env=ENV, dashboard="127.0.0.1:0") as cluster:
        url = cluster.dashboard_url
        assert url and url.startswith("http://127.0.0.1:")
        t = await cluster.nodes[1].spawn(Talker, name="t1")
        assert await t.say("hi") == "hi"
        with pytest.raises(ValueError):
            await t.fail()
        assert (await _get(f"{url}/metrics"))[0] == 401
        assert (await _get(f"{url}/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"}))[0] == 401
        assert (await _get(f"{url}/api/cluster"))[0] == 401
        status, text, _ = await _get(f"{url}/metrics", headers={"Authorization": f"Bearer {cluster.node.token_text()}"})
        assert status == 200
        got = _samples(text)
        node = t.node_address
        assert got[("disto_calls_total", (("actor", "t1"), ("method", "say"), ("node", node), ("outcome", "ok")))] == 1
        assert got[("disto_calls_total", (("actor", "t1"), ("method", "fail"), ("node", node),
                                          ("outcome", "error")))] == 1
        assert got[("disto_call_duration_seconds_count", (("actor", "t1"), ("method", "say"), ("node", node)))] == 1
        assert sum(v for (name, _), v in got.items() if name == "disto_node_up") == 3  # 2 workers + the driver
        # the link carrying the token, as a browser opens it: the page, and a cookie for its own requests
        status, page, cookies = await _get(cluster.dashboard_link)
        assert status == 200 and "disto cluster" in page and "disto_token" in cookies
        status, body, _ = await _get(f"{url}/api/cluster", params={"token": cluster.node.token_text()})
        assert status == 200 and '"t1"' in body


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(90)
async def test_actors_stacks_and_logs_show_what_each_actor_does(capsys: pytest.CaptureFixture) -> None:
    async with disto.LocalCluster(nodes=2, env=ENV) as cluster:
        t = await cluster.nodes[0].spawn(Talker, name="talk")
        u = await cluster.nodes[1].spawn(Talker)
        await t.say("hello from talk")
        await t.partial("two ", "pieces")
        await u.say("hello from an unnamed one")

        # what they printed reaches the driver, one tagged line each
        async def printed() -> str:
            out = capsys.readouterr().out
            printed.seen += out  # type: ignore[attr-defined]
            return "unnamed one" in printed.seen and printed.seen  # type: ignore[attr-defined]
        printed.seen = ""  # type: ignore[attr-defined]
        seen = await eventually(printed, what="the actors' output at the driver")
        assert f"(Talker#{t.actor_id} name=talk node={t.node_address}) hello from talk" in seen
        assert f"(Talker#{t.actor_id} name=talk node={t.node_address}) two pieces" in seen
        assert f"(Talker#{u.actor_id} node={u.node_address}) hello from an unnamed one" in seen
        # and each node keeps them per actor, logging included
        lines = await cluster.logs(t)
        assert lines[0] == "hello from talk" and "logged hello from talk" in lines[1] and lines[2] == "two pieces"
        assert await cluster.logs(t, 1) == ["two pieces"]

        hang_sync = asyncio.ensure_future(t.hold(30))
        hang_async = asyncio.ensure_future(u.wait_async(30))
        try:
            async def both_running() -> list:
                rows = {r["name"] or r["class"]: r for r in await cluster.actors() if r["class"] == "Talker"}
                running = [r for r in rows.values() if r["state"] == "running"]
                return running if len(running) == 2 else []
            running = await eventually(both_running, what="both calls running")
            assert {r["running"][0]["method"] for r in running} == {"hold", "wait_async"}
            rows = await cluster.actors()
            assert {(r["node"], r["class"], r["name"]) for r in rows} == {
                (t.node_address, "Talker", "talk"), (u.node_address, "Talker", None)}
            assert all(r["restarts"] == 0 and isinstance(r["ref"], disto.ActorRef) for r in rows)

            stacks = await cluster.stacks()
            assert {s["address"] for s in stacks} == {h.address for h in cluster.nodes} | {cluster.node.address}
            mine = next(s for s in stacks if s["address"] == t.node_address)
            thread = next(th for th in mine["threads"] if th["calls"])
            assert thread["actor"] == "talk" and thread["calls"][0]["method"] == "hold"
            assert any("in hold" in f for f in thread["stack"]) and any("sleep" in f or "hold" in f
                                                                          for f in thread["stack"])
            other = next(s for s in stacks if s["address"] == u.node_address)
            task = next(tk for tk in other["tasks"] if tk["call"])
            assert task["call"]["method"] == "wait_async" and any("in wait_async" in f for f in task["stack"])
            text = disto.format_stacks(stacks)
            assert "talk.hold running" in text and f"Talker#{u.actor_id}.wait_async running" in text
        finally:
            for f in (hang_sync, hang_async):
                f.cancel()
            await asyncio.gather(hang_sync, hang_async, return_exceptions=True)


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(90)
async def test_a_restart_shows_in_the_listing_and_the_timeline() -> None:
    async with disto.LocalCluster(nodes=3, env=ENV, dashboard="127.0.0.1:0") as cluster:
        first = await cluster.nodes[1].spawn(Worker, name="svc", max_restarts=1)
        await first.add(1)
        os.kill(cluster.nodes[1].pid, signal.SIGKILL)

        async def restarted() -> dict | None:
            rows = [r for r in await cluster.actors() if r["name"] == "svc" and r["node"] != first.node_address]
            return rows[0] if rows else None
        row = await eventually(restarted, timeout=15, what="the restarted actor in the listing")
        assert row["restarts"] == 1
        token = {"token": cluster.node.token_text()}
        _, body, _ = await _get(f"{cluster.dashboard_url}/api/cluster", params=token)
        import json
        kinds = [e["kind"] for e in json.loads(body)["timeline"]]
        assert kinds.count("join") >= 4 and "lost" in kinds and "restart" in kinds
        _, text, _ = await _get(f"{cluster.dashboard_url}/metrics", params=token)
        assert _samples(text)[("disto_actor_restarts", (("actor", "svc"), ("node", row["node"])))] == 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


async def _render(url: str) -> str:
    """The page's DOM after its scripts ran, from a real headless Chromium."""
    with tempfile.TemporaryDirectory() as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",  # type: ignore
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    return out.decode()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs Debian's chromium)")
@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(150)
async def test_the_dashboard_page_in_a_headless_browser_shows_nodes_actors_and_calls() -> None:
    async with disto.LocalCluster(nodes=2, env=ENV, dashboard="127.0.0.1:0", resources={"gpu": 2}) as cluster:
        t = await cluster.nodes[1].spawn(Talker, name="alpha", resources={"gpu": 1})
        for i in range(5):
            await t.say(f"line {i}")
        hang = asyncio.ensure_future(t.hold(60))
        try:
            await eventually(lambda: any_call_running(cluster), what="the call to be running")
            dom = await _render(cluster.dashboard_link)  # type: ignore[arg-type]
            assert "3 nodes (3 reachable), 1 actors" in dom, dom[:2000]
            row = dom.split('data-actor="alpha"', 1)[1].split("</tr>", 1)[0]
            assert t.node_address in row and "Talker" in row and ">running<" in row
            assert "<td>say</td><td class=\"num\">5</td>" in dom  # the per-method table: 5 calls of say
            inflight = dom.split('id="inflight"', 1)[1].split("</table>", 1)[0]
            assert "hold" in inflight and "alpha" in inflight
            timeline = dom.split('id="timeline"', 1)[1].split("</table>", 1)[0]
            assert timeline.count("<td>join</td>") == 3 and "<td>placed</td>" in timeline
            resources = dom.split('id="resources"', 1)[1].split("</table>", 1)[0]
            [gpu_row] = [r for r in resources.split("<tr>") if t.node_address in r and "<td>gpu</td>" in r]
            assert '"num">2</td>' in gpu_row and '"num warn">1</td>' in gpu_row, gpu_row  # 2 offered, 1 free
            assert "401" in await _render(cluster.dashboard_url)  # type: ignore[arg-type]  # no token, no page
        finally:
            hang.cancel()
            await asyncio.gather(hang, return_exceptions=True)



async def test_with_metrics_off_calls_are_not_counted_and_on_they_are() -> None:
    from helpers import Counter, nodes, spawn
    async with nodes(2, config=disto.NodeConfig(metrics=False)) as (a, b):
        ref = await spawn(a, b, Counter)
        await ref.add(1)
        assert b.stats()["actors"][0]["methods"] == {}
    async with nodes(2, config=disto.NodeConfig(metrics=True)) as (a, b):
        ref = await spawn(a, b, Counter)
        await ref.add(1)
        with pytest.raises(ValueError):
            await ref.fail("no")
        methods = b.stats()["actors"][0]["methods"]
        assert methods["add"]["counts"] == {"ok": 1, "error": 0, "cancelled": 0}
        assert methods["fail"]["counts"]["error"] == 1
