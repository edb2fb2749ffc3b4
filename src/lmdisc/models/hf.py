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


# the dropout settings transformers' architectures read from their config
DROPOUT_KEYS = (
    "dropout",
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)


def dropout_overrides(config, dropout: float | None) -> dict:
    """`model.dropout=p` for a transformers model: every dropout setting its config has, set to p."""
    if dropout is None:
        return {}
    if not 0 <= float(dropout) < 1:
        raise LmdiscError(f"model.dropout must be in [0, 1), got {dropout!r}")
    keys = [k for k in DROPOUT_KEYS if hasattr(config, k)]
    if not keys:
        raise LmdiscError(f"{type(config).__name__} has no dropout setting to override (model.dropout)")
    return dict.fromkeys(keys, float(dropout))


def load_pretrained(name_or_path: str, allow_download: bool = False, dropout: float | None = None):
    """`AutoModelForCausalLM` in fp32 (precision is the trainer's business), or a clear error;
    `dropout` overrides every dropout setting of its config."""
    transformers = _transformers()
    source, local_only = resolve_model_source(name_or_path, allow_download)
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=local_only)
        for key, value in dropout_overrides(config, dropout).items():
            setattr(config, key, value)
        return transformers.AutoModelForCausalLM.from_pretrained(
            source, config=config, local_files_only=local_only, dtype=torch.float32
        )
    except LmdiscError:
        raise
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
        dropout: float | None = None,
    ):
        """`pretrained` names a model of `lmdisc.models.pretrained` that is converted into
        `name_or_path` on first use; `hf_config` rebuilds a checkpoint's architecture without weights
        (its dropout included); `dropout` overrides the pretrained config's dropout settings."""
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
            self.hf = load_pretrained(name_or_path, allow_download, dropout)
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
            self.hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def config_dict(self) -> dict:
        """The architecture as primitives (stored in our checkpoints, so they rebuild without the source)."""
        return self.hf.config.to_dict()

    def blocks(self) -> list[torch.nn.Module]:
        """The decoder layers (Llama's `model.layers`, GPT-2's `transformer.h`, ...): the first
        ModuleList of the body with one entry per hidden layer."""
        depth = getattr(self.hf.config, "num_hidden_layers", None) or getattr(self.hf.config, "n_layer", None)
        for module in self.hf.base_model.modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) == depth:
                return list(module)
        return []

    def head_parameters(self) -> list[torch.nn.Parameter]:
        """The output layer plus the body's own parameters outside its embeddings and layers (the
        final norm: Llama's `model.norm`, GPT-2's `transformer.ln_f`)."""
        layers = {id(block) for block in self.blocks()}
        params = [*self.hf.get_output_embeddings().parameters()]
        for child in self.hf.base_model.children():
            inside = any(id(m) in layers for m in child.modules())
            if not inside and not isinstance(child, torch.nn.Embedding):
                params.extend(child.parameters())
        return params

    def untie_output(self) -> dict:
        """A separate output weight starting from the embedding's values; the config says so, so
        the checkpoint's architecture (`config_dict`) rebuilds it untied."""
        head = self.hf.get_output_embeddings()
        if head.weight is not self.hf.get_input_embeddings().weight:
            return {}
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        self.hf.config.tie_word_embeddings = False
        text_config = getattr(self.hf.config, "get_text_config", lambda: None)()
        if text_config is not None:
            text_config.tie_word_embeddings = False
        return {}

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
