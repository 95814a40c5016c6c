// go-counter is a stateful HTTP service on Aeterna's Go SDK: each POST adds
// one to a counter (answering "COUNT PID gen=G"), a GET answers "COUNT PID"
// on one line. It serves on the
// inherited listener and hands its count to the next generation over SRP as
// the JSON object {"count": N}, so counter.py (the same service in Python)
// can take it over, and back.
//
// Outside Aeterna it listens on $COUNTER_ADDR (default 127.0.0.1:8080) and
// every SDK call is a no-op.
package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	aeterna "aeterna.dev/sdk"
)

// counter is the state: an int64 in memory or, with COUNTER_ARENA=1, the
// first 8 bytes of a sealed memfd arena that moves to the next generation
// without a copy (FORMAT=arena).
type counter struct {
	mu    sync.Mutex
	count int64
	arena *aeterna.Arena
	gen   int
}

func (c *counter) add() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.arena != nil {
		b := c.arena.Bytes()
		n := int64(binary.LittleEndian.Uint64(b)) + 1
		binary.LittleEndian.PutUint64(b, uint64(n))
		return n
	}
	c.count++
	return c.count
}

func (c *counter) get() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.arena != nil {
		return int64(binary.LittleEndian.Uint64(c.arena.Bytes()))
	}
	return c.count
}

func (c *counter) set(n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.arena != nil {
		binary.LittleEndian.PutUint64(c.arena.Bytes(), uint64(n))
	} else {
		c.count = n
	}
}

// checkpoint is the state to hand over: {"count": N}, or the arena itself.
func (c *counter) checkpoint() (aeterna.Checkpoint, error) {
	if c.arena != nil {
		return aeterna.Checkpoint{Format: "arena", Schema: aeterna.NoSchema}, nil
	}
	return aeterna.JSONCheckpoint(map[string]int64{"count": c.get()})
}

func (c *counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPost:
		n := c.add()
		fmt.Fprintf(w, "%d %d gen=%d\n", n, os.Getpid(), c.gen)
	case http.MethodGet:
		n := c.get()
		fmt.Fprintf(w, "%d %d\n", n, os.Getpid())
	default:
		http.Error(w, "GET or POST", http.StatusMethodNotAllowed)
	}
}

// server serves on a fresh dup of the listener each time it starts, so that a
// Shutdown (at a checkpoint) closes only that dup and a RESUME can serve again.
type server struct {
	mu      sync.Mutex
	file    *os.File
	handler http.Handler
	srv     *http.Server
}

func (s *server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return nil
	}
	ln, err := net.FileListener(s.file)
	if err != nil {
		return err
	}
	s.srv = &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(ln)
	return nil
}

// stop stops accepting and waits (bounded) for the requests in flight.
func (s *server) stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		srv.Close()
	}
}

type saved struct {
	Count *int64 `json:"count"`
}

func decode(st *aeterna.State) (int64, error) {
	if st.Format == "arena" {
		if a := st.Arenas["count"]; a != nil && a.Writable() && a.Size() >= 8 {
			return int64(binary.LittleEndian.Uint64(a.Bytes())), nil
		}
		return 0, fmt.Errorf("no writable arena called count")
	}
	var v saved
	if err := st.JSON(&v); err != nil {
		return 0, err
	}
	if v.Count == nil || *v.Count < 0 {
		return 0, fmt.Errorf("no count in %s", st.Data)
	}
	return *v.Count, nil
}

func main() {
	log.SetFlags(0)
	client := aeterna.New()
	c := &counter{gen: client.Generation()}
	prefix := fmt.Sprintf("go-counter gen=%d", c.gen)

	file := client.ListenerFile("")
	if file == nil {
		addr := os.Getenv("COUNTER_ADDR")
		if addr == "" {
			addr = "127.0.0.1:8080"
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			log.Fatalf("%s: %v", prefix, err)
		}
		if file, err = ln.(*net.TCPListener).File(); err != nil {
			log.Fatalf("%s: %v", prefix, err)
		}
		ln.Close()
	}
	srv := &server{file: file, handler: c}

	st, err := client.LoadContext(30*time.Second, func(st *aeterna.State) error {
		_, err := decode(st)
		return err
	})
	switch {
	case st != nil:
		if a := st.Arenas["count"]; st.Format == "arena" {
			c.arena = a // N's live memory, now ours: nothing was copied
		}
		n, _ := decode(st)
		c.set(n)
		log.Printf("%s: state loaded: count=%d format=%s", prefix, n, st.Format)
	case err != nil || (client.SRPRequired() && client.LoadError() != "none"):
		// required: true and no state: serving now would lose what we acknowledge.
		log.Printf("%s: no state (%s): waiting to be stopped", prefix, client.LoadError())
		waitForSignal()
		return
	default:
		log.Printf("%s: starting cold (%s)", prefix, client.LoadError())
	}
	if os.Getenv("COUNTER_ARENA") == "1" && c.arena == nil {
		a, err := aeterna.NewArena("count", 4096)
		if err != nil {
			log.Fatalf("%s: %v", prefix, err)
		}
		n := c.get()
		c.arena = a
		c.set(n)
	}
	if c.arena != nil {
		client.ShareArena("count", c.arena)
	}

	client.OnCheckpoint(func(reason string) (aeterna.Checkpoint, error) {
		srv.stop() // no new work, in-flight requests done: the count is final
		log.Printf("%s: checkpoint (%s): count=%d", prefix, reason, c.get())
		return c.checkpoint()
	}, nil, func(st *aeterna.State) error {
		if st != nil {
			n, err := decode(st)
			if err != nil {
				return err
			}
			if a := st.Arenas["count"]; st.Format == "arena" {
				c.mu.Lock()
				c.arena = a
				c.mu.Unlock()
			}
			c.set(n)
		}
		log.Printf("%s: RESUME: serving again: count=%d", prefix, c.get())
		return srv.start()
	})
	if err := srv.start(); err != nil {
		log.Fatalf("%s: %v", prefix, err)
	}
	client.Ready("serving count=" + strconv.FormatInt(c.get(), 10))
	log.Printf("%s: serving: count=%d", prefix, c.get())

	waitForSignal()
	client.Stopping()
	if !client.Quiesced() {
		// Stopped while holding the state: leave it with the manager (a restart,
		// or a new manager with persist_dir, goes on from it).
		srv.stop()
		cp, _ := c.checkpoint()
		if client.SaveContext(cp, true) {
			log.Printf("%s: left a checkpoint: count=%d", prefix, c.get())
		}
	}
	client.Close()
}

func waitForSignal() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
