package aeterna

import (
	"strconv"
	"sync"
	"syscall"
	"time"
)

// soDomain is SO_DOMAIN (39 on every Linux architecture Go supports).
const soDomain = 0x27

// received is one message with its fds; nil means the channel closed.
type received struct {
	msg *Message
	fds []int
}

// channel is the app's end of its SRP socketpair (docs/srp.md §2) and the
// goroutine that reads it: STATE replies go to whoever waits in LoadContext,
// CHECKPOINT and RESUME to the client's handler. Sends are serialised.
type channel struct {
	fd      int
	sendMu  sync.Mutex
	mu      sync.Mutex
	closed  bool
	started bool
	waiter  chan *received
	handler func(*Message, []int)
	done    chan struct{}
}

// claimChannel checks that fd is an AF_UNIX SOCK_SEQPACKET socket, makes it
// close-on-exec and blocking (the reader goroutine blocks in recvmsg; the end
// is ours alone, so its flags are too).
func claimChannel(raw string) *channel {
	if raw == "" || len(raw) > 9 {
		return nil
	}
	fd := 0
	for i := 0; i < len(raw); i++ {
		if raw[i] < '0' || raw[i] > '9' {
			return nil
		}
		fd = fd*10 + int(raw[i]-'0')
	}
	typ, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE)
	if err != nil || typ != syscall.SOCK_SEQPACKET {
		return nil
	}
	if dom, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, soDomain); err != nil || dom != syscall.AF_UNIX {
		return nil
	}
	syscall.CloseOnExec(fd)
	if err := syscall.SetNonblock(fd, false); err != nil {
		return nil
	}
	return &channel{fd: fd, done: make(chan struct{})}
}

func (c *channel) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// send writes one record with its fds; false when the channel is gone.
func (c *channel) send(data []byte, fds []int) bool {
	if c.isClosed() || len(fds) > MaxFDs {
		return false
	}
	var oob []byte
	if len(fds) > 0 {
		oob = syscall.UnixRights(fds...)
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	for {
		c.mu.Lock()
		fd := c.fd
		c.mu.Unlock()
		if fd < 0 {
			return false
		}
		err := syscall.Sendmsg(fd, data, oob, nil, 0)
		if err == syscall.EINTR {
			continue
		}
		return err == nil
	}
}

// reply formats and sends a message without fds.
func (c *channel) reply(verb string, value int, fields ...Field) bool {
	data, err := Format(verb, value, fields...)
	if err != nil {
		return false
	}
	return c.send(data, nil)
}

func (c *channel) start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started || c.closed {
		return
	}
	c.started = true
	go c.run()
}

// expectState registers the one waiter for the manager's STATE reply (before HELLO).
func (c *channel) expectState() chan *received {
	q := make(chan *received, 4)
	c.mu.Lock()
	c.waiter = q
	if c.closed {
		q <- nil
	}
	c.mu.Unlock()
	c.start()
	return q
}

// cancelState drops the waiter; whatever arrived unused is refused and closed.
func (c *channel) cancelState(q chan *received) {
	c.mu.Lock()
	if c.waiter == q {
		c.waiter = nil
	}
	c.mu.Unlock()
	for {
		select {
		case r := <-q:
			if r != nil {
				c.unwanted(r.msg, r.fds)
			}
		default:
			return
		}
	}
}

// recv blocks for one record: its payload, fds and whether it was cut.
func recvRecord(fd int) ([]byte, []int, bool, bool) {
	buf := make([]byte, MaxMessage+1)
	oob := make([]byte, syscall.CmsgSpace(MaxFDs*4))
	for {
		n, oobn, flags, _, err := syscall.Recvmsg(fd, buf, oob, syscall.MSG_CMSG_CLOEXEC)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, nil, false, false
		}
		var fds []int
		if oobn > 0 {
			if cmsgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, cm := range cmsgs {
					if got, err := syscall.ParseUnixRights(&cm); err == nil {
						fds = append(fds, got...)
					}
				}
			}
		}
		if n == 0 && len(fds) == 0 {
			return nil, nil, false, false // EOF: the manager is gone or shut us down
		}
		return buf[:n], fds, flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0, true
	}
}

func (c *channel) run() {
	defer close(c.done)
	c.mu.Lock()
	fd := c.fd
	c.mu.Unlock()
	for {
		data, fds, truncated, ok := recvRecord(fd)
		if !ok {
			break
		}
		var msg *Message
		if !truncated {
			msg, _ = Parse(data)
		}
		if msg == nil {
			closeFds(fds)
			continue
		}
		c.dispatch(msg, fds)
	}
	c.mu.Lock()
	c.closed = true
	if c.waiter != nil {
		c.waiter <- nil
		c.waiter = nil
	}
	c.mu.Unlock()
}

func (c *channel) dispatch(msg *Message, fds []int) {
	switch msg.Verb {
	case "STATE":
		c.mu.Lock()
		w := c.waiter
		c.waiter = nil
		c.mu.Unlock()
		if w != nil {
			w <- &received{msg, fds}
		} else {
			c.unwanted(msg, fds)
		}
	case "CHECKPOINT", "RESUME":
		c.mu.Lock()
		h := c.handler
		c.mu.Unlock()
		if h != nil {
			h(msg, fds)
			return
		}
		closeFds(fds)
		if msg.Verb == "CHECKPOINT" {
			c.reply("STATE", 0, withSeq(msg, Field{"ERROR", "no-checkpoint-callback"})...)
		} else {
			c.reply("LOADED", 0, withSeq(msg, Field{"ERROR", "no-resume-callback"})...)
		}
	default:
		closeFds(fds)
	}
}

// unwanted refuses a state nobody waits for any more (LoadContext timed out).
func (c *channel) unwanted(msg *Message, fds []int) {
	closeFds(fds)
	if _, ok := msg.Seq(); ok && msg.OK() {
		c.reply("LOADED", 0, withSeq(msg, Field{"ERROR", "not-waiting"})...)
	}
}

// close shuts the socket down (which ends the reader's recvmsg), waits a
// bounded time for the reader, and closes the fd.
func (c *channel) close() {
	c.mu.Lock()
	fd, started := c.fd, c.started
	c.closed = true
	c.fd = -1
	c.mu.Unlock()
	if fd < 0 {
		return
	}
	syscall.Shutdown(fd, syscall.SHUT_RDWR)
	if started {
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
		}
	}
	syscall.Close(fd)
}

// withSeq is SEQ= copied from msg (left out when msg has no valid one), then more.
func withSeq(msg *Message, more ...Field) []Field {
	out := make([]Field, 0, len(more)+1)
	if seq, ok := msg.Seq(); ok {
		out = append(out, Field{"SEQ", strconv.FormatInt(seq, 10)})
	}
	return append(out, more...)
}
