"""The pipeline's plan: base LM (trained, or given) -> its evaluation -> discriminator -> fine-tuning
arms x learning rates x seeds, as `Stage`s; the grid is checked before anything runs."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from lmdisc.errors import LmdiscError

from .stages import Stage, only_pipeline_in, run_stage

# runs the fine-tuning grid's stages (`grid.GridLauncher`, through Hydra's launcher)
GridRunner = Callable[[list[Stage]], None]


def lr_label(lr: float) -> str:
    """A learning rate as it appears in a run's name: 15 significant digits, so near-equal rates differ."""
    return format(lr, ".15g")


def check_grid(finetune: Mapping) -> None:
    """Refuse an empty, duplicated or out-of-range grid before the base trains for an hour."""
    arms, lrs, seeds = finetune.get("arms") or {}, finetune.get("lrs") or [], finetune.get("seeds") or []
    if not arms or not lrs or not seeds:
        raise LmdiscError(
            f"pipeline.finetune needs at least one arm, lr and seed; got arms={list(arms)}, lrs={lrs}, seeds={seeds}"
        )
    for arm, overrides in arms.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(arm)):
            raise LmdiscError(
                f"pipeline.finetune.arms: {arm!r} is not a usable run name (letters, digits, _ and -)"
            )
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise LmdiscError(f"pipeline.finetune.arms.{arm} must be a list of overrides, got {overrides!r}")
    bad_lrs = [
        lr
        for lr in lrs
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr)
    ]
    if bad_lrs:
        raise LmdiscError(f"pipeline.finetune.lrs must be positive numbers, got {bad_lrs}")
    if len({lr_label(lr) for lr in lrs}) != len(lrs):
        raise LmdiscError(f"pipeline.finetune.lrs has a repeated value: {lrs}")
    if any(isinstance(seed, bool) or not isinstance(seed, int) for seed in seeds):
        raise LmdiscError(f"pipeline.finetune.seeds must be integers, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise LmdiscError(f"pipeline.finetune.seeds has a repeated value: {seeds}")


def _fill(override: str, disc_ckpt: str, base_ckpt: str) -> str:
    """Replace the two placeholders an arm may name; any other braces are left as written."""
    return override.replace("{disc_ckpt}", disc_ckpt).replace("{base_ckpt}", base_ckpt)


class Pipeline:
    """base LM (trained, or given) -> its evaluation -> discriminator -> arms x lrs x seeds."""

    def __init__(self, cfg: Mapping, out_dir: Path, shared: Iterable[str] = ()):
        check_grid(cfg["finetune"])
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.shared = list(shared)  # e.g. paths.data_dir / paths.root_dir, passed to every stage

    @property
    def _where(self) -> list[str]:
        """Where the training stages run (paths, `device`), passed after their overrides: their keys
        that only say where are left out of a stage's identity (`identity.IGNORED_KEYS`)."""
        return [*self.shared, *self.cfg["device"]]

    @staticmethod
    def _overrides(*groups: Iterable[str]) -> list[str]:
        return [o for g in groups for o in g]

    def base_stage(self) -> Stage | None:
        base = self.cfg["base"]
        if base.get("ckpt"):
            return None
        overrides = self._overrides(self.cfg["common"], base["overrides"])
        return Stage("base", "train", overrides, self.out_dir / "base", where=self._where)

    def base_checkpoint(self) -> str:
        given = self.cfg["base"].get("ckpt")
        if given:
            if not Path(given).is_file():
                raise LmdiscError(f"pipeline.base.ckpt={given} does not exist")
            return str(Path(given).resolve())
        return self.base_stage().output_checkpoint()

    def _data_overrides(self) -> list[str]:
        """The corpus part of `common`: eval.py and train_disc.py read the same data as the LM stages
        (rather than the path recorded in the base checkpoint, which may be another machine's)."""
        return [o for o in self.cfg["common"] if o.split("=", 1)[0].split(".", 1)[0] == "data"]

    def base_eval_stage(self, base_ckpt: str) -> Stage:
        out_dir = self.out_dir / "base_eval"
        overrides = [*self._data_overrides(), f"ckpt={base_ckpt}"]
        where = [*self.shared, f"metrics_file={out_dir / 'metrics.json'}"]
        return Stage("base_eval", "eval", overrides, out_dir, where=where)

    def disc_stage(self, base_ckpt: str) -> Stage:
        """Train the discriminator, or, given `pipeline.discriminator.ckpt`, only score that one."""
        given = self.cfg["discriminator"].get("ckpt")
        if given and not Path(given).is_file():
            raise LmdiscError(f"pipeline.discriminator.ckpt={given} does not exist")
        how = [f"disc_ckpt={Path(given).resolve()}"] if given else self.cfg["discriminator"]["overrides"]
        overrides = self._overrides(self._data_overrides(), [f"lm_ckpt={base_ckpt}"], how)
        return Stage(
            "discriminator", "train_disc", overrides, self.out_dir / "discriminator", where=self._where
        )

    def finetune_stages(self, base_ckpt: str, disc_ckpt: str) -> list[Stage]:
        """Every arm x lr x seed; an arm's overrides may name {disc_ckpt} and {base_ckpt}."""
        ft = self.cfg["finetune"]
        stages = []
        for arm, arm_overrides in ft["arms"].items():
            for lr in ft["lrs"]:
                for seed in ft["seeds"]:
                    name = f"{arm}_lr{lr_label(lr)}_seed{seed}"
                    overrides = self._overrides(
                        self.cfg["common"],
                        ft["overrides"],
                        [f"init_from={base_ckpt}"],
                        (_fill(o, disc_ckpt, base_ckpt) for o in arm_overrides),
                        [f"optim.optimizer.lr={lr}", f"seed={seed}"],
                    )
                    meta = {"arm": arm, "lr": lr, "seed": seed}
                    out_dir = self.out_dir / "finetune" / name
                    stages.append(Stage(name, "train", overrides, out_dir, meta, where=self._where))
        return stages

    def run(self, run_grid: GridRunner, log=print) -> dict:
        """The base, its evaluation and the discriminator here, one after another; then the grid
        through `run_grid`. Returns what the report needs."""
        with only_pipeline_in(self.out_dir):
            return self._run(run_grid, log)

    def _run(self, run_grid: GridRunner, log) -> dict:
        base = self.base_stage()
        if base is not None:
            run_stage(base, log)
        base_ckpt = self.base_checkpoint()
        evaluation, disc = self.base_eval_stage(base_ckpt), self.disc_stage(base_ckpt)
        run_stage(evaluation, log)
        run_stage(disc, log)
        stages = self.finetune_stages(base_ckpt, disc.output_checkpoint())
        run_grid(stages)
        return self._results(base, base_ckpt, evaluation, disc, stages, len(stages))

    def results_so_far(self) -> dict:
        """What the report needs, from the stages finished so far; runs nothing. A long grid (on a
        CPU, WikiText-2's is a day) can be looked at while it runs."""
        base = self.base_stage()
        if base is not None and not base.finished_as_planned:
            raise LmdiscError(f"nothing to report yet: the base LM has not finished ({base.out_dir})")
        base_ckpt = self.base_checkpoint()
        evaluation, disc = self.base_eval_stage(base_ckpt), self.disc_stage(base_ckpt)
        for stage in (evaluation, disc):
            if not stage.finished_as_planned:
                raise LmdiscError(
                    f"nothing to report yet: stage {stage.name} has not finished ({stage.out_dir})"
                )
        stages = self.finetune_stages(base_ckpt, disc.output_checkpoint())
        finished = [s for s in stages if s.finished_as_planned]
        if not finished:
            raise LmdiscError(
                f"nothing to report yet: none of the {len(stages)} fine-tuning runs has finished"
            )
        return self._results(base, base_ckpt, evaluation, disc, finished, len(stages))

    @staticmethod
    def _results(
        base, base_ckpt: str, evaluation: Stage, disc: Stage, runs: list[Stage], planned: int
    ) -> dict:
        return {
            "base_checkpoint": base_ckpt,
            "base_dir": str(base.out_dir) if base is not None else None,
            "base": evaluation.metrics(),
            "discriminator": disc.metrics(),
            "runs": [{**s.meta, "dir": str(s.out_dir), **s.metrics()} for s in runs],
            "planned_runs": planned,
        }
