// go-conns holds TCP connections open and hands them, live, to the next
// generation with SRP (kind conn): each line a client sends is answered
// "name=NAME n=K gen=G", K counting that connection's lines across
// generations. tests/e2e/test_go_sdk.py checks that a relay moves every
// connection with its peer still connected and its count intact.
package main

import (
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	aeterna "aeterna.dev/sdk"
)

type session struct {
	name  string
	conn  *net.TCPConn
	count int
	done  chan struct{}
}

type app struct {
	mu        sync.Mutex
	gen       int
	next      int
	sessions  map[string]*session
	quiescing bool
	ln        net.Listener
}

// serve answers one line per read until the connection ends or the app
// quiesces (a read deadline in the past ends the blocked read; a line that
// came with it is still answered, so nothing acknowledged is lost).
func (a *app) serve(s *session) {
	defer close(s.done)
	buf := make([]byte, 4096)
	for {
		n, err := s.conn.Read(buf)
		if n > 0 {
			s.count++
			fmt.Fprintf(s.conn, "name=%s n=%d gen=%d\n", s.name, s.count, a.gen)
		}
		if err != nil {
			a.mu.Lock()
			q := a.quiescing
			if !q {
				delete(a.sessions, s.name)
			}
			a.mu.Unlock()
			if !q {
				s.conn.Close()
			}
			return
		}
	}
}

func (a *app) add(name string, conn *net.TCPConn, count int) {
	s := &session{name: name, conn: conn, count: count, done: make(chan struct{})}
	a.mu.Lock()
	a.sessions[name] = s
	a.mu.Unlock()
	go a.serve(s)
}

func (a *app) accept() {
	for {
		c, err := a.ln.Accept()
		if err != nil {
			return
		}
		a.mu.Lock()
		a.next++
		name := "g" + strconv.Itoa(a.gen) + "-" + strconv.Itoa(a.next)
		a.mu.Unlock()
		a.add(name, c.(*net.TCPConn), 0)
	}
}

func main() {
	log.SetFlags(0)
	client := aeterna.New()
	a := &app{gen: client.Generation(), sessions: map[string]*session{}}
	ln, err := client.Listener("")
	if err != nil || ln == nil {
		log.Fatalf("go-conns: no listener: %v", err)
	}
	a.ln = ln
	st, _ := client.LoadContext(20*time.Second, nil)
	if st != nil {
		counts := map[string]int{}
		if err := st.JSON(&counts); err != nil {
			log.Fatalf("go-conns: %v", err)
		}
		for name, conn := range client.AdoptedConnections() {
			a.add(name, conn.(*net.TCPConn), counts[name])
		}
		log.Printf("go-conns gen=%d: adopted %d connections", a.gen, len(a.sessions))
	}
	client.OnCheckpoint(func(reason string) (aeterna.Checkpoint, error) {
		a.ln.Close() // our dup only: N+1 accepts on the same socket
		a.mu.Lock()
		a.quiescing = true
		sessions := make([]*session, 0, len(a.sessions))
		for _, s := range a.sessions {
			sessions = append(sessions, s)
		}
		a.mu.Unlock()
		for _, s := range sessions {
			s.conn.SetReadDeadline(time.Unix(1, 0))
		}
		counts := map[string]int{}
		conns := map[string]aeterna.FileConn{}
		for _, s := range sessions {
			<-s.done
			counts[s.name] = s.count
			conns[s.name] = s.conn
		}
		if err := client.HandoffConnections(conns); err != nil {
			return aeterna.Checkpoint{}, err
		}
		log.Printf("go-conns gen=%d: handing over %d connections", a.gen, len(conns))
		return aeterna.JSONCheckpoint(counts)
	}, nil, nil)
	go a.accept()
	client.Ready("")
	log.Printf("go-conns gen=%d: serving", a.gen)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
}
