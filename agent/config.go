package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/droverhq/drover/agent/fetch"
	"github.com/droverhq/drover/hwprobe"
	"github.com/droverhq/drover/internal/jointoken"
	"github.com/droverhq/drover/internal/names"
)

// DefaultDataDir is where the agent keeps its identity unless told
// otherwise.
const DefaultDataDir = "/var/lib/drover-agent"

// Config configures an Agent. Start from DefaultConfig; New validates it.
type Config struct {
	// Servers are control-plane API addresses, HOST:PORT. Enrollment needs
	// at least one; afterwards the agent also knows every server the
	// cluster told it about, and remembers them in its identity.
	Servers []string
	// Token is the join token, "drover-join.v1.<ca>.<id>.<secret>". It is
	// needed only to enroll: an agent whose data directory holds an
	// identity ignores it (unless it pins another cluster's CA).
	Token string
	// DataDir holds the agent's identity, the versions it pulled and what
	// it trusts of them.
	DataDir string
	// Name is the node name the agent asks for at enrollment; the default
	// is this machine's hostname, lowercased.
	Name string
	// Labels are asked for at enrollment; the join token's labels win on
	// conflict.
	Labels map[string]string
	// Site is asked for at enrollment; a join token with a site overrides
	// it.
	Site string
	// Root is the directory that stands for "/" when the hardware probe
	// reads /proc, /sys and /etc: "/" normally, or the host's root mounted
	// into a container.
	Root string
	// ProbeInterval is how often the hardware is probed again; the agent
	// registers again whenever the static facts changed (a GPU added or
	// lost, MIG mode switched).
	ProbeInterval time.Duration
	// GossipAddr is where the site gossip pool listens, IP:PORT, on TCP
	// and UDP; "" turns the pool off. Port 0 picks a free port (tests,
	// `drover dev`). A node without a site has no pool whatever this says.
	GossipAddr string
	// GossipAdvertise is the IP:PORT the site's other agents dial to reach
	// this one's pool, for when the bind address is not what they see
	// (NAT, containers). "" advertises the bind address, or for 0.0.0.0
	// a private address of this machine.
	GossipAdvertise string
	// PeerAddr is where the agent serves chunks to its site's other
	// agents, IP:PORT, on UDP (HTTP/3 with mutual TLS); "" turns peer
	// serving off. Peers find it through the site gossip pool, so it is
	// off too without a pool. Port 0 picks a free port.
	PeerAddr string
	// PeerUploadBytesPerSecond caps the bytes served to peers, all
	// together; zero means no cap.
	PeerUploadBytesPerSecond int64
	// CacheDir holds the chunk cache that pulls fill and version
	// directories are assembled from; "" means <DataDir>/cache. Pulled
	// versions go in <DataDir>/versions/<model>/<version>.
	CacheDir string
	// CacheBudget bounds the chunk cache in bytes: the least recently
	// used chunks of versions that are neither current nor previous are
	// evicted beyond it. Zero or less means no bound.
	CacheBudget int64
	// PullBandwidth caps the bytes per second a pull reads from all its
	// sources together; zero means no cap.
	PullBandwidth int64
	// MaxManifestBytes bounds the signed manifest of a version the agent
	// pulls; a larger one is refused before it is decoded. Zero means
	// fetch.DefaultMaxManifestBytes.
	MaxManifestBytes int
	// ServeAddr is where the node's inference endpoint listens, IP:PORT
	// (HTTP): /v1/deployments/NAME/... reaches the instance that serves
	// deployment NAME. "" turns the endpoint off; deployments still run.
	ServeAddr string
	// ONNXRuntime is the drover-onnx binary the built-in onnx runtime
	// runs; "" looks for it next to the agent's own binary, then on the
	// PATH. Without one, deployments of runtime onnx fail with a reason
	// that says so; exec deployments are unaffected.
	ONNXRuntime string
	// HealthInterval is how often the node's CPU, memory, data volume and
	// GPUs are sampled for telemetry and for its conditions (see
	// hwprobe.Monitor); zero means every 5 seconds.
	HealthInterval time.Duration
	// NVML is the NVIDIA library handle the probe and the health monitor
	// use; nil means the machine's own (absent without the driver, when
	// everything GPU-related is simply left out). Tests pass a mock.
	NVML hwprobe.NVML
	// TelemetryWindow is the length of a telemetry window: each serving
	// instance's requests are summed up per window, aligned to multiples
	// of it. Zero means DefaultTelemetryWindow.
	TelemetryWindow time.Duration
	// TelemetrySpoolBytes bounds the on-disk spool of closed windows
	// waiting for a server; zero means DefaultTelemetrySpoolBytes.
	TelemetrySpoolBytes int64
	// TelemetryMaxMerge is the longest span the spool merges windows
	// into while no server answers; past it the oldest are dropped
	// (counted). Zero means an hour.
	TelemetryMaxMerge time.Duration
	// TelemetryOff turns request telemetry off.
	TelemetryOff bool
	// TelemetryNow, when set, is the time telemetry windows are cut on
	// instead of the system's. Scenarios use it to run hours of windows
	// in seconds; leave it nil everywhere else. The node's own metrics
	// windows, sampled on the real clock, are not spooled then.
	TelemetryNow func() time.Time
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
	// DialQUIC, when set, opens the agent's QUIC connections to servers
	// instead of quic-go's dialer (one UDP socket for every server).
	// Scenarios use it to put an agent behind a network they can cut;
	// leave it nil everywhere else.
	DialQUIC func(ctx context.Context, addr string, tlsConf *tls.Config, qc *quic.Config) (*quic.Conn, error)
}

