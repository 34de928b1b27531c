// Package quicflow sizes the QUIC flow-control windows that agents and
// servers share, so that one pull can fill a long, fast link.
package quicflow

import "github.com/quic-go/quic-go"

// A receiver lets a sender have at most its window of bytes unread in
// flight. To keep a link busy the window must cover the bandwidth-delay
// product: at 500 Mbit/s and a 100 ms round trip (a site on another
// continent) that is 6.25 MB. quic-go's defaults start at 512 KiB per
// stream and 768 KiB per connection and grow only as round trips show
// the need, so a pull of a few hundred MiB over such a link spends much
// of its time ramping up. The windows are ceilings, not allocations: a
// peer buffers only what was sent and not yet read, and a pull reads as
// fast as it receives.
const (
	// InitialStreamWindow holds a whole chunk of the default size range
	// (artifact chunks average 1 MiB and reach 4 MiB), so one chunk is
	// sent without waiting for a window update.
	InitialStreamWindow = 4 << 20
	// MaxStreamWindow is how far quic-go may grow one stream's window.
	MaxStreamWindow = 16 << 20
	// InitialConnectionWindow covers the 6.25 MB bandwidth-delay product
	// from the first round trip, across the chunks a pull has in flight.
	InitialConnectionWindow = 8 << 20
	// MaxConnectionWindow is how far quic-go may grow a connection's
	// window: room for several times the product, for longer or faster
	// paths.
	MaxConnectionWindow = 32 << 20
)

// Apply sets the flow-control windows on c and returns it.
func Apply(c *quic.Config) *quic.Config {
	c.InitialStreamReceiveWindow = InitialStreamWindow
	c.MaxStreamReceiveWindow = MaxStreamWindow
	c.InitialConnectionReceiveWindow = InitialConnectionWindow
	c.MaxConnectionReceiveWindow = MaxConnectionWindow
	return c
}
