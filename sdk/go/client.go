package aeterna

import (
	"errors"
	"net"
	"os"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// DefaultLoadTimeout bounds LoadContext when it is given 0.
const DefaultLoadTimeout = 60 * time.Second

// FileConn is a connection that can be handed over: *net.TCPConn, *net.UnixConn.
type FileConn interface {
	net.Conn
	File() (*os.File, error)
}

// Client is the app's side of socket activation, sd_notify and SRP. Outside
// Aeterna (no LISTEN_*, NOTIFY_SOCKET or AETERNA_SRP_FD) every method is a
// harmless no-op.
type Client struct {
	lookup     func(string) (string, bool)
	unit       string
	generation int
	ch         *channel

	mu         sync.Mutex
	helloSent  bool
	arenas     map[string]*Arena
	arenaOrder []string
	handoff    map[string]*os.File
	handOrder  []string
	adopted    map[string]net.Conn
	checkpoint func(reason string) (Checkpoint, error)
	onQuiesce  func(reason string)
	onResume   func(*State) error
	quiesced   bool
	loaded     map[string]string
	loadError  string
}

var (
	processMu     sync.Mutex
	processClient *Client
)

// New returns the process's client, reading os.Environ. The SRP channel is
// claimed once per process: AETERNA_SRP_FD is removed from the environment so
// children neither inherit the fd (it is made close-on-exec) nor believe a
// stale number, and later calls return the same client.
func New() *Client {
	processMu.Lock()
	defer processMu.Unlock()
	if processClient == nil {
		processClient = newClient(os.LookupEnv)
		os.Unsetenv("AETERNA_SRP_FD")
	}
	return processClient
}

// NewWithEnv builds a client from env alone (tests, or a process that reads
// its variables elsewhere); it claims the SRP fd env names, if any.
func NewWithEnv(env map[string]string) *Client {
	return newClient(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
}

func newClient(lookup func(string) (string, bool)) *Client {
	c := &Client{lookup: lookup, generation: -1, arenas: map[string]*Arena{},
		handoff: map[string]*os.File{}, adopted: map[string]net.Conn{}}
	c.unit, _ = lookup("AETERNA_UNIT")
	if g, err := strconv.Atoi(c.env("AETERNA_GENERATION")); err == nil && g >= 0 {
		c.generation = g
	}
	if raw, ok := lookup("AETERNA_SRP_FD"); ok {
		c.ch = claimChannel(raw)
	}
	if c.ch != nil {
		c.ch.handler = c.onRequest
	}
	return c
}

func (c *Client) env(k string) string { v, _ := c.lookup(k); return v }

// InAeterna reports whether Aeterna started us (AETERNA_UNIT is set).
func (c *Client) InAeterna() bool { return c.unit != "" }

// Unit is AETERNA_UNIT ("" outside Aeterna).
func (c *Client) Unit() string { return c.unit }

// Generation is AETERNA_GENERATION, or -1.
func (c *Client) Generation() int { return c.generation }

// SRPEnabled reports whether this generation has an open SRP channel.
func (c *Client) SRPEnabled() bool { return c.ch != nil && !c.ch.isClosed() }

// SRPRequired is AETERNA_SRP_REQUIRED=1: a generation that could not load its
// predecessor's state should not serve (what it acknowledged would be lost
// when the relay rolls back).
func (c *Client) SRPRequired() bool { return c.env("AETERNA_SRP_REQUIRED") == "1" }

// Quiesced is true between an answered relay CHECKPOINT and a RESUME: the
// state belongs to the next generation, take no new work.
func (c *Client) Quiesced() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.quiesced
}

// Loaded is the metadata of the last state loaded or resumed, or nil.
func (c *Client) Loaded() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.loaded
}

// LoadError is why the last LoadContext returned no state (none, timeout,
// checksum, no-srp, peer-gone...), or "" after a successful load.
func (c *Client) LoadError() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.loadError
}

// ------------------------------------------------------------------ notify

// Notify sends raw sd_notify KEY=VALUE lines; false without a manager.
func (c *Client) Notify(state string) bool {
	ok, _ := sdNotify(c.lookup, state, nil)
	return ok
}

