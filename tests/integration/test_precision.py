"""The precision group: every model trains under bf16-true with finite losses, and the metrics it
logs are exact sums (fp64 states), not bf16 ones."""

import json

import pytest
import torch

from helpers import compose_train, quick_overrides
from lmdisc.checkpoint import build_model, load_checkpoint
from lmdisc.cli.train import train
from lmdisc.metrics import SplitMetrics, TokenNLL

pytestmark = pytest.mark.slow

MODELS = {
    "lstm_small": [],
    "awd_lstm": ["model.emb_size=32", "model.hidden_size=48", "optim=asgd"],
    "gpt": ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "data.block_size=32"],
}


def test_a_metric_keeps_fp64_states_when_its_module_is_cast_to_bf16():
    metric = TokenNLL().to(torch.bfloat16)
    for _ in range(1000):
        metric.update(torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long))
    assert metric.nll_sum.dtype == torch.float64 and metric.tokens.dtype == torch.long
    assert metric.nll_sum.item() == 1000.0  # a bf16 sum stops at 256
    split = SplitMetrics().to(torch.bfloat16)
    states = [v for m in split.modules() if hasattr(m, "_defaults") for v in m.metric_state.values()]
    assert states and all(s.dtype in (torch.float64, torch.long) for s in states)


# bf16-mixed runs of each model are in test_losses_scoring (lstm_small), test_transformers (gpt) and
# test_rkl_awd (awd_lstm); under it the module is not cast, so the states are fp64 by construction
@pytest.mark.parametrize("precision", ["bf16-true"])
@pytest.mark.parametrize("model", list(MODELS))
def test_each_model_trains_under_bf16_and_logs_exact_perplexity(tmp_path, tiny_corpus, model, precision):
    overrides = [
        *quick_overrides(tiny_corpus, model),
        *MODELS[model],
        f"precision={precision}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "logger=none",
    ]
    metrics = train(compose_train(tmp_path, overrides))
    assert metrics["global_step"] == 4
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("val/ppl", "test/ppl"))
    # the run's own validation (bf16 states would stop summing at 256 nats) against an fp32
    # evaluation of the same weights, which train.py runs after fitting
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")
    logged = ckpt["callbacks"][next(k for k in ckpt["callbacks"] if "'monitor': 'val/ppl'" in k)]
    assert logged["best_model_score"] == pytest.approx(metrics["val/ppl"], rel=0.05)
    assert build_model(ckpt) is not None
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["val/ppl"] == metrics["val/ppl"]
