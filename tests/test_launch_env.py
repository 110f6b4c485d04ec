"""Level 1: reading a launcher's environment (torchrun, SLURM) and the cluster token's sources; no processes."""
from __future__ import annotations

import os

import pytest

import disto
from disto.cluster import read_token_file, resolve_token
from disto.launch import first_slurm_host, read_env


def test_launcher_environments() -> None:
    le = read_env({"RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert (le.rank, le.world, le.seed_host, le.seed_port, le.host) == (1, 4, "127.0.0.1", 29501, "127.0.0.1")
    le = read_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "localhost",
                   "DISTO_PORT": "7000"})
    assert (le.rank, le.world, le.seed_host, le.seed_port) == (3, 8, "127.0.0.1", 7000)
    assert first_slurm_host("gpu[03-05,07],cpu1") == "gpu03"
    assert first_slurm_host("node7") == "node7"
    assert first_slurm_host("a-b[1,2]") == "a-b1"
    with pytest.raises(disto.DistoError):
        read_env({})
    with pytest.raises(disto.DistoError):
        read_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_the_token_comes_from_the_arguments_then_the_environment(tmp_path, monkeypatch) -> None:
    path = tmp_path / "token"
    disto.write_token_file(str(path), "from-the-file-0123456789")
    assert (path.stat().st_mode & 0o777) == 0o600
    monkeypatch.setenv("DISTO_TOKEN", "from-the-env-0123456789")
    assert resolve_token("from-the-arg-0123456789", str(path)) == "from-the-arg-0123456789"
    assert resolve_token(None, str(path)) == "from-the-file-0123456789"  # an explicit file beats DISTO_TOKEN
    assert resolve_token(None, None) == "from-the-env-0123456789"
    monkeypatch.delenv("DISTO_TOKEN")
    monkeypatch.setenv("DISTO_TOKEN_FILE", str(path))
    assert resolve_token(None, None) == "from-the-file-0123456789"
    os.chmod(path, 0o640)
    with pytest.raises(disto.AuthenticationError, match="chmod 600"):
        read_token_file(str(path))
    monkeypatch.delenv("DISTO_TOKEN_FILE", raising=False)
    with pytest.raises(disto.AuthenticationError, match="no cluster token"):
        resolve_token(None, None)
