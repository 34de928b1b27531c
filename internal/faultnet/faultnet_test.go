package faultnet

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// testNode is a node with a wrapped loopback listener whose accepted
// connections are handed to the test through accepted.
type testNode struct {
	name     string
	addr     string
	accepted chan net.Conn
}

func startNode(t *testing.T, nw *Network, name string) *testNode {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := nw.Listener(name, inner)
	n := &testNode{name: name, addr: inner.Addr().String(), accepted: make(chan net.Conn, 64)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.accepted <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		close(n.accepted)
		for c := range n.accepted {
			c.Close()
		}
	})
	return n
}

func startNodes(t *testing.T, nw *Network, names ...string) map[string]*testNode {
	t.Helper()
	m := make(map[string]*testNode)
	for _, name := range names {
		m[name] = startNode(t, nw, name)
	}
	return m
}

// connect dials from one node to another and returns both ends.
func connect(t *testing.T, nw *Network, from string, to *testNode) (client, server net.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client, err := nw.Dialer(from)(ctx, "tcp", to.addr)
	if err != nil {
		t.Fatalf("dial %s -> %s: %v", from, to.name, err)
	}
	t.Cleanup(func() { client.Close() })
	select {
	case server = <-to.accepted:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not accept from %s", to.name, from)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

// exchange checks that bytes flow both ways between two ends.
func exchange(t *testing.T, a, b net.Conn) {
	t.Helper()
	for _, dir := range []struct{ w, r net.Conn }{{a, b}, {b, a}} {
		msg := []byte("hello")
		if _, err := dir.w.Write(msg); err != nil {
			t.Fatalf("write: %v", err)
		}
		got := make([]byte, len(msg))
		dir.r.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(dir.r, got); err != nil {
			t.Fatalf("read: %v", err)
		}
		dir.r.SetReadDeadline(time.Time{})
		if !bytes.Equal(got, msg) {
			t.Fatalf("read %q, want %q", got, msg)
		}
	}
}

// readErr waits for a read on c to fail and returns the error.
func readErr(t *testing.T, c net.Conn) error {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("read %q, want no data", buf[:n])
		}
	}
}

