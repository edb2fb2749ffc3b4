"""Sample text from a language model: `python generate.py ckpt=PATH prompt="..." [max_new_tokens=N]`."""

from lmdisc.cli.generate import main

if __name__ == "__main__":
    main()
