package raftstore

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/cockroachdb/pebble/v2"
)

// pebbleLogger feeds Pebble's printf-style logger into slog. Pebble's
// informational lines (WAL replays, format upgrades) are routine, so they go
// to Debug; its errors stay errors.
//
// Fatalf panics instead of exiting: Pebble calls it on some kinds of damage
// found while opening, and a panic on Open's goroutine is recovered there and
// returned as an error that tells the operator what to do. A Fatalf on one of
// Pebble's own goroutines still ends the process, as os.Exit would have, but
// with a stack trace.
type pebbleLogger struct {
	log *slog.Logger
}

var _ pebble.Logger = pebbleLogger{}

func (l pebbleLogger) Infof(format string, args ...any) {
	// Formatting costs more than the check; most servers run above Debug.
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug(fmt.Sprintf(format, args...))
	}
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...))
}

func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error(msg, "fatal", true)
	panic(pebbleFatal(msg))
}

// pebbleFatal is the panic value of pebbleLogger.Fatalf, so that a recover
// can tell Pebble giving up from any other panic.
type pebbleFatal string

// eventListener reports what Pebble finds wrong through slog. Pebble's
// default for DataCorruption is Fatalf, which would panic inside whichever
// goroutine read the damaged block (often Raft's own); the read already
// returns a corruption error, which GetLog reports with the index, so logging
// is enough here.
func eventListener(log *slog.Logger) *pebble.EventListener {
	return &pebble.EventListener{
		BackgroundError: func(err error) {
			log.Error("pebble background error", "err", err)
		},
		DataCorruption: func(info pebble.DataCorruptionInfo) {
			log.Error("pebble found corrupt data", "path", info.Path, "err", info.Details)
		},
	}
}
