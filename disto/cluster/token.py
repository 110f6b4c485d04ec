"""Where the cluster token comes from: an argument, ``DISTO_TOKEN``, or a token file (``DISTO_TOKEN_FILE`` or
``--token-file``) that only its owner can read (mode 0600)."""
from __future__ import annotations

import os
import secrets
import stat

from ..errors import AuthenticationError


def new_token() -> str:
    return secrets.token_hex(32)


def write_token_file(path: str, token: str | None = None) -> str:
    """Write a token (a new one by default) to ``path`` with mode 0600; return it."""
    token = token or new_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode() + b"\n")
    finally:
        os.close(fd)
    return token


def read_token_file(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        raise AuthenticationError(f"cannot read token file {path}: {e}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthenticationError(f"token file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                                  f"run: chmod 600 {path}")
    with open(path) as f:
        token = f.read().strip()
    if not token:
        raise AuthenticationError(f"token file {path} is empty")
    return token


def resolve_token(token: str | bytes | None = None, token_file: str | None = None) -> str | bytes:
    """The token from the argument, else the token file argument, else DISTO_TOKEN, else DISTO_TOKEN_FILE: what
    is said explicitly wins over the environment."""
    if token:
        return token
    if token_file:
        return read_token_file(token_file)
    env = os.environ.get("DISTO_TOKEN")
    if env:
        return env
    path = os.environ.get("DISTO_TOKEN_FILE")
    if path:
        return read_token_file(path)
    raise AuthenticationError("no cluster token: pass token=..., set DISTO_TOKEN, or point DISTO_TOKEN_FILE "
                              "(or --token-file) at a file with mode 0600")


def token_source(token: str | bytes | None = None, token_file: str | None = None) -> str:
    """Where :func:`resolve_token` takes the token from, in words (for "token mismatch" messages)."""
    if token:
        return "the token argument (--token / token=)"
    if token_file:
        return f"the token file {token_file}"
    if os.environ.get("DISTO_TOKEN"):
        return "DISTO_TOKEN"
    if os.environ.get("DISTO_TOKEN_FILE"):
        return f"the token file {os.environ['DISTO_TOKEN_FILE']} (DISTO_TOKEN_FILE)"
    return "nowhere"
