package aeterna

import (
	"errors"
	"sync"
	"syscall"
)

// Arena is big state kept all the time in a fixed-size memfd, sealed
// SHRINK|GROW|SEAL (never WRITE) and mapped shared read/write with
// syscall.Mmap. A relay checkpoint passes the fd itself (kind "arena"), so
// nothing is copied: the next generation maps the same memory and goes on
// using it. The sender must stop writing before its checkpoint is answered.
type Arena struct {
	Name     string
	mu       sync.Mutex
	fd       int
	data     []byte
	writable bool
}

// NewArena creates a sealed arena of size bytes of zeros.
func NewArena(name string, size int) (*Arena, error) {
	if size <= 0 {
		return nil, errors.New("aeterna: an arena needs a size > 0")
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	fd, err := memfdCreate(name, int64(size))
	if err != nil {
		return nil, err
	}
	if err := addSeals(fd, SealsArena); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	data, err := syscall.Mmap(fd, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		syscall.Close(fd)
		return nil, err
	}
	return &Arena{Name: name, fd: fd, data: data, writable: true}, nil
}

// arenaFromFd maps a received memfd; the arena owns fd from then on. A memfd
// sealed against writes (a snapshot) is mapped read-only.
func arenaFromFd(fd int, name string) (*Arena, error) {
	seals, err := Seals(fd)
	if err != nil {
		return nil, errors.New("aeterna: not a memfd: cannot be mapped as an arena")
	}
	if seals&(SealShrink|SealGrow) != SealShrink|SealGrow {
		return nil, errors.New("aeterna: the memfd is not sealed against shrinking and growing")
	}
	size, err := sizeOf(fd)
	if err != nil {
		return nil, err
	}
	writable := seals&SealWrite == 0
	prot := syscall.PROT_READ
	if writable {
		prot |= syscall.PROT_WRITE
	}
	a := &Arena{Name: name, fd: fd, writable: writable}
	if size > 0 {
		a.data, err = syscall.Mmap(fd, 0, int(size), prot, syscall.MAP_SHARED)
		if err != nil {
			return nil, err
		}
	}
	return a, nil
}

// Bytes is the mapped memory (nil once closed). Do not keep it past Close.
func (a *Arena) Bytes() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.data
}

// Size is the arena's fixed size in bytes.
func (a *Arena) Size() int { return len(a.Bytes()) }

// Writable is false for a received snapshot (sealed against writes).
func (a *Arena) Writable() bool { return a.writable }

// Fd is the memfd, or -1 once closed.
func (a *Arena) Fd() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.fd
}

// Close unmaps the memory and closes the memfd.
func (a *Arena) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var err error
	if a.data != nil {
		err = syscall.Munmap(a.data)
		a.data = nil
	}
	if a.fd >= 0 {
		if cerr := syscall.Close(a.fd); err == nil {
			err = cerr
		}
		a.fd = -1
	}
	return err
}

// copyFd is a new memfd with the arena's current content, sealed as an arena:
// what an unsolicited checkpoint sends, since the app goes on writing.
func (a *Arena) copyFd() (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fd < 0 {
		return -1, errors.New("aeterna: arena is closed")
	}
	fd, err := memfdCreate(a.Name, int64(len(a.data)))
	if err != nil {
		return -1, err
	}
	if err := writeAll(fd, a.data); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	if err := addSeals(fd, SealsArena); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}
