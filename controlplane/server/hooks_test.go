package server

import (
	"context"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingListener counts the connections its server accepts.
type countingListener struct {
	net.Listener
	accepted *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// Both listeners other servers connect to, Raft's and the API's, are
// served through WrapListener, so faults injected there reach every
// server-to-server connection.
func TestWrapListenerServesRaftAndAPI(t *testing.T) {
	var mu sync.Mutex
	counts := map[string]*atomic.Int64{}
	cfg := singleServerConfig(t, t.TempDir())
	cfg.WrapListener = func(ln net.Listener) net.Listener {
		mu.Lock()
		defer mu.Unlock()
		n := new(atomic.Int64)
		counts[ln.Addr().String()] = n
		return countingListener{Listener: ln, accepted: n}
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Kill()

	got := s.Config()
	mu.Lock()
	var wrapped []string
	for addr := range counts {
		wrapped = append(wrapped, addr)
	}
	mu.Unlock()
	slices.Sort(wrapped)
	want := []string{got.APIAddr, got.RaftAddr}
	slices.Sort(want)
	if !slices.Equal(wrapped, want) {
		t.Fatalf("wrapped listeners %v, want the API and Raft listeners %v", wrapped, want)
	}

	// What the server accepts comes through the wrapper.
	for _, addr := range want {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		mu.Lock()
		n := counts[addr]
		mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		for n.Load() == 0 && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
		cancel()
		if n.Load() == 0 {
			t.Errorf("a connection to %s was not accepted through the wrapped listener", addr)
		}
	}
}
