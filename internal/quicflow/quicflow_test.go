package quicflow

import (
	"testing"

	"github.com/quic-go/quic-go"
)

// The windows a pull starts with cover the link it is sized for, from
// the first round trip, and quic-go may grow none of them below where it
// starts.
func TestWindowsCoverTheBandwidthDelayProduct(t *testing.T) {
	const bdp = 500_000_000 / 8 / 10 // 500 Mbit/s for 100 ms, in bytes
	c := Apply(&quic.Config{})
	if c.InitialConnectionReceiveWindow < bdp {
		t.Errorf("initial connection window %d B, below the %d B bandwidth-delay product", c.InitialConnectionReceiveWindow, bdp)
	}
	if c.MaxStreamReceiveWindow < bdp {
		t.Errorf("a stream's window can grow to %d B only, below the %d B bandwidth-delay product", c.MaxStreamReceiveWindow, bdp)
	}
	if c.MaxStreamReceiveWindow < c.InitialStreamReceiveWindow || c.MaxConnectionReceiveWindow < c.InitialConnectionReceiveWindow {
		t.Errorf("a maximum window is below its initial one: %+v", c)
	}
	if c.InitialConnectionReceiveWindow < c.InitialStreamReceiveWindow {
		t.Errorf("the connection's window %d B is below one stream's %d B", c.InitialConnectionReceiveWindow, c.InitialStreamReceiveWindow)
	}
}
