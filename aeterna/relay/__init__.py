"""Hot relay and SRP: loaded by the first relay, or by a unit that enables SRP.

Nothing here is imported by an idle manager of plain units; keep this file empty.
"""
