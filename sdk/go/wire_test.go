package aeterna

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

// examples is sdk/testdata/srp-wire.json, shared with the manager's and the
// Python SDK's tests (tests/pure/test_wire_examples.py).
type examples struct {
	Records []struct {
		Name   string            `json:"name"`
		Text   *string           `json:"text"`
		Hex    string            `json:"hex"`
		PadTo  int               `json:"pad_to"`
		Verb   string            `json:"verb"`
		Value  string            `json:"value"`
		Fields map[string]string `json:"fields"`
		Seq    *int64            `json:"seq"`
		Error  string            `json:"error"`
	} `json:"records"`
	Formats []struct {
		Verb    string      `json:"verb"`
		Value   int         `json:"value"`
		Fields  [][2]string `json:"fields"`
		Text    string      `json:"text"`
		Refused bool        `json:"refused"`
	} `json:"formats"`
	Notify []struct {
		Call string `json:"call"`
		Arg  string `json:"arg"`
		Text string `json:"text"`
	} `json:"notify"`
}

func readExamples(t *testing.T, path string) examples {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ex examples
	if err := json.Unmarshal(raw, &ex); err != nil {
		t.Fatal(err)
	}
	return ex
}

func loadExamples(t *testing.T) examples {
	t.Helper()
	ex := readExamples(t, filepath.Join("..", "testdata", "srp-wire.json"))
	if len(ex.Records) < 20 || len(ex.Formats) == 0 || len(ex.Notify) == 0 {
		t.Fatalf("too few examples: %d records", len(ex.Records))
	}
	if extra := os.Getenv("AETERNA_WIRE_EXAMPLES"); extra != "" {
		// Random records with the outcomes the manager's parser gave them
		// (tests/e2e/test_go_sdk.py writes them): a differential test.
		more := readExamples(t, extra).Records
		if len(more) == 0 {
			t.Fatalf("no records in %s", extra)
		}
		ex.Records = append(ex.Records, more...)
	}
	return ex
}

func TestSharedWireRecords(t *testing.T) {
	for _, rec := range loadExamples(t).Records {
		var data []byte
		if rec.Text != nil {
			data = []byte(*rec.Text)
		} else {
			var err error
			if data, err = hex.DecodeString(rec.Hex); err != nil {
				t.Fatal(rec.Name, err)
			}
		}
		if pad := rec.PadTo - len(data); pad > 0 {
			data = append(data, []byte(strings.Repeat("x", pad))...)
		}
		msg, err := Parse(data)
		if rec.Error != "" {
			we, ok := err.(*WireError)
			if !ok || we.Reason != rec.Error {
				t.Errorf("%s: want error %s, got %v (%v)", rec.Name, rec.Error, err, msg)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", rec.Name, err)
			continue
		}
		if msg.Verb != rec.Verb || msg.Value != rec.Value || !reflect.DeepEqual(msg.Fields, rec.Fields) {
			t.Errorf("%s: got %s=%s %v", rec.Name, msg.Verb, msg.Value, msg.Fields)
		}
		seq, ok := msg.Seq()
		if (rec.Seq == nil) == ok || (ok && seq != *rec.Seq) {
			t.Errorf("%s: seq %d %v, want %v", rec.Name, seq, ok, rec.Seq)
		}
	}
}

func TestSharedFormats(t *testing.T) {
	for _, ex := range loadExamples(t).Formats {
		var fields []Field
		for _, kv := range ex.Fields {
			fields = append(fields, Field{kv[0], kv[1]})
		}
		data, err := Format(ex.Verb, ex.Value, fields...)
		if ex.Refused {
			if err == nil {
				t.Errorf("%v: should be refused", ex.Fields)
			}
			continue
		}
		if err != nil || string(data) != ex.Text {
			t.Errorf("%s: got %q, %v", ex.Text, data, err)
		}
	}
}

func TestSharedNotifyDatagrams(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "notify")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	tv := syscall.NsecToTimeval(int64(5 * time.Second))
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	c := NewWithEnv(map[string]string{"NOTIFY_SOCKET": path})
	calls := map[string]func(string) bool{
		"ready": c.Ready, "status": c.Status,
		"watchdog": func(string) bool { return c.Watchdog() },
		"stopping": func(string) bool { return c.Stopping() },
	}
	for _, ex := range loadExamples(t).Notify {
		if !calls[ex.Call](ex.Arg) {
			t.Fatalf("%s: not sent", ex.Call)
		}
		buf := make([]byte, MaxDatagram)
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil || string(buf[:n]) != ex.Text {
			t.Errorf("%s(%q): got %q, %v; want %q", ex.Call, ex.Arg, buf[:n], err, ex.Text)
		}
	}
}

// FuzzParse: whatever the bytes, Parse gives a WireError with a known reason
// or a message with one verb valued 0 or 1, which formats back to itself.
func FuzzParse(f *testing.F) {
	f.Add([]byte("STATE=1\nSEQ=4\nFORMAT=json\n"))
	f.Add([]byte("SEQ=3\nLOADED=0\nERROR=checksum"))
	f.Add([]byte("STATE=1\r\n"))
	f.Add([]byte{0x53, 0xff, 0x00})
	reasons := map[string]bool{"too-large": true, "nul": true, "not-utf8": true,
		"bad-line": true, "no-verb": true, "bad-verb-value": true}
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := Parse(data)
		if err != nil {
			if we, ok := err.(*WireError); !ok || !reasons[we.Reason] {
				t.Fatalf("%q: %v", data, err)
			}
			return
		}
		if !isVerb(msg.Verb) || (msg.Value != "0" && msg.Value != "1") {
			t.Fatalf("%q: %+v", data, msg)
		}
		var fields []Field
		for k, v := range msg.Fields {
			fields = append(fields, Field{k, v})
		}
		value := 0
		if msg.OK() {
			value = 1
		}
		again, err := Format(msg.Verb, value, fields...)
		if err != nil {
			if len(data) > MaxMessage-32 {
				return // a record near the limit may not fit once reformatted
			}
			t.Fatalf("%q does not format back: %v", data, err)
		}
		back, err := Parse(again)
		if err != nil || back.Verb != msg.Verb || back.Value != msg.Value || len(back.Fields) != len(msg.Fields) {
			t.Fatalf("%q -> %q -> %+v, %v", data, again, back, err)
		}
	})
}
