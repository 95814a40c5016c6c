package aeterna

import (
	"bytes"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// A fake manager: the other end of a real SOCK_SEQPACKET socketpair.
type fakeManager struct {
	t  *testing.T
	fd int
}

func newPair(t *testing.T) (*fakeManager, *Client) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	tv := syscall.NsecToTimeval(int64(5 * time.Second))
	syscall.SetsockoptTimeval(fds[0], syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	c := NewWithEnv(map[string]string{"AETERNA_SRP_FD": strconv.Itoa(fds[1]),
		"AETERNA_UNIT": "u", "AETERNA_GENERATION": "2"})
	if !c.SRPEnabled() {
		t.Fatal("the channel was not claimed")
	}
	m := &fakeManager{t, fds[0]}
	t.Cleanup(func() { c.Close(); syscall.Close(m.fd) })
	return m, c
}

func (m *fakeManager) send(text string, fds ...int) {
	m.t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = syscall.UnixRights(fds...)
	}
	if err := syscall.Sendmsg(m.fd, []byte(text), oob, nil, 0); err != nil {
		m.t.Fatal(err)
	}
}

// recv waits (bounded by SO_RCVTIMEO) for one message from the app.
func (m *fakeManager) recv() (*Message, []int) {
	m.t.Helper()
	data, fds, _, ok := recvRecord(m.fd)
	if !ok {
		m.t.Fatal("no message from the app within 5s")
	}
	msg, err := Parse(data)
	if err != nil {
		m.t.Fatalf("the app sent %q: %v", data, err)
	}
	return msg, fds
}

func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func snapshotOf(t *testing.T, data string) (int, string) {
	t.Helper()
	fd, err := snapshotFd([]byte(data), "test")
	if err != nil {
		t.Fatal(err)
	}
	sum, _ := sha256Of([]int{fd})
	return fd, sum
}

func TestEverythingIsANoOpOutsideAeterna(t *testing.T) {
	c := NewWithEnv(map[string]string{})
	if c.InAeterna() || c.SRPEnabled() || c.SRPRequired() || c.Generation() != -1 {
		t.Fatal("outside Aeterna the client must say so")
	}
	if c.Ready("x") || c.Status("x") || c.Watchdog() || c.Stopping() {
		t.Fatal("notify without NOTIFY_SOCKET must report false")
	}
	st, err := c.LoadContext(time.Second, nil)
	if st != nil || err != nil || c.LoadError() != "no-srp" {
		t.Fatalf("LoadContext: %v %v %q", st, err, c.LoadError())
	}
	cp, _ := JSONCheckpoint(map[string]int{"count": 1})
	if c.SaveContext(cp, true) {
		t.Fatal("SaveContext outside Aeterna")
	}
	c.OnCheckpoint(func(string) (Checkpoint, error) { return cp, nil }, nil, nil)
	if l, err := c.Listener(""); l != nil || err != nil {
		t.Fatal("a listener outside Aeterna")
	}
	if _, ok := c.WatchdogInterval(); ok {
		t.Fatal("a watchdog outside Aeterna")
	}
	c.Close()
}

