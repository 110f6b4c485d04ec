"""A small decoder-only transformer and a text corpus every machine here has: the Python standard library's own
source files, read as bytes (vocabulary 256), split by file into train and validation. Never downloads."""
from __future__ import annotations

import glob
import math
import os
import sysconfig
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "disto", "stdlib-corpus-{tag}.npz")


def stdlib_files(root: str | None = None) -> list[str]:
    """The standard library's .py files, without its test suites and third-party packages, sorted."""
    root = root or sysconfig.get_paths()["stdlib"]
    skip = ("/test/", "/tests/", "/site-packages/", "/dist-packages/", "/idlelib/idle_test/", "/lib2to3/tests/")
    files = [f for f in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
             if not any(s in f.replace(os.sep, "/") for s in skip)]
    return sorted(files)


def is_validation(path: str, root: str, fraction: float) -> bool:
    """A stable split by file: the crc32 of the path relative to the library root."""
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    return (zlib.crc32(rel.encode()) % 1000) < fraction * 1000


def stdlib_corpus(validation: float = 0.1, root: str | None = None, cache: str | None = None
                  ) -> dict[str, np.ndarray]:
    """{"train": uint8 array, "val": uint8 array, "files": (train files, val files)}; files are joined with a
    NUL byte between them. Cached in ~/.cache/disto per Python version (a few MB)."""
    if not 0 < validation < 1:
        raise ValueError(f"validation must be a fraction in (0, 1), got {validation}")
    root = root or sysconfig.get_paths()["stdlib"]
    tag = f"py{sysconfig.get_python_version()}-{zlib.crc32(root.encode()):08x}-v{int(validation * 1000)}"
    path = (cache or DEFAULT_CACHE).format(tag=tag)
    if os.path.exists(path):
        with np.load(path) as f:
            return {"train": f["train"], "val": f["val"], "files": (int(f["files"][0]), int(f["files"][1]))}
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    for f in stdlib_files(root):
        with open(f, "rb") as fh:
            parts[is_validation(f, root, validation)].append(fh.read())
    if not parts[True] or not parts[False]:
        raise ValueError(f"no standard library source found under {root}")
    out = {k: np.frombuffer(b"\0".join(parts[v]), dtype=np.uint8).copy() for k, v in (("train", False), ("val", True))}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, train=out["train"], val=out["val"], files=np.array([len(parts[False]), len(parts[True])]))
    os.replace(tmp, path)
    return {**out, "files": (len(parts[False]), len(parts[True]))}


class TextSampler:
    """Random windows of ``context + 1`` bytes: (x, y) with y the next byte of each position."""

    def __init__(self, data: np.ndarray | torch.Tensor, context: int) -> None:
        self.data = torch.as_tensor(np.asarray(data), dtype=torch.uint8)
        if self.data.numel() <= context + 1:
            raise ValueError(f"a corpus of {self.data.numel()} bytes is too short for windows of {context + 1}")
        self.context = context

    def __call__(self, gen: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = torch.randint(0, self.data.numel() - self.context - 1, (batch,), generator=gen)
        idx = start[:, None] + torch.arange(self.context + 1)
        w = self.data[idx].long()
        return w[:, :-1], w[:, 1:]

    def fixed(self, batches: int, batch: int, seed: int = 1234) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The same windows every time (validation)."""
        gen = torch.Generator().manual_seed(seed)
        return [self(gen, batch) for _ in range(batches)]


@dataclass(frozen=True)
class GPTConfig:
    vocab: int = 256
    context: int = 128
    layers: int = 4
    dim: int = 256
    heads: int = 4
    mlp: int = 4


class Block(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.norm1 = nn.LayerNorm(c.dim)
        self.qkv = nn.Linear(c.dim, 3 * c.dim)
        self.proj = nn.Linear(c.dim, c.dim)
        self.norm2 = nn.LayerNorm(c.dim)
        self.up = nn.Linear(c.dim, c.mlp * c.dim)
        self.down = nn.Linear(c.mlp * c.dim, c.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyGPT(nn.Module):
    """Pre-norm decoder-only transformer with learned positions and tied embeddings."""

    def __init__(self, c: GPTConfig = GPTConfig()) -> None:
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.vocab, c.dim)
        self.pos = nn.Parameter(torch.zeros(c.context, c.dim))
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.dim)
        self.apply(self._init)
        for b in self.blocks:  # scaled residual projections (GPT-2)
            nn.init.normal_(b.proj.weight, std=0.02 / math.sqrt(2 * c.layers))
            nn.init.normal_(b.down.weight, std=0.02 / math.sqrt(2 * c.layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.config.context:
            raise ValueError(f"sequence of {t} is longer than the context {self.config.context}")
        x = self.embed(idx) + self.pos[:t]
        for b in self.blocks:
            x = b(x)
        return self.norm(x) @ self.embed.weight.t()


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross entropy (nats)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


SIZES = {  # presets: (name -> GPTConfig); "base" is the few-million-parameter model of the example
    "tiny": GPTConfig(context=64, dim=128, layers=2, heads=4),     # 0.44M parameters, ~80 ms a step of 16 on a core
    "small": GPTConfig(context=128, dim=192, layers=4, heads=4),   # 1.9M
    "base": GPTConfig(),                                           # 3.3M
}
_VAL_CACHE: dict[tuple[int, int, int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}


@dataclass(frozen=True)
class LMTask:
    """The language-model task of the example and the benchmark, as the three functions a Trainer takes:
    ``model`` builds a TinyGPT, ``data(rank)`` samples windows of the training files (on each worker's node),
    ``evaluate(model)`` is the mean loss over ``val_batches`` fixed batches of the validation files. Pickles by
    reference (it lives in this module), so the nodes need nothing but disto."""

    gpt: GPTConfig = GPTConfig()
    val_batches: int = 8
    val_batch: int = 32
    seed: int = 1234

    @classmethod
    def sized(cls, size: str, **kw: int) -> "LMTask":
        if size not in SIZES:
            raise ValueError(f"size is one of {sorted(SIZES)}, not {size!r}")
        return cls(SIZES[size], **kw)

    def model(self) -> TinyGPT:
        return TinyGPT(self.gpt)

    def data(self, rank: int) -> TextSampler:
        return TextSampler(stdlib_corpus()["train"], self.gpt.context)

    def validation(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        key = (self.gpt.context, self.val_batches, self.val_batch, self.seed)
        if key not in _VAL_CACHE:
            _VAL_CACHE[key] = TextSampler(stdlib_corpus()["val"], self.gpt.context).fixed(
                self.val_batches, self.val_batch, self.seed)
        return _VAL_CACHE[key]

    def evaluate(self, model: nn.Module) -> float:
        device = next(model.parameters()).device
        with torch.no_grad():
            losses = [lm_loss(model(x.to(device)), y.to(device)).item() for x, y in self.validation()]
        return sum(losses) / len(losses)
