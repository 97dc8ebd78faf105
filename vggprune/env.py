"""The one place vggprune reads its environment variables, with one meaning of true.

Every ``VGGPRUNE_*`` variable is named here. A switch is on for ``1/true/yes/on`` and off for
``0/false/no/off`` or empty (any case); anything else is a user error rather than a guess.
An empty value variable counts as unset.
"""

from __future__ import annotations

import os

from vggprune.errors import UserError

PREFIX = "VGGPRUNE_"
TRUE = ("1", "true", "yes", "on")
FALSE = ("", "0", "false", "no", "off")

CACHE_DIR_ENV = "VGGPRUNE_CACHE_DIR"
NO_CACHE_ENV = "VGGPRUNE_NO_CACHE"
DATA_ROOT_ENV = "VGGPRUNE_DATA_ROOT"
DOWNLOAD_ENV = "VGGPRUNE_DOWNLOAD"
WEIGHTS_ENV = "VGGPRUNE_WEIGHTS"


def env_name(flag: str) -> str:
    """``--batch-sizes`` -> ``VGGPRUNE_BATCH_SIZES``."""
    return PREFIX + flag.lstrip("-").replace("-", "_").upper()


def env_value(name: str) -> str | None:
    """The variable's value, or None when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or None


def env_flag(name: str) -> bool:
    """True for 1/true/yes/on, False for unset, empty or 0/false/no/off; a UserError otherwise."""
    value = os.environ.get(name, "").strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise UserError(f"{name}={os.environ[name]!r} is neither true ({'/'.join(TRUE)}) "
                    f"nor false ({'/'.join(FALSE[1:])} or empty)")
