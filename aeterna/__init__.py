"""Aeterna: a process manager for zero-downtime, zero-amnesia upgrades.

``from aeterna import AeternaClient`` (the original design's spelling) works
when the SDK is installed: the SDK's public names are re-exported on first
use, so ``import aeterna`` alone (the manager) loads nothing of it. The SDK's
own name, ``aeterna_sdk``, stays the primary one.
"""

from typing import Any

__version__ = "0.1.0"

_SDK_NAMES = ("AeternaClient", "StateArena", "CodecError")


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        try:
            import aeterna_sdk
        except ImportError:
            raise ImportError(f"aeterna.{name} is the SDK's: install aeterna_sdk "
                              "(Debian: python3-aeterna-sdk)") from None
        value = getattr(aeterna_sdk, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'aeterna' has no attribute {name!r}")
