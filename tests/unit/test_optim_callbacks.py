import pytest
import torch

from lmdisc.callbacks import NTASGD
from lmdisc.callbacks.disc_refresh import training_recipe
from lmdisc.errors import LmdiscError
from lmdisc.losses import CompositeLoss, CrossEntropyLoss
from lmdisc.models import LSTMLanguageModel
from lmdisc.modules import LanguageModel
from lmdisc.optim import delayed_exponential_decay


def test_zaremba_schedule_keeps_lr_for_four_epochs_then_halves():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = delayed_exponential_decay(opt, start_epoch=4, gamma=0.5)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125]
    restored = delayed_exponential_decay(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    restored.load_state_dict(sched.state_dict())
    assert restored.get_last_lr() == sched.get_last_lr()


def _module(scale: bool) -> LanguageModel:
    ce = CompositeLoss({"ce": {"weight": 1.0, "loss": CrossEntropyLoss()}})
    return LanguageModel(
        LSTMLanguageModel(10, 4, 4, 1),
        ce,
        lambda params: torch.optim.SGD(params, lr=2.0),
        bptt=70,
        scale_lr_by_window=scale,
    )


@pytest.mark.parametrize("scale,expected", [(True, 2.0 * 35 / 70), (False, 2.0)])
def test_variable_bptt_scales_the_step_lr_and_restores_it(scale, expected):
    module = _module(scale)
    opt = module.configure_optimizers()
    seen = []

    class Spy:
        param_groups = opt.param_groups

        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])

    module._window_len = 35
    module.optimizer_step(0, 0, Spy(), None)
    assert seen == [pytest.approx(expected)]
    assert opt.param_groups[0]["lr"] == 2.0


class _Trainer:
    sanity_checking = False
    current_epoch = 0

    def __init__(self):
        self.callback_metrics = {}


def test_nt_asgd_triggers_on_non_monotone_validation_and_averages():
    module = _module(False)
    cb, trainer = NTASGD(nonmono=2), _Trainer()
    for loss in [5.0, 4.0, 3.0, 3.5]:
        trainer.callback_metrics = {"val/loss": torch.tensor(loss)}
        cb.on_validation_end(trainer, module)
    assert not cb.triggered  # 3.5 is not worse than min(history[:-2]) = min([5.0])
    trainer.callback_metrics = {"val/loss": torch.tensor(4.5)}
    cb.on_validation_end(trainer, module)  # history [5, 4, 3, 3.5]: 4.5 > min([5, 4]) = 4 -> trigger
    assert cb.triggered and cb.n_averaged == 1
    params = dict(module.model.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for p in params.values():
            p.add_(1.0)
    cb.on_train_batch_end(trainer, module, None, None, 0)
    name = "decoder.bias"
    torch.testing.assert_close(cb.averaged[name], start[name] + 0.5)  # mean of x0 and x0 + 1
    # validation sees the averaged weights, training continues from the raw ones
    cb.on_validation_start(trainer, module)
    torch.testing.assert_close(params[name].detach(), start[name] + 0.5)
    cb.on_validation_end(trainer, module)
    torch.testing.assert_close(params[name].detach(), start[name] + 1.0)
    checkpoint = {}
    cb.on_save_checkpoint(trainer, module, checkpoint)
    fresh = NTASGD(nonmono=2)
    fresh.load_state_dict(cb.state_dict())
    fresh.on_load_checkpoint(trainer, module, checkpoint)
    assert fresh.triggered and fresh.n_averaged == 2 and fresh.history == cb.history


def _adamw(**extra) -> dict:
    return {"optim": {"optimizer": {"_target_": "torch.optim.AdamW", "lr": 0.01, **extra}}}


def test_refresh_recipe_builds_the_recorded_optimiser_at_its_rate_or_the_given_one():
    param = torch.nn.Parameter(torch.zeros(3))
    make, _ = training_recipe(_adamw(weight_decay=0.5))  # no _partial_ recorded: added
    optimizer = make(params=[param])
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["lr"] == 0.01
    assert optimizer.param_groups[0]["weight_decay"] == 0.5
    assert training_recipe(_adamw(), lr=0.2)[0](params=[param]).param_groups[0]["lr"] == 0.2


@pytest.mark.parametrize(("algorithm", "expected"), [("norm", [0.6, 0.8]), ("value", [1.0, 1.0])])
def test_refresh_recipe_clips_as_the_discriminator_was_clipped(algorithm, expected):
    run = {**_adamw(), "trainer": {"gradient_clip_val": 1.0, "gradient_clip_algorithm": algorithm}}
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([3.0, 4.0])
    training_recipe(run)[1]([param])
    assert param.grad.tolist() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ({}, "does not record its optimiser"),
        ({"optim": {"optimizer": {"lr": 0.01}}}, "does not record its optimiser"),
        ({"optim": {"optimizer": {"_target_": "torch.optim.NoSuchOptimiser"}}}, "cannot build"),
        ({**_adamw(), "trainer": {"gradient_clip_algorithm": "sideways"}}, "gradient_clip_algorithm"),
    ],
)
def test_a_refresh_recipe_that_cannot_work_is_refused_up_front(run, message):
    with pytest.raises(LmdiscError, match=message):
        training_recipe(run)