func waitConns(t *testing.T, nw *Network, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for nw.numConns() != want {
		if time.Now().After(deadline) {
			t.Fatalf("network tracks %d connections, want %d", nw.numConns(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestConnectAndClose(t *testing.T) {
	nw := New()
	nodes := startNodes(t, nw, "a", "b")
	c, s := connect(t, nw, "a", nodes["b"])
	exchange(t, c, s)
	if got := s.(*conn).remote; got != "a" {
		t.Errorf("accepted connection from %q, want a", got)
	}
	if got := c.(*conn).remote; got != "b" {
		t.Errorf("dialed connection to %q, want b", got)
	}
	waitConns(t, nw, 2)
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v, want net.ErrClosed", err)
	}
	if err := readErr(t, s); !errors.Is(err, io.EOF) {
		t.Errorf("peer read after Close: %v, want EOF", err)
	}
	s.Close()
	waitConns(t, nw, 0)
}

func TestFaults(t *testing.T) {
	type pair struct{ a, b string }
	for _, tc := range []struct {
		name    string
		fault   func(*Network)
		undo    func(*Network)
		blocked []pair
		open    []pair
		wantErr error
		wantMsg string
	}{
		{
			name:    "partition",
			fault:   func(n *Network) { n.Partition([]string{"a"}, []string{"b", "c"}) },
			undo:    (*Network).Heal,
			blocked: []pair{{"a", "b"}, {"a", "c"}},
			open:    []pair{{"b", "c"}, {"d", "a"}, {"d", "b"}},
			wantErr: ErrPartitioned,
			wantMsg: "faultnet: partitioned: a -> b",
		},
		{
			name:    "cut",
			fault:   func(n *Network) { n.Cut("b", "a") },
			undo:    (*Network).Heal,
			blocked: []pair{{"a", "b"}},
			open:    []pair{{"a", "c"}, {"b", "c"}, {"d", "a"}},
			wantErr: ErrPartitioned,
			wantMsg: "faultnet: partitioned: a -> b",
		},
		{
			name:    "isolate",
			fault:   func(n *Network) { n.Isolate("a") },
			undo:    (*Network).Heal,
			blocked: []pair{{"a", "b"}, {"a", "c"}, {"d", "a"}},
			open:    []pair{{"b", "c"}, {"d", "b"}},
			wantErr: ErrPartitioned,
			wantMsg: "faultnet: partitioned: a -> b",
		},
		{
			name:    "kill",
			fault:   func(n *Network) { n.Kill("a") },
			undo:    func(n *Network) { n.Revive("a") },
			blocked: []pair{{"a", "b"}, {"a", "c"}, {"d", "a"}, {"a", "a"}},
			open:    []pair{{"b", "c"}, {"d", "b"}},
			wantErr: ErrKilled,
			wantMsg: "faultnet: node killed: a (a -> b)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nw := New()
			nodes := startNodes(t, nw, "a", "b", "c", "d")
			type live struct {
				p    pair
				c, s net.Conn
			}
			var blockedConns, openConns []live
			for _, p := range tc.blocked {
				c, s := connect(t, nw, p.a, nodes[p.b])
				blockedConns = append(blockedConns, live{p, c, s})
			}
			for _, p := range tc.open {
				c, s := connect(t, nw, p.a, nodes[p.b])
				openConns = append(openConns, live{p, c, s})
			}

			tc.fault(nw)

			for _, l := range blockedConns {
				if !nw.Blocked(l.p.a, l.p.b) || !nw.Blocked(l.p.b, l.p.a) {
					t.Errorf("Blocked(%s, %s) = false", l.p.a, l.p.b)
				}
				// Both ends are cut, and neither reads nor writes work.
				for _, c := range []net.Conn{l.c, l.s} {
					if err := readErr(t, c); !errors.Is(err, tc.wantErr) {
						t.Errorf("%s-%s read after fault: %v, want %v", l.p.a, l.p.b, err, tc.wantErr)
					}
					if _, err := c.Write([]byte("x")); !errors.Is(err, tc.wantErr) {
						t.Errorf("%s-%s write after fault: %v, want %v", l.p.a, l.p.b, err, tc.wantErr)
					}
				}
				for _, dir := range [][2]string{{l.p.a, l.p.b}, {l.p.b, l.p.a}} {
					_, err := nw.Dialer(dir[0])(context.Background(), "tcp", nodes[dir[1]].addr)
					if !errors.Is(err, tc.wantErr) {
						t.Errorf("dial %s -> %s: %v, want %v", dir[0], dir[1], err, tc.wantErr)
					}
				}
			}
			for _, l := range openConns {
				if nw.Blocked(l.p.a, l.p.b) {
					t.Errorf("Blocked(%s, %s) = true", l.p.a, l.p.b)
				}
				exchange(t, l.c, l.s)
			}
			// A failed dial looks like one: a *net.OpError, "dial", with
			// the fault inside.
			_, err := nw.Dialer("a")(context.Background(), "tcp", nodes["b"].addr)
			var opErr *net.OpError
			if !errors.As(err, &opErr) || opErr.Op != "dial" || opErr.Err.Error() != tc.wantMsg {
				t.Errorf("dial a -> b error %q, want a dial *net.OpError of %q", err, tc.wantMsg)
			}
			// Cut ends are no longer tracked, even before they are closed.
			waitConns(t, nw, 2*len(openConns))

			tc.undo(nw)
			for _, p := range append(tc.blocked, tc.open...) {
				if nw.Blocked(p.a, p.b) {
					t.Errorf("after undo: Blocked(%s, %s) = true", p.a, p.b)
				}
				c, s := connect(t, nw, p.a, nodes[p.b])
				exchange(t, c, s)
			}
			for _, l := range blockedConns {
				if err := l.c.Close(); err != nil {
					t.Errorf("Close of a cut connection: %v", err)
				}
			}
		})
	}
}

func TestPartitionReplacesAndCutsPersist(t *testing.T) {
	nw := New()
	nw.Cut("a", "d")
	nw.Partition([]string{"a", "b"}, []string{"c"})
	nw.Partition([]string{"a", "c"}, []string{"b"})
	for _, tc := range []struct {
		a, b    string
		blocked bool
	}{
		{"a", "c", false},
		{"a", "b", true},
		{"b", "c", true},
		{"a", "d", true}, // the cut outlives partitions
		{"b", "d", false},
		{"a", "a", false},
	} {
		if got := nw.Blocked(tc.a, tc.b); got != tc.blocked {
			t.Errorf("Blocked(%s, %s) = %v, want %v", tc.a, tc.b, got, tc.blocked)
		}
	}
	nw.Heal()
	if nw.Blocked("a", "d") || nw.Blocked("a", "b") {
		t.Error("Heal left a fault")
	}
	nw.Kill("a")
	nw.SetDelayAll(time.Second)
	nw.Heal()
	if !nw.Blocked("a", "b") {
		t.Error("Heal revived a killed node")
	}
	if d := nw.delay("a", "b"); d != time.Second {
		t.Errorf("Heal changed delay to %v", d)
	}
}

func TestPartitionDuplicateNodePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic for a node in two groups")
		}
	}()
	New().Partition([]string{"a", "b"}, []string{"b"})
}

