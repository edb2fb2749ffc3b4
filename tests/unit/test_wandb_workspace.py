"""The optional dashboard script builds its workspace offline, with every panel on a metric we log."""

import json
import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))
from wandb_workspace import build_workspace


def test_the_workspace_declares_the_panels_the_readme_lists():
    view = build_workspace("someone", "lmdisc")._to_model()
    spec = json.dumps(view.model_dump(mode="json", by_alias=True))
    # W&B stores the nested config under "value": grouping by loss.name reads loss.value.name
    for metric in (
        "val/ppl",
        "train/rkl",
        "train/tokens_per_s",
        "train/grad_norm",
        "eval/buckets",
        "loss.value.name",
    ):
        assert metric in spec, metric
