"""DDP's extra processes inside a Hydra job: each one joins the job, in the job's own directory.

With `trainer.devices>1` (strategy ddp, or auto), Lightning's `_SubprocessScriptLauncher` starts
devices-1 more processes by running a command line again. Under Hydra it builds that command in
`_hydra_subprocess_cmd`: `sys.argv` again plus `hydra.run.dir=<run.dir>`. That breaks inside Hydra:

- in a multirun `sys.argv` holds `-m`, so every child runs the whole sweep again under a new
  timestamp, leaving a second sweep directory whose job directories hold only a config and a log;
- in a joblib or submitit worker `sys.argv` is the worker's, so the child would run the worker;
- a config that sets `hydra.mode: MULTIRUN` itself (experiment=loss_ablation) sweeps again too.

`child_command` builds the command from the job instead: `python -m <the Hydra main's module>`
with the job's own overrides (`HydraConfig.get().overrides.task`, one job's values, never `-m`),
`hydra.mode=RUN`, `hydra.run.dir=<the job's output directory>`, the job's `hydra.job.chdir`, and
`hydra.output_subdir=null` so a child writes no second `.hydra/` config; each child logs to
`<job name>_rank<local rank>.log` beside the job's own log. `use_job_dir_for_ddp_children`
(called at the top of every Hydra main) makes Lightning's launcher use it. Lightning offers no
public hook for the child's command, so this replaces the one private function the launcher calls
for Hydra (`lightning.pytorch.strategies.launchers.subprocess_script._hydra_subprocess_cmd`, the
same name in `lightning.fabric`), with the same signature; a Lightning without it is refused
loudly rather than left to fall back to the broken command. A strategy subclass would need every
config to name it; the launcher is shared by ddp, auto, fsdp and deepspeed alike.

A multirun's jobs run one after another in one process (or reuse a joblib worker). Lightning
leaves the previous job's process group and its launcher environment (LOCAL_RANK, MASTER_PORT,
...) behind: with LOCAL_RANK set it takes the processes to be started from outside and starts no
children, and it reuses the open process group, whose other ranks have exited (the second job
failed: gloo "Connection closed by peer"; it only worked before because every child re-ran the
sweep alongside). So a job that follows one which started children first closes that process
group and restores those variables.

`ddp_spawn` starts no command: it pickles the trainer, module and data module to processes of
torch.multiprocessing, and afterwards gives the main process rank 0's weights, best checkpoint path
and `callback_metrics` only, so `trainer.global_step`, `current_epoch` and the module's own
counters (tokens_seen) read 0 there, and metrics.json said so. The installer has DDPStrategy use
`SpawnLauncherReturningProgress`, which sends those back too, through the launcher's own
`get_extra_results` / `update_main_process_results` pair.

Processes started from outside (torchrun, srun, submitit's tasks) each run Hydra themselves; they
share one directory only when `hydra.run.dir` names the same one for all (see README).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Quote, QuotedString
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

# what Lightning's launcher sets in the parent's environment before it starts the children
LAUNCHER_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

# Hydra settings of the parent's job that a child must not inherit: it is one plain run (mode,
# launcher, sweeper, sweep), in the job's directory (run), writing no config (output_subdir), under
# its own log name (job.name); chdir is passed explicitly
_NOT_FOR_CHILDREN = (
    "hydra.mode",
    "hydra.run",
    "hydra.sweep",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.output_subdir",
    "hydra.job.name",
    "hydra.job.chdir",
    "hydra.job.id",
    "hydra.job.num",
)

_LIGHTNING_LAUNCHERS = (
    "lightning.pytorch.strategies.launchers.subprocess_script",
    "lightning.fabric.strategies.launchers.subprocess_script",
)

_entry_module: str | None = None  # the Hydra main's module: what children run
_environment_before: dict[str, str | None] | None = None  # LAUNCHER_ENV before any job of this process
_started_children = False  # whether a job of this process has started DDP children


def use_job_dir_for_ddp_children(entry_module: str) -> None:
    """Call first thing in a Hydra main, with the module that holds it (`__spec__.name`): DDP
    children then run `python -m entry_module` as one run in this job's directory, and a previous
    job's DDP state in this process is cleared first."""
    global _entry_module, _environment_before
    if _environment_before is None:
        _environment_before = {key: os.environ.get(key) for key in LAUNCHER_ENV}
    elif _started_children:
        _forget_previous_job()
    _entry_module = entry_module
    for name in _LIGHTNING_LAUNCHERS:
        module = importlib.import_module(name)
        if not hasattr(module, "_hydra_subprocess_cmd"):
            raise RuntimeError(
                f"{name} has no _hydra_subprocess_cmd: this Lightning starts DDP children differently; "
                "update lmdisc.distributed before training on several devices"
            )
        module._hydra_subprocess_cmd = _lightning_child_command
    _spawn_returns_fit_progress()


