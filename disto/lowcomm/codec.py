"""Compressing what is exchanged: pseudo-gradients and parameter differences in fp32, fp16, bf16 or int8.

int8 is symmetric per block: each block of ``INT8_BLOCK`` values is scaled by its largest magnitude / 127 (one
fp32 scale per block, 1.6% on top of the int8 values). Encoding is deterministic, so both ends of an exchange
decode the same floats.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("fp32", "fp16", "bf16", "int8")
INT8_BLOCK = 256
_FLOAT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Packed:
    """An encoded flat vector: ``values`` (and ``scales`` for int8); ``numel`` of the original."""

    kind: str
    values: torch.Tensor
    numel: int
    scales: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """The bytes of tensor data this carries on the wire."""
        n = self.values.numel() * self.values.element_size()
        if self.scales is not None:
            n += self.scales.numel() * self.scales.element_size()
        return n


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"compression must be one of {KINDS}, not {kind!r}")
    return kind


def encode(t: torch.Tensor, kind: str = "fp32") -> Packed:
    """Encode the flat float tensor ``t`` (not modified)."""
    check_kind(kind)
    t = t.detach().reshape(-1)
    if kind != "int8":
        return Packed(kind, t.to(_FLOAT[kind]).clone() if kind == "fp32" else t.to(_FLOAT[kind]), t.numel())
    n = t.numel()
    pad = (-n) % INT8_BLOCK
    blocks = torch.nn.functional.pad(t.float(), (0, pad)).view(-1, INT8_BLOCK)
    scales = blocks.abs().amax(dim=1).div_(127.0)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = blocks.div(safe[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return Packed("int8", q.reshape(-1)[:n].clone(), n, scales)


def decode(p: Packed) -> torch.Tensor:
    """The fp32 flat tensor ``p`` stands for."""
    if p.kind != "int8":
        return p.values.to(torch.float32)
    n = p.numel
    pad = (-n) % INT8_BLOCK
    q = torch.nn.functional.pad(p.values.to(torch.float32), (0, pad)).view(-1, INT8_BLOCK)
    assert p.scales is not None
    return q.mul_(p.scales[:, None]).reshape(-1)[:n].contiguous()
