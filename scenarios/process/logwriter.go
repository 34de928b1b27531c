package process

import (
	"bytes"
	"sync"
)

// lineWriter splits a process's output into lines and hands each, with a
// prefix, to log. os/exec copies the output from its own goroutine and
// Cmd.Wait waits for that copy, so nothing is logged after Wait returns.
type lineWriter struct {
	prefix string
	log    func(string)

	mu  sync.Mutex // guards buf
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.log(w.prefix + string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// flush logs a last line that had no newline.
func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.log(w.prefix + string(w.buf))
		w.buf = nil
	}
}
