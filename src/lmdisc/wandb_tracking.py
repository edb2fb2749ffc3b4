"""Weights & Biases, offline first: `logger=wandb` works on a machine that has never logged in.

Lightning's `WandbLogger` is used as it is; this module only decides how it starts:
- the mode: whatever `WANDB_MODE` says if the user set it, else online when credentials are
  configured (`WANDB_API_KEY`, an identity token file, or the W&B host in ~/.netrc) and offline
  otherwise. Deciding reads only the environment and the netrc file: no network attempt.
- the group (a multirun's sweep, so its jobs sit together), the run name (a job's overrides) and
  the run id of a resumed run (stored in the checkpoint by `LanguageModel`).
Offline runs resume too: wandb 0.31 writes a second `offline-run-*-<id>` directory for the same id,
and `wandb sync` uploads a run's directories in order of start time (its `--help`: "This happens
for resumed runs"). We could not check the server's side of that without a network.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlsplit

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

DEFAULT_HOST = "https://api.wandb.ai"
MODES = ("online", "offline", "disabled", "dryrun")


def credentials_source() -> str | None:
    """Where W&B would find credentials (without contacting it), or None."""
    if os.environ.get("WANDB_API_KEY"):
        return "WANDB_API_KEY"
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "WANDB_IDENTITY_TOKEN_FILE"
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).netloc
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        found = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return f"{path} ({host})" if found else None


def choose_mode() -> tuple[str, str]:
    """(mode, why)."""
    chosen = os.environ.get("WANDB_MODE")
    if chosen:
        return chosen, "WANDB_MODE is set"
    source = credentials_source()
    if source:
        return "online", f"credentials from {source}"
    return "offline", "no credentials: WANDB_API_KEY or `wandb login` makes runs online"


def _hydra_job() -> tuple[str | None, str | None]:
    """(group, name) from Hydra: a multirun's sweep directory, and the job's own overrides."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return None, None
    group = f"{hydra.job.name}-{Path(hydra.sweep.dir).name}"
    return group, hydra.job.override_dirname or f"job{hydra.job.num}"


def wandb_logger(
    save_dir: str,
    project: str = "lmdisc",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | tuple[str, ...] = (),
    resume_id: str | None = None,
    log_model: bool = False,
    **kwargs,
) -> WandbLogger:
    """Lightning's WandbLogger in the mode `choose_mode` picks; `resume_id` continues that run."""
    mode, why = choose_mode()
    if mode in ("offline", "dryrun", "disabled"):
        import wandb

        # the process-wide settings too, not only this run's: wandb's usage telemetry reads them,
        # and would otherwise post to the W&B host from an offline run
        wandb.setup(settings=wandb.Settings(mode=mode))
    sweep_group, job_name = _hydra_job()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(
        save_dir=save_dir,
        project=project,
        name=name or job_name,
        group=group or sweep_group,
        tags=list(tags),
        id=resume_id,
        log_model=log_model and mode == "online",
        mode=mode,
        **kwargs,
    )
    # Lightning always passes anonymous=None, which wandb >= 0.2x answers with a deprecation warning
    logger._wandb_init.pop("anonymous", None)
    resumed = f", continuing run {resume_id}" if resume_id else ""
    if mode in ("offline", "dryrun"):
        rank_zero_info(
            f"W&B: offline ({why}){resumed}; the run is saved under {save_dir}/wandb: upload it with "
            f"`wandb sync {save_dir}/wandb/offline-run-*` or `make wandb-sync`"
        )
    else:
        rank_zero_info(f"W&B: {mode} ({why}){resumed}")
    return logger


def wandb_loggers(loggers) -> list[WandbLogger]:
    return [logger for logger in loggers or [] if isinstance(logger, WandbLogger)]


def log_run_config(loggers, config: dict) -> None:
    """The resolved config (and the environment) as a plain nested dict, into every W&B run."""
    for logger in wandb_loggers(loggers):
        logger.log_hyperparams(config)


def log_images(loggers, images: dict[str, str | Path]) -> None:
    """Figures (the frequency-bucket plot, a pipeline's plots) into every W&B run, key -> file."""
    for logger in wandb_loggers(loggers):
        for key, path in images.items():
            if Path(path).is_file():
                logger.log_image(key=key, images=[str(path)])


def log_summary(loggers, values: dict) -> None:
    """Final numbers (test/ppl, ...) into every W&B run's summary: what the runs table shows."""
    numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for logger in wandb_loggers(loggers):
        logger.experiment.summary.update(numbers)
