"""Aeterna SDK: what a service run by Aeterna needs, in the standard library only.

- :class:`AeternaClient`: socket activation (``LISTEN_FDS``), sd_notify
  (readiness, status, watchdog) and SRP, the State Relay Protocol: load the
  predecessor's state, answer checkpoints, hand over arenas and connections.
- :class:`StateArena`: a sealed, fixed-size memfd mapped read/write that holds
  big state and moves to the next generation without a copy.

Outside Aeterna every call is a harmless no-op. Python 3.9+, Linux for memfds.
See README.md beside this package and docs/srp.md in the Aeterna repository.
"""

from .arena import StateArena
from .client import AeternaClient
from .codec import CodecError

__version__ = "0.2.0"
__all__ = ["AeternaClient", "CodecError", "StateArena", "__version__"]
