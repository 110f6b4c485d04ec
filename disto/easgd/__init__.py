"""EA-SGD on disto: elastic averaging SGD with the center sharded over parameter-server actors.

    from disto.easgd import EASGDConfig, Trainer
    history = await Trainer(cluster, EASGDConfig(workers=2, tau=10), model_fn, data_fn, test).run(seconds=60)

See docs/easgd.md. ``simulate`` runs the same updates in virtual time (p workers round-robin in one process).
"""
from .actors import CenterShard, Worker
from .algorithms import ALGORITHMS, EASGDConfig, LocalLearner, accuracy, center_step_, elastic_step_, flatten_
from .algorithms import shard_bounds
from .data import mlp, mnist1d
from .trainer import History, Trainer
from .virtual import simulate

__all__ = ["ALGORITHMS", "EASGDConfig", "Trainer", "History", "simulate", "CenterShard", "Worker", "LocalLearner",
           "accuracy", "elastic_step_", "center_step_", "flatten_", "shard_bounds", "mlp", "mnist1d"]