func TestListenLayoutFollowsGoSystemd(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	env := map[string]string{"LISTEN_PID": pid, "LISTEN_FDS": "3", "LISTEN_FDNAMES": "http::admin"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	fds, names := listenLayout(lookup, os.Getpid())
	if !equalInts(fds, []int{3, 4, 5}) || names[0] != "http" || names[1] != "LISTEN_FD_4" || names[2] != "admin" {
		t.Fatalf("%v %v", fds, names)
	}
	env["LISTEN_PID"] = "1"
	if fds, _ := listenLayout(lookup, os.Getpid()); fds != nil {
		t.Fatal("fds meant for another pid were taken")
	}
	env["LISTEN_PID"], env["LISTEN_FDS"] = pid, "0"
	if fds, _ := listenLayout(lookup, os.Getpid()); fds != nil {
		t.Fatal("LISTEN_FDS=0 gave fds")
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestWatchdogIsOnlyForUs(t *testing.T) {
	c := NewWithEnv(map[string]string{"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": strconv.Itoa(os.Getpid())})
	if d, ok := c.WatchdogInterval(); !ok || d != time.Second {
		t.Fatalf("%v %v", d, ok)
	}
	c = NewWithEnv(map[string]string{"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
	if _, ok := c.WatchdogInterval(); ok {
		t.Fatal("another pid's watchdog")
	}
}

func TestTheChannelMustBeASeqpacketSocket(t *testing.T) {
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	c := NewWithEnv(map[string]string{"AETERNA_SRP_FD": strconv.Itoa(int(r.Fd()))})
	if c.SRPEnabled() {
		t.Fatal("a pipe was taken for the SRP channel")
	}
	fd, _ := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	defer syscall.Close(fd)
	if NewWithEnv(map[string]string{"AETERNA_SRP_FD": strconv.Itoa(fd)}).SRPEnabled() {
		t.Fatal("a stream socket was taken for the SRP channel")
	}
}

func TestLoadContextJSONWithChecksum(t *testing.T) {
	m, c := newPair(t)
	done := make(chan *State)
	go func() {
		st, err := c.LoadContext(5*time.Second, nil)
		if err != nil {
			t.Error(err)
		}
		done <- st
	}()
	hello, _ := m.recv()
	if hello.Verb != "HELLO" || hello.Get("WANT_STATE") != "1" || hello.Get("VERSION") != "1" {
		t.Fatalf("%+v", hello)
	}
	fd, sum := snapshotOf(t, `{"count":41}`)
	m.send("STATE=1\nSEQ=5\nFORMAT=json\nSCHEMA=3\nSIZE=12\nCHECKSUM="+sum+"\nFDNAMES=state\nFDKINDS=snapshot\n", fd)
	syscall.Close(fd)
	st := <-done
	var v struct{ Count int }
	if st == nil || st.JSON(&v) != nil || v.Count != 41 || st.Schema != 3 {
		t.Fatalf("%+v %+v", st, v)
	}
	ans, _ := m.recv()
	if ans.Verb != "LOADED" || !ans.OK() || ans.Get("SEQ") != "5" {
		t.Fatalf("%+v", ans)
	}
	if c.Loaded()["FORMAT"] != "json" || c.LoadError() != "" {
		t.Fatal(c.Loaded(), c.LoadError())
	}
}

func TestStateZeroMeansStartCold(t *testing.T) {
	m, c := newPair(t)
	go func() { m.recv(); m.send("STATE=0\nREASON=none\n") }()
	st, err := c.LoadContext(5*time.Second, nil)
	if st != nil || err != nil || c.LoadError() != "none" {
		t.Fatal(st, err, c.LoadError())
	}
}

func TestLoadContextIsBounded(t *testing.T) {
	_, c := newPair(t)
	t0 := time.Now()
	st, _ := c.LoadContext(200*time.Millisecond, nil)
	if st != nil || c.LoadError() != "timeout" || time.Since(t0) > 3*time.Second {
		t.Fatal(st, c.LoadError(), time.Since(t0))
	}
}

func TestRefusedStatesAreAnsweredAndLeakNothing(t *testing.T) {
	cases := map[string]func(t *testing.T) (string, int){
		"checksum": func(t *testing.T) (string, int) {
			fd, _ := snapshotOf(t, `{"count":1}`)
			return "STATE=1\nSEQ=1\nFORMAT=json\nSIZE=11\nCHECKSUM=sha256:00\nFDNAMES=state\nFDKINDS=snapshot\n", fd
		},
		"seals": func(t *testing.T) (string, int) {
			fd, _ := memfdCreate("weak", 2) // no seals at all
			return "STATE=1\nSEQ=1\nFORMAT=json\nSIZE=2\nFDNAMES=state\nFDKINDS=snapshot\n", fd
		},
		"fds": func(t *testing.T) (string, int) {
			fd, _ := snapshotOf(t, `{}`)
			return "STATE=1\nSEQ=1\nFORMAT=json\nSIZE=2\nFDNAMES=a:b\nFDKINDS=snapshot:snapshot\n", fd
		},
		"format": func(t *testing.T) (string, int) {
			fd, _ := snapshotOf(t, "\x80\x04K\x01.")
			return "STATE=1\nSEQ=1\nFORMAT=pickle\nSIZE=5\nFDNAMES=state\nFDKINDS=snapshot\n", fd
		},
		"decode": func(t *testing.T) (string, int) {
			fd, _ := snapshotOf(t, `{not json`)
			return "STATE=1\nSEQ=1\nFORMAT=json\nSIZE=9\nFDNAMES=state\nFDKINDS=snapshot\n", fd
		},
	}
	for want, build := range cases {
		t.Run(want, func(t *testing.T) {
			m, c := newPair(t)
			before := openFds(t)
			text, fd := build(t)
			go func() { m.recv(); m.send(text, fd); syscall.Close(fd) }()
			st, err := c.LoadContext(5*time.Second, nil)
			if st != nil || err == nil || c.LoadError() != want {
				t.Fatalf("%v %v %q", st, err, c.LoadError())
			}
			ans, _ := m.recv()
			if ans.Verb != "LOADED" || ans.OK() || ans.Get("ERROR") != want || ans.Get("SEQ") != "1" {
				t.Fatalf("%+v", ans)
			}
			if after := openFds(t); after > before {
				t.Fatalf("%d fds leaked", after-before)
			}
		})
	}
}

func TestValidateRefusesAState(t *testing.T) {
	m, c := newPair(t)
	fd, sum := snapshotOf(t, `{"count":-1}`)
	go func() {
		m.recv()
		m.send("STATE=1\nSEQ=2\nFORMAT=json\nSIZE=12\nCHECKSUM="+sum+"\nFDNAMES=state\nFDKINDS=snapshot\n", fd)
	}()
	st, err := c.LoadContext(5*time.Second, func(s *State) error {
		var v struct{ Count int }
		if err := s.JSON(&v); err != nil || v.Count < 0 {
			return os.ErrInvalid
		}
		return nil
	})
	if st != nil || err == nil || c.LoadError() != "invalid" {
		t.Fatal(st, err)
	}
	if ans, _ := m.recv(); ans.Get("ERROR") != "invalid" {
		t.Fatalf("%+v", ans)
	}
}

func TestCheckpointQuiesceAndResume(t *testing.T) {
	m, c := newPair(t)
	count := 7
	quiesced := make(chan string, 1)
	resumed := make(chan *State, 2)
	c.OnCheckpoint(func(reason string) (Checkpoint, error) {
		cp, err := JSONCheckpoint(map[string]int{"count": count})
		cp.Schema = 1
		return cp, err
	}, func(reason string) { quiesced <- reason }, func(st *State) error { resumed <- st; return nil })
	if hello, _ := m.recv(); hello.Verb != "HELLO" || hello.Get("WANT_STATE") != "0" {
		t.Fatalf("%+v", hello)
	}
	m.send("CHECKPOINT=1\nSEQ=7\nREASON=relay\n")
	msg, fds := m.recv()
	if msg.Verb != "STATE" || !msg.OK() || msg.Get("SEQ") != "7" || msg.Get("FORMAT") != "json" ||
		msg.Get("SCHEMA") != "1" || msg.Get("FDKINDS") != "snapshot" || msg.Get("FDNAMES") != "state" || len(fds) != 1 {
		t.Fatalf("%+v %v", msg, fds)
	}
	if !hasSeals(fds[0], SealsSnapshot) {
		t.Fatal("the checkpoint's memfd is not sealed as a snapshot")
	}
	data, _ := readAll(fds[0])
	sum, _ := sha256Of(fds)
	if string(data) != `{"count":7}` || msg.Get("CHECKSUM") != sum || msg.Get("SIZE") != "11" {
		t.Fatalf("%q %+v", data, msg)
	}
	if r := <-quiesced; r != "relay" || !c.Quiesced() {
		t.Fatal("not quiesced", r)
	}
	cp, _ := JSONCheckpoint(1)
	if c.SaveContext(cp, true) {
		t.Fatal("SaveContext after a relay checkpoint: the state belongs to N+1")
	}
	// A rollback without a state: keep your own.
	m.send("RESUME=1\nSEQ=8\nREASON=checkpoint-timeout\n")
	if st := <-resumed; st != nil {
		t.Fatal("a RESUME without fds must give nil")
	}
	if ans, _ := m.recv(); ans.Verb != "LOADED" || !ans.OK() || ans.Get("SEQ") != "8" || c.Quiesced() {
		t.Fatalf("%+v", ans)
	}
	// A rollback with N+1's state: take it.
	m.send("RESUME=1\nSEQ=9\n"+"FORMAT=json\nSIZE=11\nFDNAMES=state\nFDKINDS=snapshot\n", fds[0])
	syscall.Close(fds[0])
	st := <-resumed
	var v struct{ Count int }
	if st == nil || st.JSON(&v) != nil || v.Count != 7 {
		t.Fatal(st)
	}
	if ans, _ := m.recv(); !ans.OK() || ans.Get("SEQ") != "9" {
		t.Fatalf("%+v", ans)
	}
}

func TestRequestsWithoutCallbacksAreRefused(t *testing.T) {
	m, c := newPair(t)
	c.ch.start()
	m.send("CHECKPOINT=1\nSEQ=3\n")
	if ans, _ := m.recv(); ans.Verb != "STATE" || ans.OK() || ans.Get("ERROR") != "no-checkpoint-callback" {
		t.Fatalf("%+v", ans)
	}
	m.send("RESUME=1\nSEQ=4\n")
	if ans, _ := m.recv(); ans.Verb != "LOADED" || ans.OK() || ans.Get("ERROR") != "no-resume-callback" {
		t.Fatalf("%+v", ans)
	}
}

func TestSaveContextCopiesArenas(t *testing.T) {
	m, c := newPair(t)
	a, err := NewArena("vectors", 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	copy(a.Bytes(), "live")
	c.ShareArena("vectors", a)
	if !c.SaveContext(BytesCheckpoint([]byte("obj")), true) {
		t.Fatal("not sent")
	}
	msg, fds := m.recv()
	defer closeFds(fds)
	if _, ok := msg.Fields["SEQ"]; ok || msg.Get("FDKINDS") != "snapshot:arena" || msg.Get("CHECKSUM") != "" ||
		msg.Get("SIZE") != strconv.Itoa(3+4096) || msg.Get("FORMAT") != "bytes" {
		t.Fatalf("%+v", msg)
	}
	var live, sent syscall.Stat_t
	syscall.Fstat(a.Fd(), &live)
	syscall.Fstat(fds[1], &sent)
	if live.Ino == sent.Ino || !hasSeals(fds[1], SealsArena) {
		t.Fatal("an unsolicited checkpoint must send a sealed copy of the arena")
	}
}

func TestArenaMovesWithoutACopy(t *testing.T) {
	mN, n := newPair(t)
	mN1, n1 := newPair(t)
	a, err := NewArena("table", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	copy(a.Bytes(), "hello from N")
	n.ShareArena("table", a)
	n.OnCheckpoint(func(string) (Checkpoint, error) {
		return Checkpoint{Format: "arena", Schema: NoSchema}, nil
	}, nil, nil)
	mN.recv() // HELLO
	mN.send("CHECKPOINT=1\nSEQ=1\nREASON=relay\n")
	msg, fds := mN.recv()
	if msg.Get("FORMAT") != "arena" || msg.Get("FDKINDS") != "arena" || msg.Get("CHECKSUM") != "" || len(fds) != 1 {
		t.Fatalf("%+v", msg)
	}
	var live, sent syscall.Stat_t
	syscall.Fstat(a.Fd(), &live)
	syscall.Fstat(fds[0], &sent)
	if live.Ino != sent.Ino {
		t.Fatal("a relay checkpoint must pass the live memfd")
	}
	done := make(chan *State)
	go func() { st, _ := n1.LoadContext(5*time.Second, nil); done <- st }()
	mN1.recv()
	mN1.send("STATE=1\nSEQ=1\nFORMAT=arena\nSIZE=1048576\nFDNAMES=table\nFDKINDS=arena\n", fds[0])
	syscall.Close(fds[0])
	st := <-done
	got := n1.Arena("table")
	if st == nil || got == nil || !got.Writable() || !bytes.HasPrefix(got.Bytes(), []byte("hello from N")) {
		t.Fatal("N+1 did not map N's arena")
	}
	copy(got.Bytes(), "N+1 writes!!")
	if !bytes.HasPrefix(a.Bytes(), []byte("N+1 writes!!")) {
		t.Fatal("not the same memory")
	}
	a.Close()
	got.Close()
}

func TestConnectionsMoveWithThePeerConnected(t *testing.T) {
	mN, n := newPair(t)
	mN1, n1 := newPair(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	served, _ := ln.Accept()
	if err := n.HandoffConnections(map[string]FileConn{"session-1": served.(*net.TCPConn)}); err != nil {
		t.Fatal(err)
	}
	n.OnCheckpoint(func(string) (Checkpoint, error) { return JSONCheckpoint([]string{"session-1"}) }, nil, nil)
	mN.recv()
	mN.send("CHECKPOINT=1\nSEQ=4\n")
	msg, fds := mN.recv()
	if msg.Get("FDKINDS") != "snapshot:conn" || msg.Get("FDNAMES") != "state:session-1" || len(fds) != 2 {
		t.Fatalf("%+v", msg)
	}
	done := make(chan *State)
	go func() { st, _ := n1.LoadContext(5*time.Second, nil); done <- st }()
	mN1.recv()
	mN1.send("STATE=1\nSEQ=4\n"+"FORMAT=json\nSIZE="+msg.Get("SIZE")+"\nCHECKSUM="+msg.Get("CHECKSUM")+
		"\nFDNAMES=state:session-1\nFDKINDS=snapshot:conn\n", fds...)
	closeFds(fds)
	if st := <-done; st == nil {
		t.Fatal("no state")
	}
	conns := n1.AdoptedConnections()
	conn := conns["session-1"]
	if conn == nil || len(n1.AdoptedConnections()) != 0 {
		t.Fatal("the connection was not adopted once", conns)
	}
	conn.Write([]byte("still here"))
	conn.Close()
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	k, _ := peer.Read(buf)
	if string(buf[:k]) != "still here" {
		t.Fatalf("the peer read %q", buf[:k])
	}
	if k, err := peer.Read(buf); k != 0 || err == nil {
		t.Fatal("closing the adopted connection must end it for the peer")
	}
}

func TestAnEOFOnTheChannelEndsLoadContext(t *testing.T) {
	m, c := newPair(t)
	go func() { m.recv(); syscall.Shutdown(m.fd, syscall.SHUT_RDWR) }()
	st, _ := c.LoadContext(5*time.Second, nil)
	if st != nil || c.LoadError() != "peer-gone" {
		t.Fatal(st, c.LoadError())
	}
}
