package aeterna

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// The SDK's layout of a state, as in the Python SDK (docs/srp.md §4): first
// the object's bytes in a snapshot memfd named "state" (absent for
// FORMAT=arena), then every shared arena (kind arena), then every handed-over
// connection (kind conn). CHECKSUM= covers the memfds and is only written
// when there is no arena: an arena is live memory its receiver keeps writing.
const objectName = "state"

// NoSchema leaves SCHEMA= out of a checkpoint.
const NoSchema = -1

var metaKeys = []string{"FORMAT", "SCHEMA", "SIZE", "CHECKSUM", "FDNAMES", "FDKINDS"}

// Checkpoint is what an app gives: the object's bytes and how they are encoded.
// Format is "json", "bytes", "arena" (the state is the shared arenas alone) or
// "x-..."; Schema is the app's own version (NoSchema: none).
type Checkpoint struct {
	Format string
	Data   []byte
	Schema int
}

// JSONCheckpoint encodes v as FORMAT=json.
func JSONCheckpoint(v interface{}) (Checkpoint, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return Checkpoint{}, err
	}
	return Checkpoint{Format: "json", Data: data, Schema: NoSchema}, nil
}

// BytesCheckpoint sends data as it is (FORMAT=bytes).
func BytesCheckpoint(data []byte) Checkpoint {
	return Checkpoint{Format: "bytes", Data: data, Schema: NoSchema}
}

// State is a received state: its metadata, the object's bytes, and the arenas
// and connections that came with it (now owned by the receiver).
type State struct {
	Format string
	Schema int // NoSchema when SCHEMA= was absent or not a number
	Data   []byte
	Meta   map[string]string
	Arenas map[string]*Arena
	Conns  map[string]net.Conn
}

// JSON decodes a FORMAT=json state into v.
func (s *State) JSON(v interface{}) error {
	if s.Format != "json" {
		return fmt.Errorf("aeterna: state has FORMAT=%s, not json", s.Format)
	}
	return json.Unmarshal(s.Data, v)
}

func (s *State) close() {
	for _, a := range s.Arenas {
		a.Close()
	}
	for _, c := range s.Conns {
		c.Close()
	}
	s.Arenas, s.Conns = map[string]*Arena{}, map[string]net.Conn{}
}

// loadError is why a state was refused; Reason is the LOADED ERROR= word.
type loadError struct{ Reason, Detail string }

func (e *loadError) Error() string { return e.Reason + ": " + e.Detail }

// checkName applies LISTEN_FDNAMES' rules: printable ASCII, no ':', <= 255 bytes.
func checkName(name string) error {
	if len(name) > 255 || strings.ContainsRune(name, ':') {
		return fmt.Errorf("aeterna: invalid fd name %q", name)
	}
	for i := 0; i < len(name); i++ {
		if name[i] < 0x20 || name[i] > 0x7e {
			return fmt.Errorf("aeterna: invalid fd name %q", name)
		}
	}
	return nil
}

func validFormat(f string) bool {
	switch f {
	case "json", "bytes", "pickle", "arena":
		return true
	}
	return strings.HasPrefix(f, "x-")
}

// outgoing is the keys and fds of one STATE=1; release() after sending.
type outgoing struct {
	fields []Field
	fds    []int
	owned  []int
}

func (o *outgoing) release() { closeFds(o.owned); o.owned = nil }

// buildState lays out cp, the arenas (live, or sealed copies with
// copyArenas) and the connections' fds (borrowed: the caller closes them).
func buildState(cp Checkpoint, arenas map[string]*Arena, arenaOrder []string,
	conns map[string]*os.File, connOrder []string, copyArenas bool) (*outgoing, error) {
	out := &outgoing{}
	var names, kinds []string
	add := func(name, kind string, fd int, owned bool) {
		names = append(names, name)
		kinds = append(kinds, kind)
		out.fds = append(out.fds, fd)
		if owned {
			out.owned = append(out.owned, fd)
		}
	}
	format := cp.Format
	if format == "" {
		format = "json"
	}
	if !validFormat(format) {
		return nil, fmt.Errorf("aeterna: unknown format %q (json, bytes, arena, x-...)", format)
	}
	if format == "json" && !json.Valid(cp.Data) {
		return nil, errors.New("aeterna: FORMAT=json with bytes that are not JSON")
	}
	if format == "arena" && len(arenas) == 0 {
		return nil, errors.New("aeterna: FORMAT=arena without a shared arena")
	}
	if format != "arena" {
		fd, err := snapshotFd(cp.Data, "aeterna-snapshot")
		if err != nil {
			return nil, err
		}
		add(objectName, "snapshot", fd, true)
	}
	for _, name := range arenaOrder {
		a := arenas[name]
		if copyArenas {
			fd, err := a.copyFd()
			if err != nil {
				out.release()
				return nil, err
			}
			add(name, "arena", fd, true)
		} else {
			fd := a.Fd()
			if fd < 0 {
				out.release()
				return nil, fmt.Errorf("aeterna: arena %q has no memfd to hand over", name)
			}
			add(name, "arena", fd, false)
		}
	}
	blobs := append([]int(nil), out.fds...)
	for _, name := range connOrder {
		add(name, "conn", int(conns[name].Fd()), false)
	}
	if len(out.fds) > MaxFDs {
		out.release()
		return nil, fmt.Errorf("aeterna: %d fds exceed SCM_RIGHTS' %d", len(out.fds), MaxFDs)
	}
	var size int64
	for _, fd := range blobs {
		n, err := sizeOf(fd)
		if err != nil {
			out.release()
			return nil, err
		}
		size += n
	}
	out.fields = append(out.fields, Field{"FORMAT", format})
	if cp.Schema >= 0 {
		out.fields = append(out.fields, Field{"SCHEMA", strconv.Itoa(cp.Schema)})
	}
	out.fields = append(out.fields, Field{"SIZE", strconv.FormatInt(size, 10)})
	if len(arenas) == 0 {
		sum, err := sha256Of(blobs)
		if err != nil {
			out.release()
			return nil, err
		}
		out.fields = append(out.fields, Field{"CHECKSUM", sum})
	}
	out.fields = append(out.fields, Field{"FDNAMES", strings.Join(names, ":")},
		Field{"FDKINDS", strings.Join(kinds, ":")})
	return out, nil
}

