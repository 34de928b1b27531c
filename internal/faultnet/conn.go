package faultnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// preambleMagic starts every connection a Dialer makes, so a listener
	// can tell a wrapped dialer from anything else that connects.
	preambleMagic = "FNT1"
	maxNodeName   = 255
	// preambleTimeout bounds how long Accept waits for a preamble. Wrapped
	// dialers write it right after connecting, so only a stranger that
	// connects and says nothing ever reaches it.
	preambleTimeout = 5 * time.Second
	// queueLen is how many delayed writes may wait per connection before
	// Write blocks, like a full socket buffer.
	queueLen = 256
	// closeGrace is how long Close waits, beyond the latest delivery time,
	// for delayed writes to reach a peer that is slow to read.
	closeGrace = time.Second
)

// writePreamble names the source node: the magic, one length byte, the name.
func writePreamble(ctx context.Context, c net.Conn, node string) error {
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetWriteDeadline(dl); err != nil {
			return err
		}
		defer c.SetWriteDeadline(time.Time{})
	}
	buf := make([]byte, 0, len(preambleMagic)+1+len(node))
	buf = append(buf, preambleMagic...)
	buf = append(buf, byte(len(node)))
	buf = append(buf, node...)
	_, err := c.Write(buf)
	return err
}

var (
	errBadPreamble = errors.New("not a faultnet preamble")
	// errNoPreamble: the connection does not start with the magic, so it
	// is not from a node; readPreamble returns the bytes it read.
	errNoPreamble = errors.New("no faultnet preamble")
)

// readPreamble returns the source node named by a connection's preamble.
// A connection that does not start with the magic (or says nothing before
// preambleTimeout) yields errNoPreamble and the bytes read so far, with the
// read deadline cleared, so a shared listener can pass it on.
func readPreamble(c net.Conn) (node string, head []byte, err error) {
	if err := c.SetReadDeadline(time.Now().Add(preambleTimeout)); err != nil {
		return "", nil, err
	}
	hdr := make([]byte, len(preambleMagic)+1)
	n, err := io.ReadFull(c, hdr[:len(preambleMagic)])
	if err != nil || string(hdr[:len(preambleMagic)]) != preambleMagic {
		if derr := c.SetReadDeadline(time.Time{}); derr != nil {
			return "", nil, derr
		}
		return "", hdr[:n], errNoPreamble
	}
	if _, err := io.ReadFull(c, hdr[len(preambleMagic):]); err != nil {
		return "", nil, err
	}
	if hdr[len(preambleMagic)] == 0 {
		return "", nil, errBadPreamble
	}
	name := make([]byte, hdr[len(preambleMagic)])
	if _, err := io.ReadFull(c, name); err != nil {
		return "", nil, err
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return "", nil, err
	}
	return string(name), nil, nil
}

type listener struct {
	net.Listener
	n    *Network
	node string
	// shared passes connections without a preamble through, untouched,
	// instead of dropping them.
	shared bool
}

var _ net.Listener = (*listener)(nil)

// Accept reads each new connection's preamble before returning it, so one
// silent stranger can hold up Accept for at most preambleTimeout.
func (l *listener) Accept() (net.Conn, error) {
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src, head, err := readPreamble(raw)
		if errors.Is(err, errNoPreamble) && l.shared {
			return &replayConn{Conn: raw, head: head}, nil
		}
		if err != nil {
			raw.Close()
			continue
		}
		c, err := l.n.track(raw, l.node, src)
		if err != nil {
			// Blocked: the dialer sees its connection closed, as it
			// would if the packets never arrived and it gave up.
			raw.Close()
			continue
		}
		return c, nil
	}
}

// replayConn is a stranger's connection on a shared listener: reads return
// the bytes Accept read while looking for a preamble, then the rest.
type replayConn struct {
	net.Conn
	head []byte // only touched by Read, which net.Conn callers never run concurrently
}

var _ net.Conn = (*replayConn)(nil)

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// conn is one end of a connection between two nodes. Reads and writes pass
// through to the socket, except that writes between delayed nodes wait in a
// queue, in order, until their delivery time; a goroutine owned by the conn
// delivers them and stops on Close or when a fault cuts the conn.
//
// Like any net.Conn it allows one Read and any number of Writes at once;
// Writes are serialized. Write deadlines do not cover time spent queued.
type conn struct {
	net.Conn
	n             *Network
	local, remote string // node names: this end and the other

	failed    atomic.Pointer[error] // set once a fault cuts the conn
	cutCh     chan struct{}         // closed once a fault cuts the conn
	cutOnce   sync.Once
	closing   chan struct{} // closed by Close
	closeOnce sync.Once
	closeErr  error

	// wmu is held across each Write, so writes reach the socket in the
	// order they were made, whether sent directly or queued.
	wmu sync.Mutex

	smu     sync.Mutex // guards the fields below
	closed  bool
	started bool // writer goroutine started; it then handles every write

	queue      chan delayed
	writerDone chan struct{}         // closed when the writer goroutine exits
	writerErr  atomic.Pointer[error] // why the writer goroutine stopped early
	lastAt     atomic.Int64          // latest delivery time queued, Unix nanoseconds
	wg         sync.WaitGroup        // the writer goroutine
}

