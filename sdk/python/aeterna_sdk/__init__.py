"""Aeterna SDK: helpers for services supervised by Aeterna.

Placeholder package; the API (readiness notification, state hand-off across
hot relays) will be added here. It must stay dependency-free and run on
Python 3.9+.
"""

__version__ = "0.1.0"