// DefaultConfig returns a configuration with every default filled in;
// callers add Servers and Token.
func DefaultConfig() Config {
	return Config{
		DataDir:       DefaultDataDir,
		Name:          DefaultName(),
		Root:          "/",
		ProbeInterval: time.Minute,
		GossipAddr:    DefaultGossipAddr,
		PeerAddr:      DefaultPeerAddr,
		CacheBudget:   DefaultCacheBudget,
		ServeAddr:     DefaultServeAddr,
		// Enough for a manifest of about a hundred thousand chunks.
		MaxManifestBytes: fetch.DefaultMaxManifestBytes,
	}
}

// DefaultTelemetryWindow and DefaultTelemetrySpoolBytes are the
// telemetry window's length and the spool's size unless told otherwise.
const (
	DefaultTelemetryWindow     = time.Minute
	DefaultTelemetrySpoolBytes = 64 << 20
)

// DefaultServeAddr is where the inference endpoint listens unless told
// otherwise: loopback, since it answers anyone who reaches it; serve
// other machines with --serve-addr 0.0.0.0:7950.
const DefaultServeAddr = "127.0.0.1:7950"

// DefaultCacheBudget is the chunk cache's default bound: room for a few
// versions of a large model beside the current and previous ones, which
// are kept whatever the budget.
const DefaultCacheBudget = 50 << 30

// DefaultName returns this machine's hostname made into a node name:
// lowercased, with characters a node name cannot hold replaced by '-'. It
// returns "" if the hostname cannot be read.
func DefaultName() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return names.FromHostname(h)
}

// Name and label rules are the control plane's (internal/names), checked
// here too so that a mistake is reported before anything is sent, naming
// the flag.
const nameRule = names.Rule

