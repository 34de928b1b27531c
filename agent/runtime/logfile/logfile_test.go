package logfile

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRotationKeepsBoundedTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.log")
	w, err := Create(path, Config{MaxBytes: 100, MaxFiles: 2})
	if err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	for i := range 100 {
		line := fmt.Sprintf("line %03d\n", i) // 9 bytes
		all.WriteString(line)
		if _, err := w.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	var total int64
	for _, n := range []string{path, path + ".1", path + ".2"} {
		fi, err := os.Stat(n)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 100 {
			t.Errorf("%s is %d bytes, over the 100 allowed", n, fi.Size())
		}
		total += fi.Size()
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Error("a fourth file was kept")
	}
	var got bytes.Buffer
	if err := w.Copy(context.Background(), 0, false, &got); err != nil {
		t.Fatal(err)
	}
	if int64(got.Len()) != total || !strings.HasSuffix(all.String(), got.String()) {
		t.Fatalf("everything kept: %d bytes, not the end of what was written:\n%s", got.Len(), got.String())
	}
	got.Reset()
	if err := w.Copy(context.Background(), 27, false, &got); err != nil {
		t.Fatal(err)
	}
	if got.String() != "line 097\nline 098\nline 099\n" {
		t.Fatalf("tail 27: %q", got.String())
	}
	w.Close()
	got.Reset()
	if err := Tail(path, 2, 18, &got); err != nil || got.String() != "line 098\nline 099\n" {
		t.Fatalf("Tail of a closed log: %q, %v", got.String(), err)
	}
	// A new writer appends to what is there.
	w2, err := Create(path, Config{MaxBytes: 100, MaxFiles: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	w2.Write([]byte("again\n"))
	got.Reset()
	w2.Copy(context.Background(), 15, false, &got)
	if got.String() != "line 099\nagain\n" {
		t.Fatalf("after reopening: %q", got.String())
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestFollowAcrossRotations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.log")
	w, err := Create(path, Config{MaxBytes: 64, MaxFiles: 50})
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("before\n"))
	var got syncBuffer
	done := make(chan error, 1)
	go func() { done <- w.Copy(context.Background(), 0, true, &got) }()
	var want strings.Builder
	want.WriteString("before\n")
	for i := range 200 {
		line := fmt.Sprintf("follow %03d\n", i)
		want.WriteString(line)
		w.Write([]byte(line))
		if i%50 == 0 {
			time.Sleep(time.Millisecond) // let the follower catch up mid-stream too
		}
	}
	w.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follower did not return after Close")
	}
	if got.String() != want.String() {
		t.Fatalf("followed output differs:\ngot  %q\nwant %q", got.String(), want.String())
	}
}

func TestFollowStopsWithContext(t *testing.T) {
	w, err := Create(filepath.Join(t.TempDir(), "out.log"), Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var got syncBuffer
	go func() { done <- w.Copy(ctx, 0, true, &got) }()
	w.Write([]byte("x\n"))
	for got.String() != "x\n" {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Fatalf("follow ended with %v, want context.Canceled", err)
	}
}
