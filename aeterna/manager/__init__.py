"""The event loop and its run queue, spawning, the reaper, reloads, the notify socket."""
