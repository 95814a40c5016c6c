// Package aeterna is what a Go service run by Aeterna needs, in the standard
// library only: socket activation (LISTEN_FDS, with go-systemd's semantics),
// sd_notify (Ready, Status, Watchdog, Stopping) and SRP, the State Relay
// Protocol of docs/srp.md: load the predecessor's state, answer checkpoints,
// hand over sealed memfd arenas and established connections.
//
// It mirrors the Python SDK (sdk/python): outside Aeterna every call is a
// harmless no-op (notifications report false, LoadContext returns no state at
// once, there are no listeners), so the same binary runs on a laptop.
//
// Linux only for memfds and SRP; amd64 and arm64 know the memfd_create system
// call number (the syscall package of Go 1.19 does not).
package aeterna
