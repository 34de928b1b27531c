// Package linkemu is a userspace UDP relay that makes a loopback path
// behave like a wide-area link: delay, jitter, loss, reordering and a
// bandwidth cap, each way. Scenarios put it between agents and servers to
// test QUIC transfers over slow, lossy links, because the kernels these
// tests run on have no netem.
package linkemu

import (
	"container/heap"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/droverhq/drover/internal/udpbuf"
)

// Shape is one direction of a link.
type Shape struct {
	// Delay is the one-way propagation delay.
	Delay time.Duration
	// Jitter adds a uniform random amount in [-Jitter, +Jitter] to each
	// datagram's delay (never below zero), so datagrams sent close
	// together may arrive out of order, as on a real path.
	Jitter time.Duration
	// Loss is the probability that a datagram is dropped, 0 to 1.
	Loss float64
	// Rate caps the link at this many bytes per second; 0 is unlimited.
	Rate int64
	// QueueBytes is the buffer in front of a capped link, as a router
	// has: a datagram that would wait behind more than this many bytes is
	// dropped. 0 means 256 KiB.
	QueueBytes int
}

// Validate reports a shape no link can have.
func (s Shape) Validate() error {
	switch {
	case s.Delay < 0, s.Jitter < 0:
		return fmt.Errorf("linkemu: delay %v and jitter %v must not be negative", s.Delay, s.Jitter)
	case s.Loss < 0 || s.Loss > 1:
		return fmt.Errorf("linkemu: loss %v must be between 0 and 1", s.Loss)
	case s.Rate < 0, s.QueueBytes < 0:
		return fmt.Errorf("linkemu: rate %d and queue %d must not be negative", s.Rate, s.QueueBytes)
	}
	return nil
}

const defaultQueueBytes = 256 << 10

// Stats counts what one direction carried.
type Stats struct {
	Sent           int64 // datagrams that entered the link
	Packets, Bytes int64 // delivered
	Lost           int64 // dropped by Loss
	QueueDrops     int64 // dropped because the capped link's queue was full
}

// Relay listens on a loopback UDP address and relays every datagram to a
// target, shaping each direction. Each client address gets its own socket
// towards the target, so the target sees one peer per client and answers
// reach the right one.
type Relay struct {
	target *net.UDPAddr
	lc     *net.UDPConn
	lb     batchConn  // lc, a batch at a time
	up     *direction // client → target
	down   *direction // target → client

	mu      sync.Mutex // guards the fields below
	clients map[string]clientConn
	closed  bool

	wg sync.WaitGroup // every goroutine the relay starts
}

// New starts a relay to target (HOST:PORT). seed makes loss and jitter
// repeatable.
func New(target string, up, down Shape, seed uint64) (*Relay, error) {
	if err := up.Validate(); err != nil {
		return nil, err
	}
	if err := down.Validate(); err != nil {
		return nil, err
	}
	ta, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		return nil, fmt.Errorf("linkemu: target %q: %w", target, err)
	}
	lc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("linkemu: listen: %w", err)
	}
	// The relay's own socket must not be the bottleneck the shapes are
	// meant to be.
	_, _ = udpbuf.Raise(lc)
	r := &Relay{
		target:  ta,
		lc:      lc,
		lb:      batched(lc),
		up:      newDirection(up, rand.New(rand.NewPCG(seed, 1))),
		down:    newDirection(down, rand.New(rand.NewPCG(seed, 2))),
		clients: make(map[string]clientConn),
	}
	r.wg.Add(3)
	go func() { defer r.wg.Done(); r.up.run() }()
	go func() { defer r.wg.Done(); r.down.run() }()
	go func() { defer r.wg.Done(); r.readClients() }()
	return r, nil
}

// Addr is the address clients send to instead of the target.
func (r *Relay) Addr() string { return r.lc.LocalAddr().String() }

// SetShape changes both directions from now on; datagrams already on
// their way keep the times they were given.
func (r *Relay) SetShape(up, down Shape) error {
	if err := up.Validate(); err != nil {
		return err
	}
	if err := down.Validate(); err != nil {
		return err
	}
	r.up.setShape(up)
	r.down.setShape(down)
	return nil
}

// Stats returns what each direction carried so far.
func (r *Relay) Stats() (up, down Stats) { return r.up.stats(), r.down.stats() }

// Close stops the relay and waits for its goroutines. Idempotent.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	conns := make([]*net.UDPConn, 0, len(r.clients))
	for _, c := range r.clients {
		conns = append(conns, c.c)
	}
	r.mu.Unlock()
	err := r.lc.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	r.up.close()
	r.down.close()
	r.wg.Wait()
	return err
}

// maxDatagram is the largest datagram the relay carries (UDP's limit).
const maxDatagram = 64 << 10

// batchSize is how many datagrams the relay reads or writes with one
// system call (recvmmsg and sendmmsg on Linux; elsewhere x/net falls back
// to one at a time). When the relay falls behind on a busy machine, the
// datagrams waiting in a socket cost one call per batch instead of one
// each: the relay must stay well above the links it emulates (see
// BenchmarkRelayCapacity).
const batchSize = 32

// batchConn reads and writes datagrams a batch at a time: an
// ipv4.PacketConn or an ipv6.PacketConn (their Message is one type).
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

func batched(c *net.UDPConn) batchConn {
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() == nil {
		return ipv6.NewPacketConn(c)
	}
	return ipv4.NewPacketConn(c)
}

// newMessages returns n messages, each with a buffer for the largest
// datagram.
func newMessages(n int) []ipv4.Message {
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, maxDatagram)}
	}
	return ms
}

