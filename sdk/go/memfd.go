package aeterna

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"syscall"
	"unsafe"
)

// Seals (linux/fcntl.h). A snapshot is sealed against every change; an arena
// stays writable but can never change size, so any holder may map all of it
// without risking SIGBUS (docs/srp.md §4, the sealing rule).
const (
	fAddSeals       = 1033 // F_ADD_SEALS
	fGetSeals       = 1034 // F_GET_SEALS
	SealSeal        = 0x1
	SealShrink      = 0x2
	SealGrow        = 0x4
	SealWrite       = 0x8
	SealsArena      = SealShrink | SealGrow | SealSeal
	SealsSnapshot   = SealsArena | SealWrite
	mfdCloexec      = 0x1
	mfdAllowSealing = 0x2
)

// ErrNoMemfd is returned where memfd_create is unknown to this build.
var ErrNoMemfd = errors.New("aeterna: memfd_create is not available on this architecture")

// memfdCreate returns a close-on-exec memfd that accepts seals, size bytes of zeros.
func memfdCreate(name string, size int64) (int, error) {
	if sysMemfdCreate < 0 {
		return -1, ErrNoMemfd
	}
	p, err := syscall.BytePtrFromString(name)
	if err != nil {
		return -1, err
	}
	r, _, errno := syscall.Syscall(uintptr(sysMemfdCreate), uintptr(unsafe.Pointer(p)),
		mfdCloexec|mfdAllowSealing, 0)
	if errno != 0 {
		return -1, errno
	}
	fd := int(r)
	if size > 0 {
		if err := syscall.Ftruncate(fd, size); err != nil {
			syscall.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

func addSeals(fd, seals int) error {
	_, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), fAddSeals, uintptr(seals))
	if errno != 0 {
		return errno
	}
	return nil
}

// Seals returns the seals of fd, or an error when it is not a memfd.
func Seals(fd int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), fGetSeals, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

func hasSeals(fd, need int) bool {
	s, err := Seals(fd)
	return err == nil && s&need == need
}

func sizeOf(fd int) (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return st.Size, nil
}

func writeAll(fd int, data []byte) error {
	for off := 0; off < len(data); {
		n, err := syscall.Pwrite(fd, data[off:], int64(off))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return io.ErrShortWrite
		}
		off += n
	}
	return nil
}

// snapshotFd returns a new memfd holding data, sealed as a snapshot.
func snapshotFd(data []byte, name string) (int, error) {
	fd, err := memfdCreate(name, int64(len(data)))
	if err != nil {
		return -1, err
	}
	if err := writeAll(fd, data); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	if err := addSeals(fd, SealsSnapshot); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// eachChunk calls fn with the content of fd from offset 0, 1 MiB at a time.
func eachChunk(fd int, fn func([]byte)) error {
	size, err := sizeOf(fd)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		want := size - off
		if want > int64(len(buf)) {
			want = int64(len(buf))
		}
		n, err := syscall.Pread(fd, buf[:want], off)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		fn(buf[:n])
		off += int64(n)
	}
	return nil
}

func readAll(fd int) ([]byte, error) {
	var out []byte
	err := eachChunk(fd, func(b []byte) { out = append(out, b...) })
	return out, err
}

// sha256Of is the CHECKSUM= value: sha256:<hex> over the contents in fd order.
func sha256Of(fds []int) (string, error) {
	h := sha256.New()
	for _, fd := range fds {
		if err := eachChunk(fd, func(b []byte) { h.Write(b) }); err != nil {
			return "", err
		}
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

func closeFds(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			syscall.Close(fd)
		}
	}
}
