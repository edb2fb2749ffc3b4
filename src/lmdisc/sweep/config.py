"""`hydra/sweeper=lmdisc_optuna`: the Optuna sweeper's structured config, registered in Hydra's ConfigStore.

Kept apart from the sweeper's code so that registering it (Hydra imports every plugin at the start
of every entry point) does not import Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.lmdisc_optuna_sweeper.lmdisc_optuna_sweeper.LmdiscOptunaSweeper"
    # the sweeper builds the sampler and pruner itself (the sampler's seed moves on when a study resumes)
    _recursive_: bool = False
    study_name: str = "lmdisc"
    # an Optuna journal file: many processes may write it (each trial's job reports to it), and a
    # second run of the same command with the same hydra.sweep.dir continues the study
    storage: str = "${hydra.sweep.dir}/optuna_journal.log"
    direction: str = "minimize"
    # trials to have finished (complete or pruned) in the study, counting earlier runs of the sweep
    n_trials: int = 8
    # trials asked per batch and launched together (in parallel with a parallel launcher, e.g. joblib)
    n_jobs: int = 1
    # failed trials one run of the sweep tolerates; one more stops it (running it again retries them)
    max_failures: int = 3
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    # null: no pruning (no pruning callback is added to the jobs)
    pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner"})
    # key: Hydra sweep syntax, e.g. {optim.optimizer.lr: "tag(log, interval(1e-4, 1e-1))"};
    # sweeps given on the command line are added to these (and win for the same key)
    params: dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="lmdisc_optuna", node=OptunaSweeperConf)