// readClients takes datagrams from clients and sends them towards the
// target through the up direction.
func (r *Relay) readClients() {
	ms := newMessages(batchSize)
	for {
		n, err := r.lb.ReadBatch(ms, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		for _, m := range ms[:n] {
			from, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			uc, err := r.clientConn(from)
			if err != nil {
				continue
			}
			r.up.send(append([]byte(nil), m.Buffers[0][:m.N]...), uc, nil)
		}
	}
}

// clientConn returns the socket towards the target for a client, opening
// it (and the goroutine that relays its answers) on first use.
func (r *Relay) clientConn(from *net.UDPAddr) (batchConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, net.ErrClosed
	}
	key := from.String()
	if c, ok := r.clients[key]; ok {
		return c.b, nil
	}
	uc, err := net.DialUDP("udp", nil, r.target)
	if err != nil {
		return nil, err
	}
	_, _ = udpbuf.Raise(uc)
	c := clientConn{c: uc, b: batched(uc)}
	r.clients[key] = c
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		ms := newMessages(batchSize)
		for {
			n, err := c.b.ReadBatch(ms, 0)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // an ICMP error from a target that restarted
			}
			for _, m := range ms[:n] {
				r.down.send(append([]byte(nil), m.Buffers[0][:m.N]...), r.lb, from)
			}
		}
	}()
	return c.b, nil
}

// clientConn is one client's connected socket towards the target.
type clientConn struct {
	c *net.UDPConn
	b batchConn // c, a batch at a time
}

// direction shapes the datagrams of one way and delivers each at its time.
type direction struct {
	wake chan struct{} // nudges run when an earlier datagram is queued
	done chan struct{}

	mu        sync.Mutex // guards the fields below
	shape     Shape
	rng       *rand.Rand
	busyUntil time.Time // when the capped link finishes sending what it holds
	queue     pending
	st        Stats
}

func newDirection(s Shape, rng *rand.Rand) *direction {
	return &direction{shape: s, rng: rng, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (d *direction) setShape(s Shape) {
	d.mu.Lock()
	d.shape = s
	d.mu.Unlock()
}

func (d *direction) stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st
}

func (d *direction) close() { close(d.done) }

// send decides a datagram's fate: lost, dropped at a full queue, or
// written to out (to the address to, or nil on a connected socket) at the
// time the link would hand it over.
func (d *direction) send(p []byte, out batchConn, to net.Addr) {
	now := time.Now()
	d.mu.Lock()
	d.st.Sent++
	s := d.shape
	if s.Loss > 0 && d.rng.Float64() < s.Loss {
		d.st.Lost++
		d.mu.Unlock()
		return
	}
	at := now
	if s.Rate > 0 {
		// The link sends one datagram after the other at Rate; what
		// waits for it is the queue.
		start := now
		if d.busyUntil.After(now) {
			start = d.busyUntil
		}
		queued := int64(start.Sub(now).Seconds() * float64(s.Rate))
		limit := int64(s.QueueBytes)
		if limit == 0 {
			limit = defaultQueueBytes
		}
		if queued > limit {
			d.st.QueueDrops++
			d.mu.Unlock()
			return
		}
		d.busyUntil = start.Add(time.Duration(float64(len(p)) / float64(s.Rate) * float64(time.Second)))
		at = d.busyUntil
	}
	delay := s.Delay
	if s.Jitter > 0 {
		delay += time.Duration((d.rng.Float64()*2 - 1) * float64(s.Jitter))
	}
	at = at.Add(max(delay, 0))
	first := d.queue.Len() == 0 || at.Before(d.queue[0].at)
	heap.Push(&d.queue, datagram{at: at, data: p, out: out, to: to})
	d.mu.Unlock()
	if first {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

// run delivers queued datagrams when they are due, until close, writing
// those due together in batches.
func (d *direction) run() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	ms := make([]ipv4.Message, 0, batchSize)
	for {
		d.mu.Lock()
		now := time.Now()
		var due []datagram
		for d.queue.Len() > 0 && !d.queue[0].at.After(now) {
			due = append(due, heap.Pop(&d.queue).(datagram))
		}
		wait := time.Hour
		if d.queue.Len() > 0 {
			wait = d.queue[0].at.Sub(now)
		}
		for _, dg := range due {
			d.st.Packets++
			d.st.Bytes += int64(len(dg.data))
		}
		d.mu.Unlock()
		for len(due) > 0 {
			// Consecutive datagrams for one socket go in one call.
			ms = ms[:0]
			out := due[0].out
			for len(due) > 0 && due[0].out == out && len(ms) < batchSize {
				ms = append(ms, ipv4.Message{Buffers: [][]byte{due[0].data}, Addr: due[0].to})
				due = due[1:]
			}
			writeAll(out, ms)
		}
		t.Reset(wait)
		select {
		case <-d.done:
			return
		case <-d.wake:
		case <-t.C:
		}
	}
}

// writeAll writes ms to out. A datagram the socket refuses is dropped,
// as a link drops what it cannot carry.
func writeAll(out batchConn, ms []ipv4.Message) {
	for len(ms) > 0 {
		n, err := out.WriteBatch(ms, 0)
		if err != nil && n == 0 {
			n = 1
		}
		ms = ms[n:]
	}
}

type datagram struct {
	at   time.Time
	data []byte
	out  batchConn
	to   net.Addr // nil: out is connected
}

// pending is a min-heap of datagrams by delivery time.
type pending []datagram

func (q pending) Len() int           { return len(q) }
func (q pending) Less(i, j int) bool { return q[i].at.Before(q[j].at) }
func (q pending) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *pending) Push(x any)        { *q = append(*q, x.(datagram)) }
func (q *pending) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}
