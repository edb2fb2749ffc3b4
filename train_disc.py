"""Train a discriminator against a frozen LM: `python train_disc.py lm_ckpt=PATH`."""

from lmdisc.cli.train_disc import main

if __name__ == "__main__":
    main()
