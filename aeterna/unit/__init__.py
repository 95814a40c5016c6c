"""One unit's lifecycle: states, the transition table, and the functions it names."""
