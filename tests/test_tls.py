"""Mutual TLS between nodes: certificates this test makes, in-process nodes and a real cluster started with
--tls-* flags. A peer without a certificate of the cluster's CA gets nothing, and the nodes keep serving."""
from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("cryptography")

import disto  # noqa: E402
from helpers import HERE, TOKEN, Counter, channel_to, channels, eventually, spawn  # noqa: E402
from tls_certs import CA  # noqa: E402



@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    d = str(tmp_path_factory.mktemp("pki"))
    ca, stranger = CA(d, "cluster"), CA(d, "stranger")
    out = {"ca": ca.path, "stranger_ca": stranger.path}
    for name in ("a", "b", "c"):
        out[name] = ca.issue(f"node-{name}")
    out["wrong_name"] = ca.issue("elsewhere", ips=("10.9.9.9",), dns=("elsewhere.invalid",))
    out["stranger"] = stranger.issue("mallory")
    return out


def cfg(pki: dict, who: str, ca: str | None = None, **kw) -> disto.NodeConfig:
    cert, key = pki[who]
    return disto.NodeConfig(tls_cert=cert, tls_key=key, tls_ca=ca or pki["ca"], handshake_timeout=2.0, **kw)


async def test_tls_nodes_call_each_other_and_move_tensors(pki) -> None:
    async with disto.Node(TOKEN, config=cfg(pki, "a")) as a:
        async with disto.Node(TOKEN, seed=a.address, config=cfg(pki, "b")) as b:
            ref = await spawn(a, b, Counter, 5)
            assert await ref.add(1) == 6
            big = np.arange(1 << 20, dtype=np.float32)
            with disto.transfer("tcp"):  # through the TLS socket, not shared memory
                back = await ref.echo(big)
            assert np.array_equal(back, big)
            ch = channel_to(a, b.address)
            assert isinstance(ch.transport.get_extra_info("ssl_object"), ssl.SSLObject)
            assert ch.transport.get_extra_info("peercert")["subject"][0][0][1] == "node-b"


@pytest.mark.parametrize("who", ["plain", "stranger"])
async def test_peers_without_a_valid_certificate_get_nothing(pki, who) -> None:
    async with disto.Node(TOKEN, config=cfg(pki, "a")) as a:
        if who == "plain":
            config = disto.NodeConfig(handshake_timeout=2.0)
        else:
            config = cfg(pki, "stranger", ca=pki["ca"])  # trusts our CA, but its own cert is not ours
        # the intruder is a client node: it dials the seed and never gets a member list
        with pytest.raises((disto.AuthenticationError, disto.NodeLostError)):
            async with disto.Node(TOKEN, listen=None, seed=a.address, role="client", config=config) as bad:
                await asyncio.wait_for(bad.registry.members(), 10)
        async with disto.Node(TOKEN, seed=a.address, config=cfg(pki, "b")) as b:
            ref = await spawn(b, a, Counter)
            assert await ref.add(2) == 2
            # the intruder's half-open channel (its TLS handshake failed: asyncio tells the protocol nothing) is
            # dropped by the handshake timer
            await eventually(lambda: len(channels(a)) == 1, timeout=10,
                             what="the intruder's half-open channel to be dropped")


async def test_dialer_refuses_a_listener_with_a_foreign_certificate(pki) -> None:
    async with disto.Node(TOKEN, config=cfg(pki, "stranger", ca=pki["ca"])) as evil:
        with pytest.raises(disto.AuthenticationError, match="TLS handshake"):
            async with disto.Node(TOKEN, listen=None, seed=evil.address, role="client", config=cfg(pki, "a")) as me:
                await me.registry.members()


async def test_dialer_checks_the_listeners_name_unless_told_not_to(pki) -> None:
    # signed by the cluster CA, but naming 10.9.9.9: a dialer checking host names refuses it
    async with disto.Node(TOKEN, config=cfg(pki, "wrong_name")) as odd:
        with pytest.raises(disto.AuthenticationError, match="TLS handshake"):
            async with disto.Node(TOKEN, listen=None, seed=odd.address, role="client", config=cfg(pki, "a")) as me:
                await me.registry.members()
        relaxed = cfg(pki, "a", tls_check_hostname=False)
        async with disto.Node(TOKEN, listen=None, seed=odd.address, role="client", config=relaxed) as me:
            assert [m["address"] for m in await me.registry.members()] == [odd.address]


def test_tls_settings_are_checked(pki) -> None:
    with pytest.raises(ValueError, match="missing --tls-key"):
        disto.Node(TOKEN, config=disto.NodeConfig(tls_cert=pki["a"][0], tls_ca=pki["ca"]))
    with pytest.raises(ValueError, match="not found"):
        disto.Node(TOKEN, config=disto.NodeConfig(tls_cert="/nonexistent.pem", tls_key=pki["a"][1], tls_ca=pki["ca"]))
    with pytest.raises(ValueError, match="cannot load"):
        disto.Node(TOKEN, config=disto.NodeConfig(tls_cert=pki["a"][0], tls_key=pki["b"][1], tls_ca=pki["ca"]))


@pytest.mark.loops("uvloop")
async def test_cluster_processes_with_tls_flags(pki) -> None:
    config = cfg(pki, "c")
    cluster_token = disto.new_token()
    async with disto.LocalCluster(nodes=2, config=config, env={"PYTHONPATH": HERE}, token=cluster_token) as cluster:
        ref = await cluster.nodes[1].spawn(Counter, 1)
        assert await ref.add(1) == 2
        # the command-line client needs the flags too; without them it cannot even ask for the status
        seed = cluster.nodes[0].address
        env = dict(os.environ, DISTO_TOKEN=TOKEN)
        flags = ["--tls-cert", pki["c"][0], "--tls-key", pki["c"][1], "--tls-ca", pki["ca"]]
        token = ["--token", cluster_token]
        ok = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "disto", "status", seed, *token, *flags],
                                     capture_output=True, text=True, env=env, timeout=60)
        assert ok.returncode == 0, ok.stderr
        assert "Counter" in ok.stdout
        bad = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "disto", "status", seed, *token],
                                      capture_output=True, text=True, env=env, timeout=60)
        assert bad.returncode != 0
