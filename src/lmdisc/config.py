"""Building objects from config nodes (Hydra's `instantiate`), with our errors left as they are.

Hydra wraps any exception a `_target_` raises in an InstantiationException; a user-facing
`LmdiscError` (a bad data path, a stride out of range) is re-raised as itself, so entry points
print its one line and tests can match it.
"""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate

from lmdisc.errors import LmdiscError


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, LmdiscError):
            raise cause from None
        raise
