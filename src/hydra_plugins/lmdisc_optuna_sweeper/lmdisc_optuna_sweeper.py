"""The Hydra plugin class of `hydra/sweeper=lmdisc_optuna`.

Hydra only instantiates plugins defined under the `hydra_plugins` namespace package, and imports
every module there at the start of every entry point: this class is a thin shell that imports
Optuna and the sweeper's code (`lmdisc.sweep.optuna_sweeper`) only when a sweep is built.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

import lmdisc.sweep.config  # noqa: F401  (registers hydra/sweeper=lmdisc_optuna)


class LmdiscOptunaSweeper(Sweeper):
    def __init__(self, **config: Any) -> None:
        from lmdisc.sweep.optuna_sweeper import OptunaSweeper

        self.sweeper = OptunaSweeper(**config)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)
