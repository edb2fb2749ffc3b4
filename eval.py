"""Evaluate a checkpoint by the standard protocol: `python eval.py ckpt=PATH [data=...]`."""

from lmdisc.cli.eval import main

if __name__ == "__main__":
    main()