// Ready sends READY=1, with STATUS= when status is not "".
func (c *Client) Ready(status string) bool {
	if status != "" {
		return c.Notify("READY=1\nSTATUS=" + status)
	}
	return c.Notify("READY=1")
}

// Status sends STATUS=text.
func (c *Client) Status(text string) bool { return c.Notify("STATUS=" + text) }

// Watchdog sends one WATCHDOG=1; ping every WatchdogInterval.
func (c *Client) Watchdog() bool { return c.Notify("WATCHDOG=1") }

// Stopping sends STOPPING=1.
func (c *Client) Stopping() bool { return c.Notify("STOPPING=1") }

// WatchdogInterval is half of WATCHDOG_USEC when the watchdog is meant for us.
func (c *Client) WatchdogInterval() (time.Duration, bool) {
	d, ok := watchdogUsec(c.lookup, os.Getpid())
	return d / 2, ok
}

// ------------------------------------------------------------------ SRP: load

// LoadContext asks for the predecessor's state (or the kept checkpoint) with
// HELLO WANT_STATE=1 and waits at most timeout for the manager's answer.
// (nil, nil) means there is none: LoadError says why. A state whose CHECKSUM
// does not match, whose format a Go app cannot read, or that validate refuses
// is answered LOADED=0 ERROR=... and comes back as (nil, error); otherwise
// LOADED=1. Arenas that came with it are in Arena, connections in
// AdoptedConnections.
func (c *Client) LoadContext(timeout time.Duration, validate func(*State) error) (*State, error) {
	ch := c.ch
	if ch == nil {
		c.setLoadError("no-srp")
		return nil, nil
	}
	if timeout <= 0 {
		timeout = DefaultLoadTimeout
	}
	q := ch.expectState()
	c.mu.Lock()
	c.helloSent = true
	c.mu.Unlock()
	hello, _ := Format("HELLO", 1, Field{"VERSION", strconv.Itoa(Version)}, Field{"WANT_STATE", "1"})
	if !ch.send(hello, nil) {
		ch.cancelState(q)
		c.setLoadError("peer-gone")
		return nil, nil
	}
	var r *received
	timer := time.NewTimer(timeout)
	select {
	case r = <-q:
	case <-timer.C:
		ch.cancelState(q)
		c.setLoadError("timeout")
		return nil, nil
	}
	timer.Stop()
	ch.cancelState(q)
	if r == nil {
		c.setLoadError("peer-gone")
		return nil, nil
	}
	if !r.msg.OK() {
		closeFds(r.fds)
		reason := r.msg.Get("REASON")
		if reason == "" {
			reason = "none"
		}
		c.setLoadError(reason)
		return nil, nil
	}
	st, err := c.accept(r.msg, r.fds, validate)
	if err != nil {
		return nil, err
	}
	ch.reply("LOADED", 1, withSeq(r.msg)...)
	return st, nil
}

func (c *Client) setLoadError(reason string) {
	c.mu.Lock()
	c.loadError = reason
	c.mu.Unlock()
}

// accept decodes and checks a state, answers LOADED=0 on failure, and keeps
// its arenas and connections on success.
func (c *Client) accept(msg *Message, fds []int, validate func(*State) error) (*State, error) {
	st, err := receiveState(msg, fds)
	if err == nil && validate != nil {
		if verr := validate(st); verr != nil {
			st.close()
			st, err = nil, &loadError{"invalid", verr.Error()}
		}
	}
	if err != nil {
		reason := "invalid"
		var le *loadError
		if errors.As(err, &le) {
			reason = le.Reason
		}
		c.setLoadError(reason)
		c.ch.reply("LOADED", 0, withSeq(msg, Field{"ERROR", reason})...)
		return nil, err
	}
	c.mu.Lock()
	for name, a := range st.Arenas {
		c.shareLocked(name, a)
	}
	for name, conn := range st.Conns {
		c.adopted[name] = conn
	}
	c.loaded = st.Meta
	c.loadError = ""
	c.mu.Unlock()
	return st, nil
}

// Arena is the arena called name received with the last state (or shared), or nil.
func (c *Client) Arena(name string) *Arena {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.arenas[name]
}

// AdoptedConnections are the connections handed over with the last loaded
// state, by name; ownership moves to the caller (a second call returns only
// what arrived since).
func (c *Client) AdoptedConnections() map[string]net.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.adopted
	c.adopted = map[string]net.Conn{}
	return out
}

