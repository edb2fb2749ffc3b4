"""Train or fine-tune a language model: `python train.py [hydra overrides]`."""

from lmdisc.cli.train import main

if __name__ == "__main__":
    main()
