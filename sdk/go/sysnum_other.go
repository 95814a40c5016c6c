//go:build !amd64 && !arm64

package aeterna

// Unknown here: memfds (and so SRP states and arenas) report ErrNoMemfd.
const sysMemfdCreate = -1