// ------------------------------------------------------------ SRP: checkpoint

// ShareArena includes a in every checkpoint under name (kind arena). A relay
// checkpoint passes the live memfd (stop writing to it before your checkpoint
// callback returns); SaveContext passes a sealed copy.
func (c *Client) ShareArena(name string, a *Arena) error {
	if err := checkName(name); err != nil {
		return err
	}
	c.mu.Lock()
	c.shareLocked(name, a)
	c.mu.Unlock()
	return nil
}

func (c *Client) shareLocked(name string, a *Arena) {
	if _, ok := c.arenas[name]; !ok {
		c.arenaOrder = append(c.arenaOrder, name)
	}
	c.arenas[name] = a
}

// HandoffConnections hands these connections over with the next answered
// CHECKPOINT (kind conn), the peer still connected. The SDK takes a dup of
// each at once and closes the given connections after the checkpoint is sent
// (the peer sees nothing: the next generation holds the other reference).
func (c *Client) HandoffConnections(conns map[string]FileConn) error {
	names := make([]string, 0, len(conns))
	for name := range conns {
		if err := checkName(name); err != nil {
			return err
		}
		names = append(names, name)
	}
	sort.Strings(names)
	files := map[string]*os.File{}
	for _, name := range names {
		f, err := conns[name].File()
		if err != nil {
			for _, g := range files {
				g.Close()
			}
			return err
		}
		files[name] = f
	}
	c.mu.Lock()
	for _, name := range names {
		if old, ok := c.handoff[name]; ok {
			old.Close()
		} else {
			c.handOrder = append(c.handOrder, name)
		}
		c.handoff[name] = files[name]
	}
	c.mu.Unlock()
	for _, name := range names {
		conns[name].Close() // the dup keeps the connection open
	}
	return nil
}

// SaveContext leaves an unsolicited checkpoint (STATE=1 without SEQ) that the
// manager keeps: the next generation after a crash or restart loads it (and,
// with persist_dir, so does the first one after a manager restart). Shared
// arenas are copied (withArenas false leaves them out). False outside
// Aeterna, after a relay checkpoint, or when the channel is gone.
func (c *Client) SaveContext(cp Checkpoint, withArenas bool) bool {
	ch := c.ch
	if ch == nil || ch.isClosed() || c.Quiesced() {
		return false
	}
	arenas, order := map[string]*Arena{}, []string(nil)
	if withArenas {
		arenas, order = c.arenaSnapshot()
	}
	out, err := buildState(cp, arenas, order, nil, nil, true)
	if err != nil {
		return false
	}
	defer out.release()
	data, err := Format("STATE", 1, out.fields...)
	if err != nil {
		return false
	}
	return ch.send(data, out.fds)
}

func (c *Client) arenaSnapshot() (map[string]*Arena, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]*Arena, len(c.arenas))
	for k, v := range c.arenas {
		m[k] = v
	}
	return m, append([]string(nil), c.arenaOrder...)
}

// OnCheckpoint answers the manager's CHECKPOINT requests with checkpoint's
// state, from the channel's goroutine. checkpoint(reason) must make the
// snapshot atomic with respect to the app's work: stop accepting, finish the
// requests in flight, then take the state, because after a relay checkpoint
// anything the app acknowledges is lost. The answer carries it, the shared
// arenas (live) and the connections given to HandoffConnections; then
// onQuiesce(reason) runs (reason is relay or rollback): take no new work.
//
// On RESUME (a failed relay gives the state back) onResume gets the newest
// state (nil when the manager resumes us without one: keep your own); take
// work again. Without onResume a RESUME is refused (LOADED=0).
func (c *Client) OnCheckpoint(checkpoint func(reason string) (Checkpoint, error),
	onQuiesce func(reason string), onResume func(*State) error) {
	c.mu.Lock()
	c.checkpoint, c.onQuiesce, c.onResume = checkpoint, onQuiesce, onResume
	sendHello := !c.helloSent
	c.helloSent = true
	c.mu.Unlock()
	if c.ch == nil {
		return
	}
	c.ch.start()
	if sendHello {
		hello, _ := Format("HELLO", 1, Field{"VERSION", strconv.Itoa(Version)}, Field{"WANT_STATE", "0"})
		c.ch.send(hello, nil)
	}
}

