"""Report the monitored metric to an Optuna trial at every validation, and stop a trial the
study's pruner gives up on.

Written for `hparams_search=optuna_lr` (`lmdisc.sweep.optuna_sweeper`), where each trial runs in
its own Hydra job: the job finds its trial in the sweep's journal file by number, and reports at
every validation (mid-epoch ones too, `trainer.val_check_interval`), so that a one-epoch
fine-tuning can be pruned. Optuna's own Lightning integration lives outside Optuna and reports at
epoch ends only. On a prune it marks the trial (the sweeper then tells it PRUNED) and stops the
trainer cleanly: the run still saves its best checkpoint and writes metrics.json.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class OptunaPruning(Callback):
    """`storage` (the journal file), `study_name` and `trial_number` are set per job by the
    sweeper; without them (a single run of an hparams_search config) the callback does nothing."""

    def __init__(
        self,
        storage: str | None = None,
        study_name: str | None = None,
        trial_number: int | None = None,
        monitor: str = "val/ppl",
    ) -> None:
        self.storage = storage
        self.study_name = study_name
        self.trial_number = trial_number
        self.monitor = monitor
        self.pruned_at_step: int | None = None
        self._trial = None

    @property
    def enabled(self) -> bool:
        return None not in (self.storage, self.study_name, self.trial_number)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.enabled:
            rank_zero_warn("OptunaPruning has no trial (not run by the Optuna sweeper): it does nothing")
            return
        if trainer.is_global_zero and self._trial is None:
            # imported here: Optuna is needed only by the jobs of a sweep
            from lmdisc.sweep.study import running_trial

            self._trial = running_trial(self.storage, self.study_name, int(self.trial_number))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.enabled:
            return
        prune = False
        if trainer.is_global_zero:
            prune = self._report(trainer)
        # every rank stops together, on rank 0's decision
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_at_step = trainer.global_step
            trainer.should_stop = True

    def _report(self, trainer: L.Trainer) -> bool:
        from lmdisc.sweep.study import PRUNED_AT_STEP

        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            rank_zero_warn(f"OptunaPruning: {self.monitor} was not logged at this validation; not reported")
            return False
        value = float(value)
        step = trainer.global_step
        self._trial.report(value, step)
        if not self._trial.should_prune():
            return False
        self._trial.set_user_attr(PRUNED_AT_STEP, step)
        rank_zero_info(
            f"Optuna trial {self.trial_number} pruned at step {step} ({self.monitor} {value:.4g}): stopping"
        )
        return True
