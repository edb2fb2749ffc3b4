"""The pipeline's plan: base LM (trained, given, or a pretrained model as it is) -> its evaluation ->
discriminator(s) -> fine-tuning arms x learning rates x seeds -> extra evaluations, as `Stage`s;
the grid is checked before anything runs.

Placeholders an override may name: `{base_ckpt}` and `{base_dir}` (the base's checkpoint and run
directory, e.g. `data.tokenizer_from={base_dir}`), `{disc_ckpt}` (the discriminator chosen by
validation BCE) and `{slice:NAME}` (a named slice of a corpus, `slices.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from lmdisc.errors import LmdiscError
from lmdisc.io import atomic_write_json

from .selection import best_by_validation
from .slices import check_slices, fill_slices, write_slices
from .spec import Arm, EvalSpec, arms_of, check_grid, check_pairs, evals_of, lr_label
from .stages import Stage, only_pipeline_in, resources, run_stage

__all__ = ["GridRunner", "Pipeline", "check_grid", "lr_label"]

# runs the fine-tuning grid's stages (`grid.GridLauncher`, through Hydra's launcher)
GridRunner = Callable[[list[Stage]], None]
# train_disc.py's refusal when no checkpoint beat the zero head (cli/train_disc.py)
ZERO_HEAD_REFUSAL = "never beat the zero head"


class Pipeline:
    """base LM -> its evaluation -> discriminator(s) -> arms x lrs x seeds -> extra evaluations."""

    def __init__(self, cfg: Mapping, out_dir: Path, shared: Iterable[str] = ()):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.arms: list[Arm] = arms_of(cfg["finetune"])
        self.evals: list[EvalSpec] = evals_of(cfg["finetune"])
        check_pairs(cfg.get("paired"), self.arms)
        self.slices = check_slices(cfg.get("slices"))
        self.shared = list(shared)  # e.g. paths.data_dir / paths.root_dir, passed to every stage
        if self.slices:
            self.shared.append(f"++paths.slices={self.out_dir / 'slices'}")
        self._check_sources()

    # ---- what the config says ------------------------------------------------------------
    @property
    def base(self) -> Mapping:
        return self.cfg["base"]

    @property
    def disc_cfg(self) -> Mapping | None:
        return self.cfg.get("discriminator")

    @property
    def pretrained_base(self) -> bool:
        """The model of `common` is the base as it is (zero-shot): no training stage, no checkpoint."""
        return bool(self.base.get("pretrained")) and not self.base.get("ckpt")

    def _check_sources(self) -> None:
        """Refuse, before anything runs, a run that needs a base checkpoint or discriminator the
        pipeline will not have."""
        if self.base.get("pretrained") and self.base.get("ckpt"):
            raise LmdiscError("pipeline.base: give ckpt (a trained base) or pretrained: true, not both")
        named = " ".join(
            [
                *self.cfg["finetune"].get("overrides", []),
                *(o for arm in self.arms for o in arm.overrides),
                *(o for spec in self.evals for o in spec.overrides),
            ]
        )
        if self.pretrained_base:
            starting = [a.name for a in self.arms if a.init == "base"]
            if starting or "{base_ckpt}" in named or "{base_dir}" in named:
                raise LmdiscError(
                    f"pipeline.base.pretrained: there is no base checkpoint to start from or name (arms "
                    f"{starting or 'naming {base_ckpt} / {base_dir}'}); give those arms init_from: none"
                )
            if self.disc_cfg:
                raise LmdiscError(
                    "a discriminator is trained against a base checkpoint (q_0): with pipeline.base.pretrained, "
                    "set pipeline.discriminator: null"
                )
        if self.base.get("ckpt") and "{base_dir}" in named:
            raise LmdiscError(
                "{base_dir} names the base's run directory: a given pipeline.base.ckpt has none"
            )
        if not self.disc_cfg and "{disc_ckpt}" in named:
            raise LmdiscError("an arm names {disc_ckpt} but pipeline.discriminator is null")
        disc = self.disc_cfg or {}
        for group in (
            self.cfg["common"],
            self.base.get("overrides") or [],
            self.base.get("eval") or [],
            disc.get("data") or [],
            disc.get("overrides") or [],
            *(disc.get("candidates") or {}).values(),
            named.split(" "),
        ):
            self._fill(group)  # a {slice:NAME} that pipeline.slices does not define is refused now

    def _fill(self, overrides: Iterable[str], **values: str) -> list[str]:
        """Replace the placeholders an override may name; any other braces are left as written."""
        filled = []
        for override in overrides:
            for key, value in values.items():
                override = override.replace("{" + key + "}", value)
            filled.append(fill_slices(override, self.slices))
        return filled

    @property
    def _where(self) -> list[str]:
        """Where the training stages run (paths, `device`), passed after their overrides: their keys
        that only say where are left out of a stage's identity (`identity.IGNORED_KEYS`)."""
        return [*self.shared, *self.cfg["device"]]

    def _common_of(self, *groups: str) -> list[str]:
        """The parts of `common` in these config groups (eval.py and train_disc.py have no trainer
        or loss: they read the corpus, and a pretrained base's model, from `common`)."""
        return [
            o
            for o in self._fill(self.cfg["common"])
            if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] in groups
        ]

    # ---- stages --------------------------------------------------------------------------
    def base_stage(self) -> Stage | None:
        if self.base.get("ckpt") or self.pretrained_base:
            return None
        overrides = self._fill([*self.cfg["common"], *self.base["overrides"]])
        return Stage("base", "train", overrides, self.out_dir / "base", where=self._where)

    def base_checkpoint(self) -> str | None:
        given = self.base.get("ckpt")
        if given:
            if not Path(given).is_file():
                raise LmdiscError(f"pipeline.base.ckpt={given} does not exist")
            return str(Path(given).resolve())
        stage = self.base_stage()
        return stage.output_checkpoint() if stage is not None else None

    def _source(self, ckpt: str | None) -> list[str]:
        """What an eval.py stage scores: a checkpoint, or (no checkpoint) the pretrained model of `common`."""
        return [f"ckpt={ckpt}"] if ckpt else self._common_of("model")

    def base_eval_stage(self, base_ckpt: str | None) -> Stage:
        out_dir = self.out_dir / "base_eval"
        overrides = [
            *self._common_of("data"),
            *self._source(base_ckpt),
            *self._fill(self.base.get("eval") or []),
        ]
        where = [*self.shared, f"metrics_file={out_dir / 'metrics.json'}"]
        return Stage("base_eval", "eval", overrides, out_dir, where=where)

    def disc_stages(self, base_ckpt: str) -> list[Stage]:
        """Train each candidate discriminator, or, given `pipeline.discriminator.ckpt`, only score that
        one. One candidate (`overrides`) is the stage `discriminator`; several (`candidates`) are
        `discriminator_<name>`, the best by validation BCE chosen after."""
        disc = self.disc_cfg
        given = disc.get("ckpt")
        if given and not Path(given).is_file():
            raise LmdiscError(f"pipeline.discriminator.ckpt={given} does not exist")
        data = self._fill(disc["data"]) if disc.get("data") else self._common_of("data")
        head = [*data, f"lm_ckpt={base_ckpt}"]
        if given:
            candidates = {"discriminator": [f"disc_ckpt={Path(given).resolve()}"]}
        elif disc.get("candidates"):
            candidates = {f"discriminator_{name}": list(o) for name, o in disc["candidates"].items()}
        else:
            candidates = {"discriminator": list(disc["overrides"])}
        return [
            Stage(
                name,
                "train_disc",
                [*head, *self._fill(how)],
                self.out_dir / name,
                {"candidate": name},
                self._where,
            )
            for name, how in candidates.items()
        ]

    def finetune_stages(
        self, base_ckpt: str | None, disc_ckpt: str | None, base_dir: str | None = None
    ) -> list[Stage]:
        """Every arm x lr x seed (an arm that names {disc_ckpt} is left out when there is no
        discriminator to name: none beat the zero head)."""
        ft = self.cfg["finetune"]
        values = {"base_ckpt": base_ckpt or "", "base_dir": base_dir or ""}
        stages = []
        for arm in self.arms:
            if disc_ckpt is None and any("{disc_ckpt}" in o for o in arm.overrides):
                continue
            start = arm.init or ("base" if base_ckpt else "none")
            for lr in arm.lrs:
                for seed in arm.seeds:
                    name = f"{arm.name}_lr{lr_label(lr)}_seed{seed}"
                    overrides = [
                        *self._fill(self.cfg["common"]),
                        *self._fill(ft["overrides"], **values),
                        *([f"init_from={base_ckpt}"] if start == "base" else []),
                        *self._fill(arm.overrides, **values, disc_ckpt=disc_ckpt or ""),
                        f"optim.optimizer.lr={lr}",
                        f"seed={seed}",
                    ]
                    meta = {"arm": arm.name, "lr": lr, "seed": seed}
                    out_dir = self.out_dir / "finetune" / name
                    stages.append(Stage(name, "train", overrides, out_dir, meta, where=self._where))
        return stages

    def eval_stage(self, spec: EvalSpec, target: str, ckpt: str | None, base_dir: str | None = None) -> Stage:
        """eval.py on a run's checkpoint (or the base: its checkpoint, or the pretrained model)."""
        out_dir = self.out_dir / "evals" / spec.name / target
        overrides = [*self._fill(spec.overrides, base_dir=base_dir or ""), *self._source(ckpt)]
        if spec.score:
            overrides.append(f"score_file=${{data.path}}/{spec.score}.txt")
            where = [*self.shared, f"score_out={out_dir / f'{spec.score}.scores.jsonl'}"]
        else:
            where = [*self.shared, f"metrics_file={out_dir / 'metrics.json'}"]
        meta = {"eval": spec.name, "target": target}
        return Stage(f"{spec.name}/{target}", "eval", overrides, out_dir, meta, where, spec.done_file)

    # ---- running -------------------------------------------------------------------------
    def run(self, run_grid: GridRunner, log=print) -> dict:
        """Slices, the base, its evaluation and the discriminator(s) here, one after another; then
        the grid through `run_grid`; then the extra evaluations. Returns what the report needs."""
        with only_pipeline_in(self.out_dir):
            return self._walk(log, run_grid)

    def results_so_far(self) -> dict:
        """What the report needs, from the stages finished so far; runs nothing. A long grid (on a
        CPU, WikiText-2's is a day) can be looked at while it runs."""
        return self._walk(None, None)

    def _walk(self, log, run_grid: GridRunner | None) -> dict:
        """The plan in order. With `run_grid` every stage runs (or is reused); without, only the
        finished ones are read, and the base and discriminator must have finished."""
        running = run_grid is not None
        slices = write_slices(self.slices, self.out_dir / "slices", log) if running and self.slices else {}
        base = self.base_stage()
        if base is not None:
            self._need(base, running, log)
        base_ckpt = self.base_checkpoint()
        base_dir = str(base.out_dir) if base is not None else None
        evaluation = self.base_eval_stage(base_ckpt)
        self._need(evaluation, running, log)
        discs, disc = self._discriminators(base_ckpt, running, log) if self.disc_cfg else ({}, None)
        if self.disc_cfg and disc is None and log:
            log("[disc] no discriminator beat the zero head: the arms naming {disc_ckpt} are left out")
        disc_ckpt = disc.output_checkpoint() if disc is not None else None
        stages = self.finetune_stages(base_ckpt, disc_ckpt, base_dir)
        if running:
            run_grid(stages)
        finished = [s for s in stages if running or s.finished_as_planned]
        if not finished:
            raise LmdiscError(
                f"nothing to report yet: none of the {len(stages)} fine-tuning runs has finished"
            )
        runs = [self._run_record(s, base_dir, running, log) for s in finished]
        base_evals = {
            spec.name: self._eval_record(self.eval_stage(spec, "base", base_ckpt, base_dir), running, log)
            for spec in self.evals
            if spec.base
        }
        for arm in best_by_validation([r for r in runs if "val/ppl" in r]).values():
            for run in arm["runs"]:
                for spec in (s for s in self.evals if s.runs == "best"):
                    stage = self.eval_stage(spec, Path(run["dir"]).name, run["checkpoint_used"], base_dir)
                    run["evals"][spec.name] = self._eval_record(stage, running, log)
        skipped = sorted({a.name for a in self.arms} - {s.meta["arm"] for s in stages})
        return {
            "kind": self.cfg.get("report") or "rkl",
            "base_checkpoint": base_ckpt,
            "base_model": None if base_ckpt else self._common_of("model"),
            "base_dir": base_dir,
            "base": evaluation.metrics(),
            "base_evals": {k: v for k, v in base_evals.items() if v is not None},
            "discriminator": disc.metrics() if disc is not None else None,
            "discriminators": discs,
            "skipped_arms": skipped,
            "slices": slices or self._described_slices(),
            "score_with": self.cfg["finetune"].get("score_with"),
            # [[A, B], ...]: the differences A − B the report pairs (default: rkl_disc − control, rkl_disc − ce)
            "paired": self.cfg.get("paired"),
            "runs": runs,
            "planned_runs": len(stages),
        }

    def _need(self, stage: Stage, running: bool, log) -> None:
        if running:
            run_stage(stage, log)
        elif not stage.finished_as_planned:
            raise LmdiscError(f"nothing to report yet: stage {stage.name} has not finished ({stage.out_dir})")

    def _run_record(self, stage: Stage, base_dir: str | None, running: bool, log) -> dict:
        """A grid run's metrics, its resources and its `runs: all` evaluations; with `score_with`,
        that evaluation's val/test numbers (and buckets) stand for the run's own."""
        ckpt = stage.output_checkpoint()
        record = {**stage.meta, "dir": str(stage.out_dir), **stage.metrics(), "checkpoint_used": ckpt}
        record["resources"] = resources(stage.out_dir)
        record["evals"] = {}
        for spec in (s for s in self.evals if s.runs == "all"):
            record["evals"][spec.name] = self._eval_record(
                self.eval_stage(spec, stage.name, ckpt, base_dir), running, log
            )
        scored = record["evals"].get(self.cfg["finetune"].get("score_with"))
        if scored:
            record.update(
                {k: v for k, v in scored.items() if k.startswith(("val/", "test/")) or k == "buckets"}
            )
        return record

    def _eval_record(self, stage: Stage, running: bool, log) -> dict | None:
        """An evaluation's metrics (None while it has not finished, when only reporting); a scoring
        also says where its per-line numbers are."""
        if running:
            run_stage(stage, log)
        elif not stage.finished_as_planned:
            return None
        metrics = stage.metrics()
        if stage.metrics_name != "metrics.json":
            metrics["lines_file"] = str(stage.metrics_file).replace(".summary.json", ".lines.jsonl")
        return metrics

    def _discriminators(self, base_ckpt: str, running: bool, log) -> tuple[dict, Stage | None]:
        """Each candidate's metrics (None: it never beat the zero head) and the one chosen by
        validation BCE (None if none beat it)."""
        found: dict[str, dict | None] = {}
        chosen, best = None, None
        for stage in self.disc_stages(base_ckpt):
            metrics = self._run_candidate(stage, log) if running else self._candidate_so_far(stage)
            found[stage.name] = metrics
            if metrics is not None and (best is None or metrics["val/disc_bce"] < best):
                chosen, best = stage, metrics["val/disc_bce"]
        if chosen is not None and log:
            log(f"[disc] chosen by validation BCE: {chosen.name} ({best:.5f})")
        return found, chosen

    @staticmethod
    def _refusal_file(stage: Stage) -> Path:
        return stage.out_dir / "zero_head.json"

    def _candidate_so_far(self, stage: Stage) -> dict | None:
        if stage.finished_as_planned:
            return stage.metrics()
        refusal = self._refusal_file(stage)
        if refusal.is_file() and json.loads(refusal.read_text())["identity"] == stage.identity():
            return None
        raise LmdiscError(f"nothing to report yet: stage {stage.name} has not finished ({stage.out_dir})")

    def _run_candidate(self, stage: Stage, log) -> dict | None:
        """Run one candidate. train_disc.py refuses (saves nothing) when no checkpoint beat the zero
        head: that is a result, recorded beside the stage so that a re-run does not train it again."""
        refusal = self._refusal_file(stage)
        if refusal.is_file() and json.loads(refusal.read_text())["identity"] == stage.identity():
            log(f"[skip] {stage.name}: it never beat the zero head ({refusal})")
            return None
        try:
            return run_stage(stage, log)
        except LmdiscError as err:
            if ZERO_HEAD_REFUSAL not in str(err):
                raise
            atomic_write_json({"identity": stage.identity(), "message": str(err)[-2000:]}, refusal)
            log(f"[disc] {stage.name} never beat the zero head (2 ln 2); recorded in {refusal}")
            return None

    def _described_slices(self) -> dict:
        return {
            name: {
                "from": s["from"],
                "valid": {"lines": list(s["valid"])},
                "test": {"lines": list(s["test"])},
            }
            for name, s in self.slices.items()
        }
