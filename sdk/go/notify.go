package aeterna

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// MaxDatagram is the largest notify payload systemd (and Aeterna) accept.
const MaxDatagram = 4096

// notifyAddress is NOTIFY_SOCKET as a unix address: a path, or "@name" for an
// abstract socket; "" when unset or of a kind we do not speak (vsock).
func notifyAddress(lookup func(string) (string, bool)) string {
	v, _ := lookup("NOTIFY_SOCKET")
	if strings.HasPrefix(v, "/") || strings.HasPrefix(v, "@") {
		return v
	}
	return ""
}

// sdNotify sends one datagram from a fresh socket (the kernel adds our
// credentials); false and no error without NOTIFY_SOCKET, as go-systemd's
// daemon.SdNotify.
func sdNotify(lookup func(string) (string, bool), state string, fds []int) (bool, error) {
	addr := notifyAddress(lookup)
	if addr == "" {
		return false, nil
	}
	if len(state) > MaxDatagram {
		return false, errors.New("aeterna: notify message over 4096 bytes")
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer syscall.Close(fd)
	to := &syscall.SockaddrUnix{Name: addr}
	var oob []byte
	if len(fds) > 0 {
		oob = syscall.UnixRights(fds...)
	}
	if err := syscall.Sendmsg(fd, []byte(state), oob, to, 0); err != nil {
		return false, err
	}
	return true, nil
}

// SdNotify sends state (KEY=VALUE lines) to NOTIFY_SOCKET of the process
// environment; (false, nil) when there is none.
func SdNotify(state string) (bool, error) { return sdNotify(os.LookupEnv, state, nil) }

// watchdogUsec is WATCHDOG_USEC when the watchdog is meant for pid (sd_watchdog_enabled).
func watchdogUsec(lookup func(string) (string, bool), pid int) (time.Duration, bool) {
	raw, _ := lookup("WATCHDOG_USEC")
	usec, err := strconv.ParseUint(raw, 10, 63)
	if err != nil || usec == 0 {
		return 0, false
	}
	if rawPid, ok := lookup("WATCHDOG_PID"); ok && rawPid != "" {
		if p, err := strconv.Atoi(rawPid); err != nil || p != pid {
			return 0, false
		}
	}
	return time.Duration(usec) * time.Microsecond, true
}