func TestDelay(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pair    time.Duration
		all     time.Duration
		oneWay  time.Duration // at least
		between [2]string
	}{
		{name: "pair", pair: 50 * time.Millisecond, oneWay: 50 * time.Millisecond, between: [2]string{"a", "b"}},
		{name: "all", all: 40 * time.Millisecond, oneWay: 40 * time.Millisecond, between: [2]string{"a", "c"}},
		{name: "pair plus all", pair: 30 * time.Millisecond, all: 20 * time.Millisecond, oneWay: 50 * time.Millisecond, between: [2]string{"a", "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nw := New()
			nodes := startNodes(t, nw, "a", "b", "c")
			c, s := connect(t, nw, tc.between[0], nodes[tc.between[1]])
			nw.SetDelay("b", "a", tc.pair)
			nw.SetDelayAll(tc.all)

			start := time.Now()
			exchange(t, c, s) // one message each way, in turn
			if rtt := time.Since(start); rtt < 2*tc.oneWay {
				t.Errorf("round trip took %v, want at least %v", rtt, 2*tc.oneWay)
			}
		})
	}
}

func TestDelayKeepsOrder(t *testing.T) {
	nw := New()
	nodes := startNodes(t, nw, "a", "b")
	c, s := connect(t, nw, "a", nodes["b"])
	const n = 2000
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 4)
		for i := range n {
			if _, err := io.ReadFull(s, buf); err != nil {
				done <- err
				return
			}
			if got := binary.BigEndian.Uint32(buf); got != uint32(i) {
				done <- fmt.Errorf("message %d arrived as %d", got, i)
				return
			}
		}
		done <- nil
	}()
	// The delay changes while writes are queued: later writes get a
	// shorter delay but must still arrive after earlier ones.
	delays := []time.Duration{30 * time.Millisecond, 0, 10 * time.Millisecond, 0}
	for i := range n {
		if i%500 == 0 {
			nw.SetDelay("a", "b", delays[i/500])
		}
		if _, err := c.Write(binary.BigEndian.AppendUint32(nil, uint32(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestCloseDeliversDelayedWrites(t *testing.T) {
	nw := New()
	nodes := startNodes(t, nw, "a", "b")
	c, s := connect(t, nw, "a", nodes["b"])
	nw.SetDelay("a", "b", 50*time.Millisecond)
	if _, err := c.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("Close returned after %v, before the delayed write was due", d)
	}
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "bye" {
		t.Errorf("peer read %q, %v; want \"bye\", nil", got, err)
	}
}

func TestFaultDropsDelayedWrites(t *testing.T) {
	nw := New()
	nodes := startNodes(t, nw, "a", "b")
	c, s := connect(t, nw, "a", nodes["b"])
	nw.SetDelay("a", "b", 200*time.Millisecond)
	if _, err := c.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	nw.Partition([]string{"a"}, []string{"b"})
	if err := readErr(t, s); !errors.Is(err, ErrPartitioned) {
		t.Errorf("peer read %v, want ErrPartitioned", err)
	}
	// Closing a cut connection must not wait for data it will never send.
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestListenerDropsStrangersAndBlocked(t *testing.T) {
	nw := New()
	nodes := startNodes(t, nw, "a", "b")
	nw.Kill("x")

	for _, tc := range []struct {
		name     string
		preamble []byte
	}{
		{"no preamble", []byte("GET / HTTP/1.1\r\n\r\n")},
		{"zero-length name", []byte(preambleMagic + "\x00")},
		{"killed source", append([]byte(preambleMagic+"\x01"), 'x')},
		{"short name", []byte(preambleMagic + "\x05ab")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := net.Dial("tcp", nodes["b"].addr)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			if _, err := raw.Write(tc.preamble); err != nil {
				t.Fatal(err)
			}
			if tc.name == "short name" {
				// Hang up mid-preamble instead of waiting for the timeout.
				raw.(*net.TCPConn).CloseWrite()
			}
			raw.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := raw.Read(make([]byte, 1)); err == nil {
				t.Error("listener kept a connection it should drop")
			}
		})
	}
	// Accept still works after dropping all of those.
	c, s := connect(t, nw, "a", nodes["b"])
	exchange(t, c, s)
	waitConns(t, nw, 2)
}

func TestDialErrors(t *testing.T) {
	nw := New()
	nodes := startNodes(t, nw, "a", "b")
	_, err := nw.Dialer("a")(context.Background(), "tcp", "127.0.0.1:1")
	if !errors.Is(err, ErrUnknownAddr) || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("dial unknown address: %v", err)
	}
	// A second address for the same node.
	alias := strings.Replace(nodes["b"].addr, "127.0.0.1", "localhost", 1)
	nw.Register("b", alias)
	c, err := nw.Dialer("a")(context.Background(), "tcp", alias)
	if err != nil {
		t.Fatalf("dial registered alias: %v", err)
	}
	c.Close()
	s := <-nodes["b"].accepted
	s.Close()
	// Registered but nothing listening: the ordinary dial error.
	nw.Register("c", "127.0.0.1:1")
	if _, err := nw.Dialer("a")(context.Background(), "tcp", "127.0.0.1:1"); err == nil {
		t.Error("dial to a closed port succeeded")
	}
	for _, name := range []string{"", strings.Repeat("n", 256)} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Dialer(%d-byte name) did not panic", len(name))
				}
			}()
			nw.Dialer(name)
		}()
	}
}

