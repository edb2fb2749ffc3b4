"""The rkl_disc reproduction pipeline: `python reproduce.py experiment=reproduce_ptb_small`."""

from lmdisc.cli.reproduce import main

if __name__ == "__main__":
    main()
