"""Low-communication training on disto: one outer optimizer over pseudo-gradients for the local-SGD family
(DiLoCo, Streaming DiLoCo, asynchronous DiLoCo with delayed Nesterov, local SGD, synchronous EASGD), with a
quorum per round, workers that join from the current outer parameters, resumable outer state, and the bytes each
worker moved, per round. The ``ddp`` baseline all-reduces gradients every step.

    from disto.lowcomm import Config, Trainer
    history = await Trainer(cluster, Config(algorithm="diloco", workers=4, inner_steps=50, rounds=10),
                            model_fn, data_fn, eval_fn).run()

See docs/lowcomm.md. The asynchronous EA-SGD parameter server of 2016 stays in ``disto.easgd``.
"""
from .codec import KINDS, Packed, decode, encode
from .config import ALGORITHMS, Config, gpu_each
from .lm import SIZES, GPTConfig, LMTask, TextSampler, TinyGPT, lm_loss, stdlib_corpus
from .plot import plot_runs
from .outer import OuterOptimizer, OuterState, async_diloco, diloco, easgd, local_sgd, overlap_merge_
from .rounds import RoundBook, Schedule
from .server import OuterServer
from .trainer import History, Trainer
from .worker import InnerWorker, inner_lr

__all__ = ["ALGORITHMS", "Config", "gpu_each", "Trainer", "History", "OuterOptimizer", "OuterState", "OuterServer",
           "InnerWorker", "RoundBook", "Schedule", "Packed", "encode", "decode", "KINDS", "diloco", "async_diloco",
           "easgd", "local_sgd", "inner_lr", "GPTConfig", "TinyGPT", "LMTask", "SIZES", "plot_runs", "TextSampler",
           "lm_loss", "stdlib_corpus", "overlap_merge_"]
