"""Any causal LM of Hugging Face `transformers` behind our model interface (`model=hf`).

`model.name_or_path` is a local directory (offline, the default) or a hub id, which is only
downloaded with `model.allow_download=true`. The model brings its own tokenizer (`data.tokenizer=hf`
reads `tokenizer.json` from the same directory). A transformer has no state: forward ignores
`state`, never asks for an HF cache, and returns None in its place.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmdisc.errors import LmdiscError

from .base import LanguageModelBase, State

# config keys that make the output more than a linear map of the last hidden state
_NONLINEAR_HEAD = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise LmdiscError("model=hf needs transformers: pip install -e '.[hf]'") from None
    transformers.utils.logging.disable_progress_bar()  # a bar per weight load buries the run's own lines
    return transformers


def resolve_model_source(name_or_path: str, allow_download: bool) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only), refusing what cannot load offline."""
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LmdiscError(
                f"model.name_or_path={name_or_path} holds no model (no config.json); point it at a directory "
                "written by save_pretrained"
            )
        return str(path), True
    looks_like_path = str(name_or_path).startswith(("/", ".", "~")) or path.suffix in (".bin", ".safetensors")
    if looks_like_path or path.exists():
        raise LmdiscError(
            f"model.name_or_path={name_or_path} is not a model directory; pass a directory written by "
            "save_pretrained (config.json + weights)"
        )
    return str(name_or_path), not allow_download


def local_snapshot(repo_id: str, local_only: bool) -> str:
    """A hub model's files in the local Hugging Face cache (downloaded unless `local_only`), or the
    offline error that says how to allow the download or where to put the files."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=local_only)
    except Exception as err:  # offline, unknown repo, not cached: one message either way
        if local_only:
            raise LmdiscError(
                f"model.name_or_path={repo_id} is not a local directory and downloads are off: put the "
                "model's files (config.json, weights, tokenizer.json) in a directory and pass "
                "model.name_or_path=DIR, or allow the download with model.allow_download=true"
            ) from None
        raise LmdiscError(f"cannot download {repo_id}: {str(err).splitlines()[0][:200]}") from None


def load_pretrained(name_or_path: str, allow_download: bool = False):
    """`AutoModelForCausalLM` in fp32 (precision is the trainer's business), or a clear error."""
    transformers = _transformers()
    source, local_only = resolve_model_source(name_or_path, allow_download)
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            source, local_files_only=local_only, dtype=torch.float32
        )
    except Exception as err:  # OSError (files), ValueError (an unknown architecture), ...
        if local_only and not Path(source).is_dir():
            raise LmdiscError(
                f"model.name_or_path={name_or_path} is not a local directory and downloads are off: put the "
                "model's files (config.json, weights, tokenizer.json) in a directory and pass "
                "model.name_or_path=DIR, or allow the download with model.allow_download=true"
            ) from None
        raise LmdiscError(
            f"cannot load model.name_or_path={name_or_path}: {str(err).splitlines()[0]}"
        ) from None


class HFCausalLM(LanguageModelBase):
    """`forward(tokens, state=None) -> (logits, None, {})` around a transformers causal LM (`self.hf`)."""

    carries_state = False

    def __init__(
        self,
        vocab_size: int,
        name_or_path: str | None = None,
        allow_download: bool = False,
        input_only_tokens: int = 0,
        activation_checkpointing: bool = False,
        pretrained: str | None = None,
        hf_config: dict | None = None,
    ):
        """`pretrained` names a model of `lmdisc.models.pretrained` that is converted into
        `name_or_path` on first use; `hf_config` rebuilds a checkpoint's architecture without weights."""
        super().__init__()
        transformers = _transformers()
        if pretrained and hf_config is None:
            from .pretrained import ensure_pretrained

            ensure_pretrained(pretrained, name_or_path, allow_download)
        if hf_config is not None:  # rebuilding a checkpoint of ours: the architecture alone, no download
            config = transformers.AutoConfig.for_model(**hf_config)
            self.hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        else:
            if not name_or_path:
                raise LmdiscError(
                    "model=hf needs model.name_or_path (a local directory or, with downloads, a hub id)"
                )
            self.hf = load_pretrained(name_or_path, allow_download)
        self.hf.train()  # from_pretrained returns it in eval mode; a new module trains (dropout on)
        config = self.hf.config
        if input_only_tokens:
            raise LmdiscError("a pretrained model reads its own tokenizer's ids: use data.tokenizer=hf")
        self.vocab_size = config.vocab_size
        if vocab_size > self.vocab_size:
            raise LmdiscError(
                f"the tokenizer has {vocab_size:,} tokens but {name_or_path} predicts only {self.vocab_size:,}; "
                "use the model's own tokenizer (data.tokenizer=hf)"
            )
        self.feature_size = getattr(config, "hidden_size", None) or config.n_embd
        self.max_positions = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        self.linear_head = all(getattr(config, key, None) in (None, 1.0) for key in _NONLINEAR_HEAD)
        config.use_cache = False
        if activation_checkpointing:
            self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def config_dict(self) -> dict:
        """The architecture as primitives (stored in our checkpoints, so they rebuild without the source)."""
        return self.hf.config.to_dict()

    def features(self, tokens: torch.Tensor, state: State = None):
        if not self.linear_head:
            raise LmdiscError(
                f"{type(self.hf).__name__} post-processes its logits: its features cannot be decoded alone"
            )
        out = self.hf.base_model(input_ids=tokens, use_cache=False)
        return out.last_hidden_state, None, {}

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return self.hf.get_output_embeddings()(features)

    def forward(self, tokens: torch.Tensor, state: State = None):
        if self.linear_head:
            return super().forward(tokens, state)
        return self.hf(input_ids=tokens, use_cache=False).logits, None, {}

    def output_layer(self):
        head = self.hf.get_output_embeddings()
        return (head.weight, head.bias) if self.linear_head else None
