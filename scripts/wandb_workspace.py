"""Declare the lmdisc W&B workspace from code (optional; needs `pip install wandb-workspaces` and an
online W&B account to save it). Nothing else in lmdisc depends on it.

    python scripts/wandb_workspace.py --entity ME --project lmdisc          # print what would be saved
    python scripts/wandb_workspace.py --entity ME --project lmdisc --save   # create it in W&B

Panels (README, "Dashboards"): validation perplexity grouped by loss, the rKL estimate and its parts,
tokens/s and the gradient norm, the sampled-text table, and each run's frequency-bucket figure.
"""

from __future__ import annotations

import argparse

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws

STEP = "trainer/global_step"


def build_workspace(entity: str, project: str, name: str = "lmdisc") -> ws.Workspace:
    by_loss = {"groupby": "loss.name"}  # the resolved config is logged as nested keys
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name,
        sections=[
            ws.Section(
                name="Perplexity by loss",
                panels=[
                    wr.LinePlot(title="val/ppl", x=STEP, y=["val/ppl"], **by_loss),
                    wr.LinePlot(title="val/word_ppl", x=STEP, y=["val/word_ppl"], **by_loss),
                    wr.LinePlot(title="train/objective", x=STEP, y=["train/objective"], **by_loss),
                    wr.BarPlot(title="test/ppl", metrics=["test/ppl"], **by_loss),
                ],
            ),
            ws.Section(
                name="Reverse KL (loss=rkl_disc and its control)",
                panels=[
                    wr.LinePlot(title="rKL estimate", x=STEP, y=["train/rkl"]),
                    wr.LinePlot(title="KL(q || q0)", x=STEP, y=["train/rkl/kl_q_q0"]),
                    wr.LinePlot(title="E_q[s]", x=STEP, y=["train/rkl/mean_s_under_q"]),
                ],
            ),
            ws.Section(
                name="Words by training frequency",
                panels=[
                    wr.MediaBrowser(title="frequency buckets", media_keys=["eval/buckets"]),
                    wr.LinePlot(
                        title="mass moved per frequency bucket (rkl_disc)",
                        x=STEP,
                        metric_regex="train/rkl/mass_moved/.*",
                    ),
                ],
            ),
            ws.Section(
                name="Throughput and optimisation",
                panels=[
                    wr.LinePlot(title="tokens/s", x=STEP, y=["train/tokens_per_s"]),
                    wr.LinePlot(title="gradient norm (before clipping)", x=STEP, y=["train/grad_norm"]),
                    wr.LinePlot(title="learning rate", x=STEP, metric_regex="lr-.*"),
                ],
            ),
            ws.Section(name="Samples", panels=[wr.WeavePanelSummaryTable(table_name="samples")]),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entity", required=True)
    parser.add_argument("--project", default="lmdisc")
    parser.add_argument("--name", default="lmdisc")
    parser.add_argument("--save", action="store_true", help="create the workspace in W&B (online)")
    args = parser.parse_args()
    workspace = build_workspace(args.entity, args.project, args.name)
    if args.save:
        print(workspace.save().url)
    else:
        for section in workspace.sections:
            print(
                f"{section.name}: "
                + ", ".join(getattr(p, "title", None) or type(p).__name__ for p in section.panels)
            )


if __name__ == "__main__":
    main()
