"""Mutual TLS for node-to-node and client connections (stdlib ssl).

TLS sits under disto's own handshake, which still runs: a peer must hold a certificate signed by the cluster's CA
*and* know the cluster token. TLS adds confidentiality and integrity on the wire (the token handshake alone only
authenticates). Shared-memory transfers between processes on one host do not touch the network and are not
encrypted; UDP heartbeats carry no payload and are authenticated with the token (HMAC).
"""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

ENV = {"cert": "DISTO_TLS_CERT", "key": "DISTO_TLS_KEY", "ca": "DISTO_TLS_CA"}


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    ca: str
    check_hostname: bool = True

    @classmethod
    def from_parts(cls, cert: str | None, key: str | None, ca: str | None,
                   check_hostname: bool = True) -> "TlsFiles | None":
        """None when none of the three is given; an error when only some are."""
        given = {"cert": cert, "key": key, "ca": ca}
        if not any(given.values()):
            return None
        missing = [k for k, v in given.items() if not v]
        if missing:
            raise ValueError(f"TLS needs a certificate, its key and the cluster CA: missing --tls-{missing[0]} "
                             f"(tls_{missing[0]})")
        for k, v in given.items():
            if not os.path.isfile(v):  # type: ignore[arg-type]
                raise ValueError(f"TLS {k} file not found: {v}")
        return cls(cert, key, ca, check_hostname)  # type: ignore[arg-type]

    def _context(self, purpose: ssl.Purpose) -> ssl.SSLContext:
        ctx = ssl.create_default_context(purpose, cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as e:
            raise ValueError(f"cannot load the TLS certificate {self.cert} with key {self.key}: {e}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual: a listener asks every dialer for a certificate too
        return ctx

    def server_context(self) -> ssl.SSLContext:
        return self._context(ssl.Purpose.CLIENT_AUTH)

    def client_context(self) -> ssl.SSLContext:
        ctx = self._context(ssl.Purpose.SERVER_AUTH)
        # nodes are dialled by address: with hostname checking, a node's certificate must name the address it
        # listens on (an IP SAN or DNS name); without it, any certificate of the cluster's CA is accepted
        ctx.check_hostname = self.check_hostname
        return ctx


def from_env() -> dict[str, str | None]:
    return {k: os.environ.get(v) or None for k, v in ENV.items()}