var _ net.Conn = (*conn)(nil)

type delayed struct {
	data []byte
	at   time.Time
}

func newConn(raw net.Conn, n *Network, local, remote string) *conn {
	return &conn{
		Conn:       raw,
		n:          n,
		local:      local,
		remote:     remote,
		cutCh:      make(chan struct{}),
		closing:    make(chan struct{}),
		queue:      make(chan delayed, queueLen),
		writerDone: make(chan struct{}),
	}
}

// cut breaks the connection because of a fault: reads and writes fail with
// err from now on and queued data is dropped. It may be called with the
// network's lock held, so it takes no lock of the network.
func (c *conn) cut(err error) {
	c.cutOnce.Do(func() {
		c.failed.Store(&err)
		close(c.cutCh)
		c.Conn.Close()
	})
}

func (c *conn) faultErr() error {
	if p := c.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// Read drops whatever arrives after a fault, so no data crosses a cut
// connection even if it was already in the socket buffer.
func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if ferr := c.faultErr(); ferr != nil {
		return 0, ferr
	}
	return n, err
}

func (c *conn) Write(p []byte) (int, error) {
	if err := c.faultErr(); err != nil {
		return 0, err
	}
	d := c.n.delay(c.local, c.remote)
	c.wmu.Lock()
	defer c.wmu.Unlock()

	c.smu.Lock()
	if c.closed {
		c.smu.Unlock()
		return 0, net.ErrClosed
	}
	if d > 0 && !c.started {
		// From here on every write goes through the queue, even when
		// the delay drops to zero, so none can overtake a queued one.
		c.started = true
		c.wg.Add(1)
		go c.writer()
	}
	started := c.started
	c.smu.Unlock()

	if !started {
		n, err := c.Conn.Write(p)
		if ferr := c.faultErr(); ferr != nil {
			return n, ferr
		}
		return n, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	at := time.Now().Add(d)
	item := delayed{data: append([]byte(nil), p...), at: at}
	select {
	case c.queue <- item:
	case <-c.closing:
		return 0, net.ErrClosed
	case <-c.cutCh:
		return 0, c.faultErr()
	case <-c.writerDone:
		return 0, c.writerStopErr()
	}
	if ns := at.UnixNano(); ns > c.lastAt.Load() {
		c.lastAt.Store(ns) // only written with wmu held
	}
	return len(p), nil
}

func (c *conn) writerStopErr() error {
	if err := c.faultErr(); err != nil {
		return err
	}
	if p := c.writerErr.Load(); p != nil {
		return *p
	}
	return net.ErrClosed
}

// writer delivers queued writes in order, each no earlier than its delivery
// time. On Close it delivers what is already queued and exits; on a fault or
// a failed write it exits at once.
func (c *conn) writer() {
	defer c.wg.Done()
	defer close(c.writerDone)
	// Since Go 1.23 a stopped timer can be Reset without draining it.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	deliver := func(item delayed) bool {
		if wait := time.Until(item.at); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-c.cutCh:
				return false
			}
		}
		if _, err := c.Conn.Write(item.data); err != nil {
			err = fmt.Errorf("faultnet: delayed write %s -> %s: %w", c.local, c.remote, err)
			c.writerErr.Store(&err)
			return false
		}
		return true
	}
	for {
		select {
		case item := <-c.queue:
			if !deliver(item) {
				return
			}
		case <-c.closing:
			for {
				select {
				case item := <-c.queue:
					if !deliver(item) {
						return
					}
				default:
					return
				}
			}
		case <-c.cutCh:
			return
		}
	}
}

// Close closes the connection and stops its writer goroutine. Data already
// written is still delivered, at its delivery time, unless the peer stops
// reading for longer than a second past the last delivery time. Close is
// idempotent; closing a connection a fault already cut returns nil.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.smu.Lock()
		c.closed = true
		started := c.started
		close(c.closing)
		c.smu.Unlock()

		if started {
			wait := time.Until(time.Unix(0, c.lastAt.Load())) + closeGrace
			t := time.NewTimer(wait)
			select {
			case <-c.writerDone:
			case <-t.C:
			}
			t.Stop()
		}
		if c.faultErr() == nil {
			c.closeErr = c.Conn.Close()
		}
		// Unblocks a writer still waiting on a delivery time or on a
		// write the peer never read.
		c.cut(net.ErrClosed)
		c.wg.Wait()
		c.n.untrack(c)
	})
	return c.closeErr
}