// Validate reports every problem with c at once, each naming the
// command-line flag that sets the field. The errors wrap ErrInvalidConfig.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...)))
	}
	for _, s := range c.Servers {
		if err := checkServerAddr(s); err != nil {
			bad("--server %q: %v", s, err)
		}
	}
	if c.Token != "" {
		if _, err := jointoken.Parse(c.Token); err != nil {
			bad("--token (or DROVER_TOKEN): %v", err)
		}
	}
	if c.DataDir == "" {
		bad("--data-dir is empty: the agent needs a directory for its identity, such as %s", DefaultDataDir)
	}
	if c.Root == "" {
		bad(`--root is empty: use "/" for this machine`)
	}
	switch {
	case c.Name == "":
		bad("--name is empty and the hostname could not be read: name this node with --name")
	case !names.IsName(c.Name):
		bad("--name %q: %s, such as \"gpu-01\"", c.Name, nameRule)
	}
	if c.Site != "" && !names.IsName(c.Site) {
		bad("--site %q: %s, such as \"eu-west-1\"", c.Site, nameRule)
	}
	for _, k := range slices.Sorted(maps.Keys(c.Labels)) {
		if err := checkLabel(k, c.Labels[k]); err != nil {
			bad("--label %s=%s: %v", k, c.Labels[k], err)
		}
	}
	if c.HealthInterval < 0 || (c.HealthInterval > 0 && c.HealthInterval < 10*time.Millisecond) {
		bad("health interval %s is shorter than 10ms; leave it 0 for the 5 s default", c.HealthInterval)
	}
	if c.ProbeInterval < time.Second {
		bad("probe interval %s is shorter than a second", c.ProbeInterval)
	}
	if c.PullBandwidth < 0 {
		bad("--pull-bandwidth %d is negative: give a rate such as 10MiB or 80Mbit, or 0 for no cap", c.PullBandwidth)
	}
	if c.MaxManifestBytes != 0 && c.MaxManifestBytes < 1024 {
		bad("--max-manifest-size %d is under 1KiB: no manifest fits; the default is %d", c.MaxManifestBytes, fetch.DefaultMaxManifestBytes)
	}
	if c.GossipAddr != "" {
		if ip, _, err := splitIPPort(c.GossipAddr); err != nil {
			bad(`--gossip-addr %q: %v; or "off" for no site gossip pool`, c.GossipAddr, err)
		} else if ip.Is6() && ip.IsUnspecified() && c.GossipAdvertise == "" {
			bad("--gossip-addr %q listens on every IPv6 address: name the address the site's other agents dial with --gossip-advertise IP:PORT", c.GossipAddr)
		}
	}
	if c.GossipAdvertise != "" {
		ip, port, err := splitIPPort(c.GossipAdvertise)
		switch {
		case c.GossipAddr == "":
			bad("--gossip-advertise %q is set but the site gossip pool is off (--gossip-addr off)", c.GossipAdvertise)
		case err != nil:
			bad("--gossip-advertise %q: %v", c.GossipAdvertise, err)
		case ip.IsUnspecified() || port == 0:
			bad("--gossip-advertise %q: want the IP:PORT the site's other agents dial, not an unspecified address or port 0", c.GossipAdvertise)
		}
	}
	if c.PeerAddr != "" {
		if _, _, err := splitIPPort(c.PeerAddr); err != nil {
			bad(`--peer-addr %q: %v; or "off" to serve no chunks to site peers`, c.PeerAddr, err)
		} else if c.PeerAddr == c.GossipAddr && c.GossipAddr != "" && !strings.HasSuffix(c.PeerAddr, ":0") {
			// QUIC and memberlist would share one UDP port.
			bad("--peer-addr %q is the gossip pool's address: choose another port", c.PeerAddr)
		}
	}
	if c.PeerUploadBytesPerSecond < 0 {
		bad("--peer-upload-bandwidth %d is negative: use 0 for no cap", c.PeerUploadBytesPerSecond)
	}
	if c.TelemetryWindow < 0 || (c.TelemetryWindow > 0 && c.TelemetryNow == nil && c.TelemetryWindow < time.Second) || c.TelemetryWindow > 24*time.Hour {
		bad("--telemetry-window %s: want a length from 1s to 24h, such as 1m (the default)", c.TelemetryWindow)
	}
	if c.TelemetrySpoolBytes < 0 || (c.TelemetrySpoolBytes > 0 && c.TelemetrySpoolBytes < 64<<10) {
		bad("--telemetry-spool-size %d: want at least 64KiB, such as 64MiB (the default)", c.TelemetrySpoolBytes)
	}
	if c.ServeAddr != "" {
		if _, _, err := splitIPPort(c.ServeAddr); err != nil {
			bad(`--serve-addr %q: %v; or "off" to run deployments without the node's inference endpoint`, c.ServeAddr, err)
		}
	}
	return errors.Join(errs...)
}

// checkServerAddr checks one HOST:PORT.
func checkServerAddr(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want HOST:PORT, such as 10.0.0.5:7400")
	}
	if host == "" {
		return fmt.Errorf("no host: want HOST:PORT, such as 10.0.0.5:7400")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return nil
}

// checkLabel checks one label as the control plane does: a key is a name
// with an optional DNS prefix ("drover.dev/zone"), a value empty or a name.
func checkLabel(key, value string) error {
	if !names.IsLabelKey(key) {
		return fmt.Errorf("key: use 1-63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit, optionally after a lowercase DNS prefix and '/', such as \"gpu\" or \"drover.dev/zone\"")
	}
	if !names.IsLabelValue(value) {
		return fmt.Errorf("value: use an empty value or 1-63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit, such as \"a100\"")
	}
	return nil
}
