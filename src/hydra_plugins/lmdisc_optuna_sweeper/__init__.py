"""Our Optuna sweeper as a Hydra plugin (`hydra/sweeper=lmdisc_optuna`); the code is in `lmdisc.sweep`."""
