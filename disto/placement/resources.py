"""What a node has: CPUs, GPUs, memory and custom labels, as a dict of name -> amount.

Defaults: ``cpu`` is the number of CPUs in this process's affinity mask, ``gpu`` the CUDA devices it sees
(``CUDA_VISIBLE_DEVICES`` when set, else the devices the NVIDIA driver lists; torch is never imported for this),
``memory`` the machine's physical memory in bytes. What a node declares replaces the default of the same name;
any other name (``ssd``, ``ps``, ``big_mem``) is a custom label, counted like the rest.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
NVIDIA_GPUS = "/proc/driver/nvidia/gpus"


def _amount(value: Any, name: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what}: the amount of {name!r} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_resources(resources: Any, what: str = "resources") -> dict[str, float]:
    """``resources`` as a clean dict (names are non-empty strings, amounts finite numbers >= 0); ValueError
    saying what is wrong otherwise."""
    if not isinstance(resources, Mapping):
        raise ValueError(f"{what} must be a dict of name -> amount (e.g. {{'gpu': 1}}), got {resources!r}")
    out: dict[str, float] = {}
    for name, value in resources.items():
        if not isinstance(name, str) or not name or any(c in name for c in ",= \t\n"):
            raise ValueError(f"{what}: a resource name must be a non-empty string without ',', '=' or spaces, "
                             f"got {name!r}")
        out[name] = _amount(value, name, what)
    return out


def check_request(request: Any) -> dict[str, float]:
    """A spawn's ``resources=``: like :func:`check_resources`, zero amounts dropped (they ask for nothing)."""
    return {k: v for k, v in check_resources(request, "resources").items() if v > 0}


def parse_resources(text: str) -> dict[str, float]:
    """``"gpu=2,ssd=1,memory=64G"`` -> ``{"gpu": 2.0, "ssd": 1.0, "memory": 68719476736.0}`` (K, M, G, T: powers
    of 1024). ValueError on anything else."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name or not value:
            raise ValueError(f"bad resource {part!r}: expected NAME=AMOUNT, as in gpu=2,ssd=1")
        scale = UNITS.get(value[-1].lower(), 1)
        try:
            amount = float(value[:-1] if scale != 1 else value) * scale
        except ValueError:
            raise ValueError(f"bad amount in {part!r}: expected a number (memory may end in K, M, G or T)") from None
        out[name] = amount
    return check_resources(out)


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """The CUDA devices this process sees, by the ids that select them: ``CUDA_VISIBLE_DEVICES`` when set
    ("" or "-1": none), else the NVIDIA driver's device list as indices."""
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [d.strip() for d in listed.split(",") if d.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way to say "none"
        return ids[:next((i for i, d in enumerate(ids) if d.startswith("-")), len(ids))]
    try:
        return [str(i) for i in range(len(os.listdir(NVIDIA_GPUS)))]
    except OSError:
        return []


def detect_resources(declared: Mapping[str, float] | None = None,
                     env: Mapping[str, str] | None = None) -> dict[str, float]:
    """This node's resources: the defaults (cpu, gpu, memory) with ``declared`` on top."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        memory = float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        memory = 0.0
    out = {"cpu": float(cpus), "gpu": float(len(visible_gpus(env))), "memory": memory}
    out.update(check_resources(declared or {}))
    return out


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) else f"{v:g}"


def format_resources(resources: Mapping[str, float]) -> str:
    """``{"gpu": 2, "memory": 2**34}`` -> ``"gpu=2 memory=16G"``: short, for messages and tables."""
    parts = []
    for name in sorted(resources, key=lambda n: (n not in ("cpu", "gpu", "memory"), n)):
        v = resources[name]
        if name == "memory" and v >= UNITS["m"]:
            unit = next(u for u in "tgm" if v >= UNITS[u])
            parts.append(f"memory={_num(round(v / UNITS[unit], 1))}{unit.upper()}")
        else:
            parts.append(f"{name}={_num(v)}")
    return " ".join(parts) or "nothing"