def child_command(entry_module: str, local_rank: int) -> list[str]:
    """The command line that starts DDP process `local_rank` of the current Hydra job."""
    hydra_cfg = HydraConfig.get()
    job = hydra_cfg.job
    return [
        sys.executable,
        "-m",
        entry_module,
        *_config_source_args(hydra_cfg),
        f"--config-name={job.config_name}",
        *hydra_cfg.overrides.task,
        *_inherited_hydra_overrides(hydra_cfg.overrides.hydra),
        "hydra.mode=RUN",
        f"hydra.run.dir={quote_override_value(hydra_cfg.runtime.output_dir)}",
        f"hydra.job.chdir={str(bool(job.chdir)).lower()}",
        "hydra.output_subdir=null",
        f"hydra.job.name={job.name}_rank{local_rank}",
    ]


def quote_override_value(text: str) -> str:
    """`text` as a Hydra override value that parses back to exactly `text` (a path may hold
    spaces, commas, '=' or quotes; '${' is escaped so that it is not read as an interpolation)."""
    return QuotedString(text=text.replace("${", "\\${"), quote=Quote.single).with_quotes()


def _lightning_child_command(local_rank: int) -> tuple[Sequence[str], str]:
    """Lightning's `_hydra_subprocess_cmd(local_rank) -> (command, cwd)`, built from the job."""
    global _started_children
    if _entry_module is None:  # pragma: no cover - installed only by use_job_dir_for_ddp_children
        raise RuntimeError("use_job_dir_for_ddp_children was not called")
    _started_children = True
    # started where the command was, as the parent was: relative paths and ${lmdisc.cwd:} agree
    return child_command(_entry_module, local_rank), HydraConfig.get().runtime.cwd


def _config_source_args(hydra_cfg) -> list[str]:
    """--config-path (the main config directory) and any --config-dir the parent was given."""
    args = []
    for source in hydra_cfg.runtime.config_sources:
        location = source.path if source.schema == "file" else f"{source.schema}://{source.path}"
        if source.provider == "main":
            args.append(f"--config-path={location}")
        elif source.provider == "command-line":
            args.append(f"--config-dir={location}")
    return args


def _inherited_hydra_overrides(overrides: Sequence[str]) -> list[str]:
    """The parent's `hydra.*` overrides that still apply to a single run (logging, env_set, ...)."""
    parser = OverridesParser.create()
    kept = []
    for line in overrides:
        key = parser.parse_override(line).key_or_group
        if not any(key == prefix or key.startswith(prefix + ".") for prefix in _NOT_FOR_CHILDREN):
            kept.append(line)
    return kept


class SpawnLauncherReturningProgress(_MultiProcessingLauncher):
    """ddp_spawn's launcher, also returning rank 0's fit-loop progress (steps, epochs: ints and
    bools) and the LightningModule's public numbers (counters such as LanguageModel.tokens_seen)
    to the main process. A class of this module rather than a patched method: the spawned
    processes unpickle the launcher by name, which imports this module there too."""

    def get_extra_results(self, trainer) -> dict:
        module = trainer.lightning_module
        numbers = {k: v for k, v in vars(module).items() if not k.startswith("_") and type(v) in (int, float)}
        return {
            **super().get_extra_results(trainer),
            "fit_loop": trainer.fit_loop.state_dict(),
            "module_numbers": numbers,
        }

    def update_main_process_results(self, trainer, extra: dict) -> None:
        super().update_main_process_results(trainer, extra)
        trainer.fit_loop.load_state_dict(extra["fit_loop"])
        for name, value in extra["module_numbers"].items():
            setattr(trainer.lightning_module, name, value)


def _spawn_returns_fit_progress() -> None:
    """Have DDPStrategy(start_method=spawn/fork) use SpawnLauncherReturningProgress."""
    if getattr(DDPStrategy._configure_launcher, "returns_fit_progress", False):
        return
    configure = DDPStrategy._configure_launcher

    def _configure_launcher(self) -> None:
        configure(self)
        if type(self._launcher) is _MultiProcessingLauncher:
            self._launcher = SpawnLauncherReturningProgress(self, start_method=self._start_method)

    _configure_launcher.returns_fit_progress = True
    DDPStrategy._configure_launcher = _configure_launcher


def _forget_previous_job() -> None:
    """Close the process group a previous job of this process opened for its children, and
    restore the launcher's environment variables to what they were before it."""
    global _started_children
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    assert _environment_before is not None
    for key, value in _environment_before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _started_children = False
