package aeterna

import (
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// listenFdsStart is SD_LISTEN_FDS_START: passed fds start at 3.
const listenFdsStart = 3

var (
	filesOnce sync.Once
	files     []*os.File
)

// Files returns the fds passed with LISTEN_FDS, as go-systemd's
// activation.Files does: nothing unless LISTEN_PID is our own pid; each fd
// gets FD_CLOEXEC; each *os.File is named from LISTEN_FDNAMES, or
// "LISTEN_FD_<n>" where a name is missing. With unsetEnv the three variables
// are removed from the environment, so children do not see them.
//
// Unlike go-systemd the files are wrapped once per process and the same
// slice comes back on every call: a second *os.File for the same fd would
// close it under the first when garbage-collected.
func Files(unsetEnv bool) []*os.File {
	filesOnce.Do(func() { files = filesFor(os.LookupEnv) })
	if unsetEnv {
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_FDNAMES")
	}
	return files
}

// listenLayout is the fd numbers and names that env passes to pid.
func listenLayout(lookup func(string) (string, bool), pid int) ([]int, []string) {
	rawPid, _ := lookup("LISTEN_PID")
	if p, err := strconv.Atoi(rawPid); err != nil || p != pid {
		return nil, nil
	}
	rawN, _ := lookup("LISTEN_FDS")
	n, err := strconv.Atoi(rawN)
	if err != nil || n <= 0 {
		return nil, nil
	}
	rawNames, _ := lookup("LISTEN_FDNAMES")
	given := strings.Split(rawNames, ":")
	fds := make([]int, 0, n)
	names := make([]string, 0, n)
	for i := 0; i < n; i++ {
		fd := listenFdsStart + i
		name := "LISTEN_FD_" + strconv.Itoa(fd)
		if i < len(given) && given[i] != "" {
			name = given[i]
		}
		fds = append(fds, fd)
		names = append(names, name)
	}
	return fds, names
}

// Listeners returns a net.Listener for every passed fd, in order, with nil
// for an fd that is not a stream listener (go-systemd's activation.Listeners).
// Each listener holds its own dup of the fd; the passed files stay open.
func Listeners() ([]net.Listener, error) {
	fs := Files(false)
	out := make([]net.Listener, len(fs))
	for i, f := range fs {
		if l, err := net.FileListener(f); err == nil {
			out[i] = l
		}
	}
	return out, nil
}

// ListenersWithNames maps each name to its listeners
// (go-systemd's activation.ListenersWithNames).
func ListenersWithNames() (map[string][]net.Listener, error) {
	out := map[string][]net.Listener{}
	for _, f := range Files(false) {
		if l, err := net.FileListener(f); err == nil {
			out[f.Name()] = append(out[f.Name()], l)
		}
	}
	return out, nil
}

// ListenerFile returns the passed fd called name ("" for the first one) that
// is a socket, or nil. Serve on net.FileListener(f) as many times as needed:
// each gets its own dup, so closing one (http.Server.Shutdown) keeps the fd.
func ListenerFile(name string) *os.File {
	for _, f := range Files(false) {
		if (name == "" || f.Name() == name) && isSocket(int(f.Fd())) {
			return f
		}
	}
	return nil
}

func isSocket(fd int) bool {
	var st syscall.Stat_t
	return syscall.Fstat(fd, &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFSOCK
}
