package aeterna

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"
)

// SRP records (docs/srp.md §3): one SOCK_SEQPACKET record of newline-separated
// KEY=VALUE lines, at most MaxMessage bytes, no NUL, valid UTF-8, with up to
// MaxFDs fds attached by SCM_RIGHTS.
const (
	MaxMessage = 16384
	MaxFDs     = 253 // SCM_MAX_FD
	Version    = 1
)

// Verbs are the keys that name what a message is; the first one present wins.
var Verbs = []string{"HELLO", "STATE", "LOADED", "CHECKPOINT", "RESUME"}

// WireError is a record that is not SRP. Reason is the classified name the
// manager's parser (aeterna/wire/srp.py) uses: too-large, nul, not-utf8,
// bad-line, no-verb, bad-verb-value.
type WireError struct {
	Reason string
	Detail string
}

func (e *WireError) Error() string {
	if e.Detail == "" {
		return "srp: " + e.Reason
	}
	return "srp: " + e.Reason + ": " + e.Detail
}

// Message is one parsed record: its verb ("STATE"), the verb's value ("1" or
// "0") and every other key (the first of a repeated key wins).
type Message struct {
	Verb   string
	Value  string
	Fields map[string]string
}

// OK reports whether the verb's value is "1".
func (m *Message) OK() bool { return m.Value == "1" }

// Get returns the value of key, or "" when it is absent.
func (m *Message) Get(key string) string { return m.Fields[key] }

// Seq returns SEQ= when it is 1 to 18 ASCII digits (what fits an int64 with
// room to spare), as the manager reads it.
func (m *Message) Seq() (int64, bool) {
	raw, ok := m.Fields["SEQ"]
	if !ok || len(raw) == 0 || len(raw) >= 19 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func isVerb(key string) bool {
	for _, v := range Verbs {
		if v == key {
			return true
		}
	}
	return false
}

// ValidKey reports whether key is one or more ASCII letters, digits or '_'.
func ValidKey(key string) bool {
	if key == "" {
		return false
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !(c == '_' || ('0' <= c && c <= '9') || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')) {
			return false
		}
	}
	return true
}

// Parse turns one record into a Message, or a *WireError. The rules are
// docs/srp.md §3's, shared with the manager and the Python SDK through
// sdk/testdata/srp-wire.json.
func Parse(payload []byte) (*Message, error) {
	if len(payload) > MaxMessage {
		return nil, &WireError{"too-large", fmt.Sprintf("%d bytes", len(payload))}
	}
	if bytes.IndexByte(payload, 0) >= 0 {
		return nil, &WireError{Reason: "nul"}
	}
	if !utf8.Valid(payload) {
		return nil, &WireError{Reason: "not-utf8"}
	}
	fields := map[string]string{}
	verb := ""
	for _, line := range strings.Split(string(payload), "\n") {
		if line == "" {
			continue
		}
		eq := strings.IndexByte(line, '=')
		if eq <= 0 || !ValidKey(line[:eq]) {
			return nil, &WireError{"bad-line", clip(line, 40)}
		}
		key := line[:eq]
		if _, seen := fields[key]; seen {
			continue
		}
		fields[key] = line[eq+1:]
		if verb == "" && isVerb(key) {
			verb = key
		}
	}
	if verb == "" {
		return nil, &WireError{Reason: "no-verb"}
	}
	value := fields[verb]
	delete(fields, verb)
	if value != "0" && value != "1" {
		return nil, &WireError{"bad-verb-value", verb + "=" + clip(value, 20)}
	}
	return &Message{Verb: verb, Value: value, Fields: fields}, nil
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// Field is one KEY=VALUE line of a message being formatted.
type Field struct{ Key, Value string }

// Format writes VERB=value then one line per field, in order. It refuses a
// key that is not ValidKey, a value with a newline or NUL, and a record over
// MaxMessage bytes.
func Format(verb string, value int, fields ...Field) ([]byte, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s=%d\n", verb, value)
	for _, f := range fields {
		if !ValidKey(f.Key) {
			return nil, fmt.Errorf("srp: invalid key %q", f.Key)
		}
		if strings.ContainsAny(f.Value, "\n\x00") {
			return nil, fmt.Errorf("srp: field %s contains a newline or NUL", f.Key)
		}
		b.WriteString(f.Key)
		b.WriteByte('=')
		b.WriteString(f.Value)
		b.WriteByte('\n')
	}
	if b.Len() > MaxMessage {
		return nil, fmt.Errorf("srp: message of %d bytes exceeds %d", b.Len(), MaxMessage)
	}
	return []byte(b.String()), nil
}