func TestGoroutinesStop(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		nw := New()
		nodes := startNodes(t, nw, "a", "b")
		nw.SetDelayAll(5 * time.Millisecond)
		var conns []net.Conn
		for range 10 {
			c, s := connect(t, nw, "a", nodes["b"])
			exchange(t, c, s)
			conns = append(conns, c, s)
		}
		for _, c := range conns[:10] {
			c.Close()
		}
		nw.Kill("b") // cuts the rest
		for _, c := range conns[10:] {
			c.(*conn).wg.Wait()
		}
		waitConns(t, nw, 0)
	}()
	// The listeners' accept loops stop in cleanup; count only what the
	// connections started, which must all be gone already.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines running, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestConcurrentFaults hammers the network with dials, traffic and fault
// changes at once; it is meant to run under the race detector.
func TestConcurrentFaults(t *testing.T) {
	nw := New()
	names := []string{"a", "b", "c"}
	nodes := startNodes(t, nw, names...)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()

	var wg sync.WaitGroup
	var mu sync.Mutex
	var all []net.Conn
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from, to := names[i%3], names[(i+1)%3]
			dial := nw.Dialer(from)
			for ctx.Err() == nil {
				c, err := dial(ctx, "tcp", nodes[to].addr)
				if err != nil {
					continue
				}
				mu.Lock()
				all = append(all, c)
				mu.Unlock()
				for j := 0; j < 10 && ctx.Err() == nil; j++ {
					if _, err := c.Write([]byte("data")); err != nil {
						break
					}
				}
				c.Close()
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			switch i % 6 {
			case 0:
				nw.Partition([]string{"a"}, []string{"b", "c"})
			case 1:
				nw.SetDelayAll(time.Millisecond)
			case 2:
				nw.Kill("b")
			case 3:
				nw.Revive("b")
			case 4:
				nw.Cut("a", "c")
				nw.SetDelayAll(0)
			case 5:
				nw.Heal()
			}
			_ = nw.Blocked("a", "b")
			time.Sleep(time.Millisecond)
		}
	}()
	// Drain accepted connections so the listeners keep going.
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for ctx.Err() == nil {
			for _, n := range nodes {
				select {
				case s := <-n.accepted:
					mu.Lock()
					all = append(all, s)
					mu.Unlock()
					go io.Copy(io.Discard, s)
				default:
				}
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	wg.Wait()
	<-drained
	mu.Lock()
	for _, c := range all {
		c.Close()
	}
	mu.Unlock()
	// The accepting end of the last dials may still be on its way.
	deadline := time.Now().Add(5 * time.Second)
	for nw.numConns() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("network still tracks %d connections", nw.numConns())
		}
		for _, n := range nodes {
			for len(n.accepted) > 0 {
				(<-n.accepted).Close()
			}
		}
		time.Sleep(time.Millisecond)
	}
}