// receiveState checks and decodes a STATE=1 or RESUME=1 and takes ownership
// of fds (all closed on error). The error is a *loadError whose Reason is the
// LOADED ERROR= word: fds, seals, checksum, format, decode, invalid.
func receiveState(msg *Message, fds []int) (*State, error) {
	st := &State{Meta: map[string]string{}, Arenas: map[string]*Arena{},
		Conns: map[string]net.Conn{}, Schema: NoSchema}
	for _, k := range metaKeys {
		if v, ok := msg.Fields[k]; ok {
			st.Meta[k] = v
		}
	}
	pending := map[int]bool{}
	for _, fd := range fds {
		pending[fd] = true
	}
	fail := func(reason, detail string) (*State, error) {
		for fd := range pending {
			syscall.Close(fd)
		}
		st.close()
		return nil, &loadError{reason, detail}
	}
	var kinds, names []string
	if k := st.Meta["FDKINDS"]; k != "" {
		kinds = strings.Split(k, ":")
	}
	if n := st.Meta["FDNAMES"]; n != "" {
		names = strings.Split(n, ":")
	}
	if len(kinds) != len(fds) || (names != nil && len(names) != len(fds)) {
		return fail("fds", fmt.Sprintf("%d fds, FDKINDS names %d", len(fds), len(kinds)))
	}
	if names == nil {
		for i := range fds {
			names = append(names, "fd"+strconv.Itoa(i))
		}
	}
	var blobs []int
	for i, fd := range fds {
		switch kinds[i] {
		case "conn":
			continue
		case "snapshot":
			if !hasSeals(fd, SealsSnapshot) {
				return fail("seals", "a snapshot fd without its seals")
			}
		case "arena":
			if !hasSeals(fd, SealsArena) {
				return fail("seals", "an arena fd without its seals")
			}
		default:
			return fail("seals", "unknown kind "+kinds[i])
		}
		blobs = append(blobs, fd)
	}
	if want := st.Meta["CHECKSUM"]; want != "" {
		got, err := sha256Of(blobs)
		if err != nil || got != want {
			return fail("checksum", "")
		}
	}
	st.Format = st.Meta["FORMAT"]
	if st.Format == "" {
		st.Format = "json"
	}
	if s, err := strconv.Atoi(st.Meta["SCHEMA"]); err == nil && s >= 0 {
		st.Schema = s
	}
	if st.Format == "pickle" || !validFormat(st.Format) {
		return fail("format", "FORMAT="+st.Format+" is not one a Go app reads")
	}
	objFd := -1
	for i, fd := range fds {
		switch {
		case kinds[i] == "snapshot" && objFd < 0 && st.Format != "arena":
			objFd = fd
		case kinds[i] == "conn":
			f := os.NewFile(uintptr(fd), names[i])
			delete(pending, fd)
			conn, err := net.FileConn(f) // dups the fd
			f.Close()
			if err != nil {
				return fail("invalid", "connection "+names[i]+": "+err.Error())
			}
			st.Conns[names[i]] = conn
		default:
			a, err := arenaFromFd(fd, names[i])
			if err != nil {
				return fail("invalid", err.Error())
			}
			delete(pending, fd)
			st.Arenas[names[i]] = a
		}
	}
	if objFd >= 0 {
		data, err := readAll(objFd)
		if err != nil {
			return fail("invalid", err.Error())
		}
		if st.Format == "json" && !json.Valid(data) {
			return fail("decode", "not JSON")
		}
		st.Data = data
	}
	for fd := range pending {
		syscall.Close(fd) // the object's snapshot, now read
	}
	return st, nil
}