func (c *Client) onRequest(msg *Message, fds []int) {
	if msg.Verb == "CHECKPOINT" {
		closeFds(fds)
		c.answerCheckpoint(msg)
	} else {
		c.resume(msg, fds)
	}
}

func (c *Client) answerCheckpoint(msg *Message) {
	reason := msg.Get("REASON")
	if reason == "" {
		reason = "relay"
	}
	c.mu.Lock()
	cb, quiesce := c.checkpoint, c.onQuiesce
	c.mu.Unlock()
	if cb == nil {
		c.ch.reply("STATE", 0, withSeq(msg, Field{"ERROR", "no-checkpoint-callback"})...)
		return
	}
	cp, err := cb(reason)
	if err != nil {
		c.ch.reply("STATE", 0, withSeq(msg, Field{"ERROR", "callback-error"})...)
		return
	}
	arenas, order := c.arenaSnapshot()
	c.mu.Lock()
	conns, connOrder := c.handoff, c.handOrder
	c.handoff, c.handOrder = map[string]*os.File{}, nil
	c.mu.Unlock()
	defer func() {
		for _, f := range conns {
			f.Close()
		}
	}()
	out, err := buildState(cp, arenas, order, conns, connOrder, false)
	if err != nil {
		c.ch.reply("STATE", 0, withSeq(msg, Field{"ERROR", "invalid"})...)
		return
	}
	defer out.release()
	data, err := Format("STATE", 1, append(withSeq(msg), out.fields...)...)
	if err != nil {
		c.ch.reply("STATE", 0, withSeq(msg, Field{"ERROR", "too-large"})...)
		return
	}
	if !c.ch.send(data, out.fds) {
		return
	}
	c.mu.Lock()
	c.quiesced = true
	c.mu.Unlock()
	if quiesce != nil {
		quiesce(reason)
	}
}

func (c *Client) resume(msg *Message, fds []int) {
	c.mu.Lock()
	handler := c.onResume
	c.mu.Unlock()
	if handler == nil {
		closeFds(fds)
		c.ch.reply("LOADED", 0, withSeq(msg, Field{"ERROR", "no-resume-callback"})...)
		return
	}
	var st *State
	if len(fds) > 0 || msg.Get("FDKINDS") != "" {
		var err error
		if st, err = c.accept(msg, fds, nil); err != nil {
			return
		}
	}
	if err := handler(st); err != nil {
		c.ch.reply("LOADED", 0, withSeq(msg, Field{"ERROR", "resume-error"})...)
		return
	}
	c.mu.Lock()
	c.quiesced = false
	c.mu.Unlock()
	c.ch.reply("LOADED", 1, withSeq(msg)...)
}

// Close stops listening on the SRP channel (the process keeps its other fds).
func (c *Client) Close() {
	if c.ch != nil {
		c.ch.close()
	}
}

// Listener returns a listener on the passed socket called name ("" for the
// first), or (nil, nil) when there is none (outside Aeterna).
func (c *Client) Listener(name string) (net.Listener, error) {
	f := c.ListenerFile(name)
	if f == nil {
		return nil, nil
	}
	return net.FileListener(f)
}

// ListenerFile is the passed socket called name ("" for the first), or nil.
// It reads the client's environment, so it works for NewWithEnv too.
func (c *Client) ListenerFile(name string) *os.File {
	for _, f := range filesFor(c.lookup) {
		if (name == "" || f.Name() == name) && isSocket(int(f.Fd())) {
			return f
		}
	}
	return nil
}

var (
	envFilesMu sync.Mutex
	envFiles   = map[int]*os.File{}
)

// filesFor wraps env's passed fds, each fd once per process (see Files).
func filesFor(lookup func(string) (string, bool)) []*os.File {
	fds, names := listenLayout(lookup, os.Getpid())
	envFilesMu.Lock()
	defer envFilesMu.Unlock()
	out := make([]*os.File, 0, len(fds))
	for i, fd := range fds {
		f, ok := envFiles[fd]
		if !ok {
			syscall.CloseOnExec(fd)
			f = os.NewFile(uintptr(fd), names[i])
			envFiles[fd] = f
		}
		out = append(out, f)
	}
	return out
}
