"""Reading and checking lmdisc checkpoints (tensors and primitives only, `weights_only=True`).

`checkpoint["lmdisc"]` holds `kind` ("lm" or "discriminator"), the tokenizer's `state()`, the run's
resolved config (a plain dict) and, for transformers models, their architecture (`hf_config`).
Checkpoints written before tokenizers existed hold a word list (`vocab`) instead; they still load.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lmdisc.data.tokenizers import Tokenizer, WordTokenizer, tokenizer_from_state
from lmdisc.errors import LmdiscError
from lmdisc.io import atomic_torch_save
from lmdisc.models.build import build_lm
from lmdisc.models.discriminator import build_discriminator

MODEL_PREFIX = "model."


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes to a temporary file and renames it into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, Path(path))


def _truncated_zip(path: Path) -> bool:
    """A torch checkpoint is a zip archive: one that starts like a zip but has no end-of-central-
    directory record within its last 64 KiB has been cut short."""
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            return False
        size = handle.seek(0, 2)
        handle.seek(max(0, size - 65_557))
        return b"PK\x05\x06" not in handle.read()


SHARDED_METADATA = "meta.pt"  # Lightning's ModelParallelStrategy: the non-tensor part of a sharded checkpoint


def read_sharded_checkpoint(path: Path) -> dict[str, Any]:
    """A sharded (DCP) checkpoint directory written by trainer=fsdp, as one checkpoint dict: its
    metadata with the full weights (no optimiser state). Needs no process group. (Lightning's own
    consolidate_checkpoint expects another layout and fails on these: KeyError 'model'.)"""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    meta_file = path / SHARDED_METADATA
    if not meta_file.is_file():
        raise LmdiscError(
            f"{path} is a directory but not a sharded checkpoint (no {SHARDED_METADATA}); "
            "point at a .ckpt file or a checkpoint directory written by trainer=fsdp"
        )
    checkpoint = torch.load(meta_file, map_location="cpu", weights_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        whole = Path(tmp) / "whole.pt"
        dcp_to_torch_save(path, whole)
        tensors = torch.load(whole, map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = tensors["state_dict"]
    return checkpoint


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with `weights_only=True`; a missing, truncated or foreign file gets a clear error. A
    sharded checkpoint directory (trainer=fsdp) is consolidated in memory."""
    path = Path(path)
    if path.is_dir():
        return _checked(read_sharded_checkpoint(path), path)
    if not path.is_file():
        raise LmdiscError(f"checkpoint not found: {path}")
    if _truncated_zip(path):
        raise LmdiscError(
            f"checkpoint {path} is truncated ({path.stat().st_size:,} bytes, with no end-of-archive record): "
            "a partial copy or an interrupted write; copy it again, or use another checkpoint"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        raise LmdiscError(
            f"cannot read checkpoint {path}: the file is truncated, corrupt or not a torch "
            f"checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from None
    return _checked(ckpt, path)


def _checked(ckpt: Any, path: Path) -> dict[str, Any]:
    """`ckpt` if it is a checkpoint of ours (weights and a tokenizer), else a clear error."""
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise LmdiscError(f"{path} is not an lmdisc/Lightning checkpoint (no state_dict)")
    meta = ckpt.get("lmdisc")
    if not isinstance(meta, dict) or not (meta.get("tokenizer") or meta.get("vocab")):
        raise LmdiscError(
            f"checkpoint {path} has no tokenizer (no lmdisc.tokenizer entry); it was not written by "
            "lmdisc's train.py and cannot be evaluated or fine-tuned on a corpus"
        )
    return ckpt


def checkpoint_tokenizer(ckpt: dict[str, Any]) -> Tokenizer:
    meta = ckpt["lmdisc"]
    if meta.get("tokenizer"):
        return tokenizer_from_state(meta["tokenizer"])
    return WordTokenizer(meta["vocab"])  # written before tokenizers existed


def load_lm_checkpoint(path: str | Path, option: str = "ckpt") -> dict[str, Any]:
    """`load_checkpoint` for an option that needs a language model (train.py's): a discriminator
    checkpoint given by mistake is refused by name rather than failing on its missing weights."""
    ckpt = load_checkpoint(path)
    if ckpt["lmdisc"].get("kind") == "discriminator":
        raise LmdiscError(
            f"{option}={path} is a discriminator checkpoint (train_disc.py); {option} needs a language "
            "model checkpoint written by train.py"
        )
    return ckpt


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A fingerprint of a model's weights (names, shapes, dtypes and values), independent of the file."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def load_lm_weights(model: torch.nn.Module, ckpt: dict[str, Any]) -> torch.nn.Module:
    """Load the LM's weights, then NT-ASGD's averaged ones where the checkpoint has them.

    The average is keyed by parameter (a tied matrix once), so it is copied into the parameters
    rather than merged into the state dict, where the tied alias would keep the raw value. A
    checkpoint from before input-only embedding rows existed keeps them at zero.
    """
    state = {k[len(MODEL_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith(".extra")]
        if missing or unexpected:
            raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except RuntimeError as err:
        trained = (ckpt["lmdisc"].get("config") or {}).get("model", {})
        shown = {k: v for k, v in trained.items() if not isinstance(v, (dict, list))}
        detail = [line.strip() for line in str(err).splitlines() if line.strip()][-1][:200]
        raise LmdiscError(
            f"the checkpoint's weights do not fit this model ({detail}); "
            f"it was trained with model {shown}: use the same model= options"
        ) from None
    averaged = ckpt.get("averaged_state_dict") or {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in averaged:
                param.copy_(averaged[name])
    return model


def build_model(ckpt: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the checkpoint's architecture from its stored config and load its weights (a
    LoRA checkpoint: its base, the adapters on it, merged)."""
    meta = ckpt["lmdisc"]
    config = meta.get("config") or {}
    if "model" not in config:
        raise LmdiscError("checkpoint has no model config (lmdisc.config.model); cannot rebuild it")
    if (meta.get("finetune") or {}).get("mode") == "lora":
        return _build_lora_model(ckpt)
    model = build_lm(config["model"], checkpoint_tokenizer(ckpt), meta.get("hf_config"))
    return load_lm_weights(model, ckpt)


def _build_lora_model(ckpt: dict[str, Any]) -> torch.nn.Module:
    """A LoRA checkpoint holds the adapters alone: rebuild its base from where it came from (the
    init_from checkpoint, or the pretrained model's directory), check the base's weights are the
    ones it was trained on, attach and load the adapters, and merge them into the weights."""
    from lmdisc.finetune import attach_lora, merge_lora

    meta = ckpt["lmdisc"]
    finetune = meta["finetune"]
    base = finetune.get("base") or {}
    if base.get("init_from"):
        model = build_model(load_lm_checkpoint(base["init_from"], "the LoRA base"))
        source = base["init_from"]
    else:
        model = build_lm(meta["config"]["model"], checkpoint_tokenizer(ckpt))
        source = base.get("pretrained")
    found = weights_sha256(model.state_dict())
    if base.get("sha256") and found != base["sha256"]:
        raise LmdiscError(
            f"this LoRA checkpoint's adapters were trained on other base weights than {source} holds now "
            f"(sha256 {base['sha256'][:12]}… recorded, {found[:12]}… found): restore that base"
        )
    attach_lora(model, finetune["lora"])
    state = {k[len(MODEL_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "lora_" in k]
    if missing or unexpected:
        raise LmdiscError(
            f"the LoRA checkpoint's adapters do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return merge_lora(model)


def load_discriminator(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a discriminator saved by train_disc.py; returns (module, checkpoint)."""
    ckpt = load_checkpoint(path)
    meta = ckpt["lmdisc"]
    if meta.get("kind") != "discriminator":
        raise LmdiscError(f"{path} is not a discriminator checkpoint (written by train_disc.py)")
    disc_cfg = meta["config"]["discriminator"]
    tokenizer = checkpoint_tokenizer(ckpt)
    lm = None
    if disc_cfg["encoder"] in ("lm_copy", "lm_frozen"):
        lm = build_lm(meta["lm"]["model"], tokenizer, meta["lm"].get("hf_config"))
    disc = build_discriminator(
        disc_cfg["encoder"],
        meta.get("output_size", tokenizer.vocab_size),
        lm,
        disc_cfg.get("mlp_size", 0),
        disc_cfg.get("dropout", 0.0),
        disc_cfg.get("lstm"),
        ckpt["state_dict"].get("discriminator.word_class"),
        tokenizer.input_only_tokens,
    )
    prefix = "discriminator."
    disc.load_state_dict({k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    return disc, ckpt


def check_discriminator_of(
    ckpt: dict[str, Any], disc_name: str, lm_sha256: str, tokenizer: Tokenizer, lm_name: str
) -> None:
    """Refuse a discriminator checkpoint for an LM it was not trained against: it must have the
    same tokenizer and these very weights (by fingerprint), since s estimates log p − log q_0."""
    from lmdisc.data.tokenizers import same_tokenizer_or_refuse

    hint = f"train one with train_disc.py lm_ckpt={lm_name}"
    same_tokenizer_or_refuse(
        checkpoint_tokenizer(ckpt), tokenizer, f"discriminator {disc_name}", lm_name, hint
    )
    trained_against = ckpt["lmdisc"]["lm"]
    if trained_against.get("sha256") != lm_sha256:
        raise LmdiscError(
            f"discriminator {disc_name} was trained against the LM {trained_against.get('path')} "
            f"(weights sha256 {str(trained_against.get('sha256'))[:12]}…), not against {lm_name} "
            f"({lm_sha256[:12]}…); train one with train_disc.py lm_ckpt={lm_name}"
        )


def datamodule_for_checkpoint(
    data_cfg, ckpt: dict[str, Any], name: str, own_config: bool = False, same_text: bool = True, **overrides
):
    """The corpus of `data_cfg` read with the checkpoint's tokenizer, or a clear refusal.

    With the checkpoint's own data config (`own_config`) its stored tokenizer reads the text. Else
    a subword checkpoint reads any text with its own tokenizer unless the data config asks for a
    specific one (`data.tokenizer=bpe|hf` or `data.tokenizer_from`), which must then be the same;
    a word checkpoint needs the corpus' own word list to be its list (otherwise words it never saw
    would silently become `<unk>`), unless `data.tokenizer_from` says to read the text with it.
    With `same_text` (evaluating, not fine-tuning elsewhere), text detokenised for training must be
    detokenised now too, and vice versa.
    """
    from omegaconf import OmegaConf

    from lmdisc.config import instantiate
    from lmdisc.data.tokenizers import SubwordTokenizer, same_tokenizer_or_refuse

    tokenizer = checkpoint_tokenizer(ckpt)
    # resolved where it was composed: its ${seed} and ${paths...} point outside the data node
    cfg = OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg) else dict(data_cfg)
    trained = bool(((ckpt["lmdisc"].get("config") or {}).get("data") or {}).get("detokenize", False))
    if same_text and bool(cfg.get("detokenize", False)) != trained:
        kind = "detokenised" if trained else "tokenised (as distributed)"
        raise LmdiscError(
            f"{name} was trained on {kind} text, and data.detokenize={not trained} would read other text: "
            f"pass data.detokenize={str(trained).lower()}"
        )
    subword_default = isinstance(tokenizer, SubwordTokenizer) and cfg.get("tokenizer", "word") == "word"
    if own_config or (subword_default and not cfg.get("tokenizer_from")):
        return instantiate(cfg, tokenizer_object=tokenizer, **overrides)
    datamodule = instantiate(cfg, **overrides)
    same_tokenizer_or_refuse(tokenizer, datamodule.tokenizer, name, "the corpus")
    return datamodule
