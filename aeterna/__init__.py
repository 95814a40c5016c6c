"""Aeterna: a process manager for zero-downtime, zero-amnesia upgrades."""

__version__ = "0.1.0"
