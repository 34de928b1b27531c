package raftstore

import (
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// testLogger sends everything, Pebble's debug lines included, to the test's
// log, which is shown only when the test fails.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// openTest opens a store in dir and closes it when the test ends.
func openTest(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// entryFor returns the entry the tests write at index i. Its content is a
// function of i alone, so a reader can tell a right entry from a wrong one
// without remembering what was written.
func entryFor(i uint64) *raft.Log {
	r := rand.New(rand.NewPCG(i, 0x5eed))
	data := make([]byte, int(i*7%300))
	for j := range data {
		data[j] = byte(r.Uint32())
	}
	l := &raft.Log{
		Index:      i,
		Term:       i/100 + 1,
		Type:       raft.LogCommand,
		Data:       data,
		AppendedAt: time.Unix(1_700_000_000, int64(i)),
	}
	if i%5 == 0 {
		l.Extensions = fmt.Appendf(nil, "ext-%d", i)
	}
	if i%97 == 0 {
		l.Type = raft.LogConfiguration
	}
	return l
}

// entriesFor returns entryFor(i) for i in [lo, hi].
func entriesFor(lo, hi uint64) []*raft.Log {
	var logs []*raft.Log
	for i := lo; i <= hi; i++ {
		logs = append(logs, entryFor(i))
	}
	return logs
}

// diffLog describes how got differs from want, or returns "" if it does not.
// Empty and nil byte slices count as equal, as they do for Raft.
func diffLog(got, want *raft.Log) string {
	switch {
	case got.Index != want.Index:
		return fmt.Sprintf("index %d, want %d", got.Index, want.Index)
	case got.Term != want.Term:
		return fmt.Sprintf("term %d, want %d", got.Term, want.Term)
	case got.Type != want.Type:
		return fmt.Sprintf("type %v, want %v", got.Type, want.Type)
	case !bytes.Equal(got.Data, want.Data):
		return fmt.Sprintf("data %x, want %x", got.Data, want.Data)
	case !bytes.Equal(got.Extensions, want.Extensions):
		return fmt.Sprintf("extensions %x, want %x", got.Extensions, want.Extensions)
	case !got.AppendedAt.Equal(want.AppendedAt):
		return fmt.Sprintf("appended at %v, want %v", got.AppendedAt, want.AppendedAt)
	}
	return ""
}

// checkLog fails the test unless the store holds exactly entryFor(i) for
// every i in [first, last] and nothing outside it.
func checkLog(t testing.TB, s *Store, first, last uint64) {
	t.Helper()
	gotFirst, err := s.FirstIndex()
	if err != nil {
		t.Fatalf("FirstIndex: %v", err)
	}
	gotLast, err := s.LastIndex()
	if err != nil {
		t.Fatalf("LastIndex: %v", err)
	}
	if gotFirst != first || gotLast != last {
		t.Fatalf("bounds = [%d, %d], want [%d, %d]", gotFirst, gotLast, first, last)
	}
	if last == 0 {
		return
	}
	for i := first; i <= last; i++ {
		var l raft.Log
		if err := s.GetLog(i, &l); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		if d := diffLog(&l, entryFor(i)); d != "" {
			t.Fatalf("GetLog(%d): %s", i, d)
		}
	}
	for _, i := range []uint64{first - 1, last + 1} {
		if i == 0 {
			continue
		}
		var l raft.Log
		if err := s.GetLog(i, &l); err != raft.ErrLogNotFound {
			t.Fatalf("GetLog(%d) outside [%d, %d] = %v, want raft.ErrLogNotFound", i, first, last, err)
		}
	}
}
