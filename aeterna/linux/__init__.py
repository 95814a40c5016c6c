"""The only kernel-facing code: spawning, reaping, signals, sockets, fds, memfds, /proc."""