// A shared listener serves outside clients as they are, whatever the
// faults, and nodes through the network's faults.
func TestSharedListenerPassesStrangers(t *testing.T) {
	nw := New()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := nw.SharedListener("b", inner)
	defer ln.Close()
	startNode(t, nw, "a")
	addr := inner.Addr().String()

	accept := func() net.Conn {
		t.Helper()
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() {
			c, err := ln.Accept()
			ch <- res{c, err}
		}()
		r := <-ch
		if r.err != nil {
			t.Fatalf("accept: %v", r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c
	}

	// Isolated or not, a stranger gets through, first bytes included,
	// and is never cut.
	nw.Isolate("b")
	for _, first := range []string{"GET / HTTP/1.1\r\n\r\n", "FN", "\x16\x03\x01\x00\xa5"} {
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
		if _, err := raw.Write([]byte(first)); err != nil {
			t.Fatal(err)
		}
		if first == "FN" {
			// Shorter than the magic: the stranger hangs up its side.
			raw.(*net.TCPConn).CloseWrite()
		}
		srv := accept()
		got := make([]byte, len(first))
		srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(srv, got); err != nil || string(got) != first {
			t.Fatalf("stranger's first bytes: %q, %v; want %q", got, err, first)
		}
		srv.SetReadDeadline(time.Time{})
		if first != "FN" {
			exchange(t, raw, srv)
		}
	}
	waitConns(t, nw, 0)

	// A node's dial fails while b is isolated, as a failed dial does...
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = nw.Dialer("a")(ctx, "tcp", addr)
	var opErr *net.OpError
	if !errors.Is(err, ErrPartitioned) || !errors.As(err, &opErr) || opErr.Op != "dial" {
		t.Fatalf("dial to an isolated node: %v, want a dial *net.OpError wrapping ErrPartitioned", err)
	}
	// ...and after healing it connects, tracked, and a new fault cuts it.
	nw.Heal()
	client, err := nw.Dialer("a")(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial after heal: %v", err)
	}
	defer client.Close()
	srv := accept()
	exchange(t, client, srv)
	waitConns(t, nw, 2)
	nw.Cut("a", "b")
	if err := readErr(t, srv); !errors.Is(err, ErrPartitioned) {
		t.Errorf("read on a cut node connection: %v, want ErrPartitioned", err)
	}
}
