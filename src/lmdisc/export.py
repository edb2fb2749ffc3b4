"""Export a checkpoint of ours as a Hugging Face directory that `transformers` loads as it is.

`model=gpt` maps one-to-one onto `GPT2LMHeadModel` (our Linear weights are transposed into GPT-2's
Conv1D layout; exact GELU is `activation_function="gelu"`); `model=hf` is written with
`save_pretrained`. The tokenizer goes with it as `tokenizer.json` (a word tokenizer as a
`WordLevel` model, which splits on whitespace and maps unknown words to `<unk>`). The directory is
checked before it is moved into place: transformers must give our logits (fp32, ≤ 1e-5).
Recurrent models have no transformers architecture and are refused.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from lmdisc.checkpoint import build_model, checkpoint_tokenizer
from lmdisc.data.tokenizers import EOS, UNK, SubwordTokenizer, Tokenizer, WordTokenizer
from lmdisc.errors import LmdiscError
from lmdisc.models.gpt import GPT
from lmdisc.models.hf import HFCausalLM

TOLERANCE = 1e-5
# GPT-2's Conv1D layers store [in, out]: our nn.Linear weights [out, in] are transposed
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt_to_gpt2(model: GPT):
    """A `GPT2LMHeadModel` holding `model`'s weights (input-only embedding rows are dropped)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    config = GPT2Config(
        vocab_size=model.vocab_size,
        n_positions=c.block_size,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        activation_function="gelu",
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=model.lm_head is None,  # untied by finetune.mode=head / last_n
        bos_token_id=None,
        eos_token_id=None,
    )
    hf = GPT2LMHeadModel(config)
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "wte.extra":
            continue
        key = name if name == "lm_head.weight" else f"transformer.{name}"
        state[key] = tensor.t().contiguous() if name.endswith(_CONV1D) else tensor
    target = hf.state_dict()
    if not c.bias:  # GPT-2 always has biases: ours are zero
        state.update(
            {k: torch.zeros_like(v) for k, v in target.items() if k.endswith(".bias") and k not in state}
        )
    missing, unexpected = hf.load_state_dict(state, strict=False)
    tied = model.lm_head is None
    missing = [
        k
        for k in missing
        if not (tied and k == "lm_head.weight") and not k.endswith((".attn.bias", ".attn.masked_bias"))
    ]
    if missing or unexpected:
        raise LmdiscError(
            f"the GPT-2 mapping is incomplete: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    if tied:
        hf.tie_weights()
    return hf


def hf_tokenizer(tokenizer: Tokenizer):
    """A transformers fast tokenizer with our tokenizer's vocabulary and rules."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, SubwordTokenizer):
        return PreTrainedTokenizerFast(tokenizer_object=Backend.from_str(tokenizer.json))
    if isinstance(tokenizer, WordTokenizer):
        vocab = {word: i for i, word in enumerate(tokenizer.words)}
        unk = UNK if UNK in vocab else None
        backend = Backend(models.WordLevel(vocab, unk_token=unk))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=unk, eos_token=EOS)
    raise LmdiscError(f"cannot export a {tokenizer.kind} tokenizer")


MARKER = "lmdisc_export.json"


def check_destination(out: Path) -> None:
    """`out` may be new, empty, or an earlier export of ours (replaced); anything else is the user's."""
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file()):
        raise LmdiscError(
            f"out={out} exists and is not an earlier export (no {MARKER}); nothing was written: choose "
            "a new or empty directory"
        )


def export_checkpoint(ckpt: dict, out: Path) -> dict:
    """Write `out` (a Hugging Face directory) from a checkpoint; returns the largest logit difference."""
    out = Path(out).expanduser()
    check_destination(out)
    model = build_model(ckpt).eval()
    tokenizer = checkpoint_tokenizer(ckpt)
    if isinstance(model, GPT):
        hf = gpt_to_gpt2(model)
    elif isinstance(model, HFCausalLM):
        hf = model.hf
    else:
        raise LmdiscError(
            f"{type(model).__name__} has no transformers architecture to export to: export covers "
            "model=gpt (as GPT-2) and model=hf"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        staged = Path(work) / "export"
        hf.save_pretrained(staged)
        hf_tokenizer(tokenizer).save_pretrained(staged)
        difference = check_export(model, staged)
        result = {"architecture": type(hf).__name__, "max_abs_logit_difference": difference}
        (staged / MARKER).write_text(json.dumps(result, indent=2) + "\n")
        if (
            out.exists()
        ):  # empty, or an earlier export (checked above): moved into the work dir, deleted with it
            out.rename(Path(work) / "replaced")
        staged.rename(out)
    return {"out": str(out), **result}


@torch.no_grad()
def check_export(model, directory: Path) -> float:
    """Load `directory` with transformers and compare its logits with ours on a probe batch."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, dtype=torch.float32
    ).eval()
    length = min(32, getattr(model, "max_positions", None) or 32)
    probe = torch.randint(0, model.vocab_size, (2, length), generator=torch.Generator().manual_seed(0))
    ours, _, _ = model(probe)
    theirs = loaded(input_ids=probe).logits
    difference = float((ours - theirs).abs().max())
    if difference > TOLERANCE:
        raise LmdiscError(
            f"the exported model's logits differ from ours by {difference:.2e} (> {TOLERANCE:g})"
        )
    return difference
