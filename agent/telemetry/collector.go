package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Exchange is one request the inference endpoint passed to an instance,
// with its answer, as the collector sees it. The endpoint fills one taken
// from Collector.Get and hands it over with Collector.Submit; from then on
// it belongs to the collector.
type Exchange struct {
	Deployment, Model string
	Version           uint64
	// At is when the request arrived (Get sets it): the window it counts
	// in, unless that window has closed meanwhile, then the next.
	At time.Time
	// Latency is from the request reaching the endpoint until its answer
	// was written.
	Latency time.Duration
	// Status is the HTTP status the client got.
	Status int
	// ErrKind names a failure the status alone does not tell (the
	// instance timed out or refused the connection); empty otherwise.
	ErrKind string
	// Request and Response are the bodies' first CaptureBytes bytes;
	// RequestCut and ResponseCut say there was more.
	Request, Response       []byte
	RequestCut, ResponseCut bool
}

// Error kinds the endpoint reports beside the HTTP status classes.
const (
	ErrKindTimeout         = "timeout"
	ErrKindUpstreamRefused = "upstream_refused"
	ErrKindUpstream        = "upstream_error"
	ErrKindClientClosed    = "client_closed"
)

// CaptureRequest appends b to the captured request body, up to limit.
func (e *Exchange) CaptureRequest(b []byte, limit int) {
	e.Request, e.RequestCut = capture(e.Request, e.RequestCut, b, limit)
}

// CaptureResponse appends b to the captured response body, up to limit.
func (e *Exchange) CaptureResponse(b []byte, limit int) {
	e.Response, e.ResponseCut = capture(e.Response, e.ResponseCut, b, limit)
}

func capture(dst []byte, cut bool, b []byte, limit int) ([]byte, bool) {
	room := limit - len(dst)
	if room <= 0 {
		return dst, cut || len(b) > 0
	}
	if len(b) > room {
		return append(dst, b[:room]...), true
	}
	return append(dst, b...), cut
}

func (e *Exchange) reset() {
	req, resp := e.Request[:0], e.Response[:0]
	*e = Exchange{Request: req, Response: resp}
}

// CollectorConfig configures a Collector; DefaultCollectorConfig fills it.
type CollectorConfig struct {
	// NodeID labels every window. Required.
	NodeID string
	// Spool receives closed windows. Required.
	Spool *Spool
	// Window is the length of a window; windows start at multiples of
	// it (Unix time), so every node's windows line up.
	Window time.Duration
	// CaptureBytes bounds the body bytes kept per request and per
	// answer; a body cut short is not parsed for features.
	CaptureBytes int
	// Queue is how many exchanges wait for the collector; past it the
	// endpoint drops observations (counted) rather than wait.
	Queue int
	// MaxElements bounds the elements of one array observed as
	// name[0]…name[MaxElements-1]; later ones are ignored.
	MaxElements int
	// MaxFeatures bounds the distinct inputs, and separately outputs, one
	// stream's window tracks; further names are ignored.
	MaxFeatures int
	// Now is the time windows are cut on; nil means time.Now. Scenarios
	// replace it to run long stretches of windows quickly.
	Now func() time.Time
	// Tick is how often the collector looks for windows that ended; zero
	// means a quarter of Window, at most a second.
	Tick time.Duration
	// Notify, if set, is called (without blocking) after windows were
	// spooled, so a shipper can send them at once.
	Notify func()
	Logger *slog.Logger
}

// DefaultCollectorConfig returns the defaults: one-minute windows, 64 KiB
// of body per request, a queue of 4,096 exchanges.
func DefaultCollectorConfig() CollectorConfig {
	return CollectorConfig{
		Window:       time.Minute,
		CaptureBytes: 64 << 10,
		Queue:        4096,
		MaxElements:  64,
		MaxFeatures:  256,
	}
}

// Validate checks the configuration.
func (c *CollectorConfig) Validate() error {
	switch {
	case c.NodeID == "":
		return errors.New("telemetry collector: no node id")
	case c.Spool == nil:
		return errors.New("telemetry collector: no spool")
	case c.Window <= 0:
		return fmt.Errorf("telemetry collector: window %v: want a positive length such as 1m", c.Window)
	case c.CaptureBytes < 0:
		return fmt.Errorf("telemetry collector: capture %d bytes: want 0 or more", c.CaptureBytes)
	case c.Queue <= 0:
		return fmt.Errorf("telemetry collector: queue of %d: want at least 1", c.Queue)
	case c.MaxElements < 0 || c.MaxFeatures <= 0 || c.MaxFeatures > sketch.MaxFeatures:
		return fmt.Errorf("telemetry collector: %d elements, %d features: want 0 or more elements and 1..%d features",
			c.MaxElements, c.MaxFeatures, sketch.MaxFeatures)
	}
	return nil
}

// CollectorStats counts what the collector saw and gave up.
type CollectorStats struct {
	// Observed is exchanges taken into a window.
	Observed uint64
	// Dropped is exchanges the endpoint could not queue: the collector
	// was behind. They are in no window.
	Dropped uint64
	// Unparsed is exchanges whose body was cut short or not JSON of the
	// expected form: counted, with latency and errors, but no features.
	Unparsed uint64
	// SpoolErrors is windows the spool would not take (a full or failing
	// disk); they are lost, and counted here.
	SpoolErrors uint64
}

// Collector turns the endpoint's exchanges into per-instance windows. The
// endpoint's side (Get, Submit) never blocks and is safe for concurrent
// use; parsing and sketching happen on the collector's own goroutine,
// which Run owns.
type Collector struct {
	cfg   CollectorConfig
	log   *slog.Logger
	queue chan *Exchange
	pool  sync.Pool

	dropped, observed, unparsed, spoolErrs atomic.Uint64

	// Fields below are the Run goroutine's alone.
	streams map[streamKey]*stream
	// closed is, per stream, the end of its last closed window: a
	// request stamped before it counts in the next window, so no window
	// is sent twice.
	closed map[streamKey]time.Time
}

type streamKey struct {
	deployment, model string
	version           uint64
}

// NewCollector checks cfg and returns a collector; call Run to start it.
func NewCollector(cfg CollectorConfig) (*Collector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Tick <= 0 {
		cfg.Tick = min(cfg.Window/4, time.Second)
	}
	c := &Collector{cfg: cfg, log: cfg.Logger, queue: make(chan *Exchange, cfg.Queue), streams: map[streamKey]*stream{}, closed: map[streamKey]time.Time{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.pool.New = func() any { return new(Exchange) }
	return c, nil
}

// CaptureBytes is how much of each body the endpoint should keep.
func (c *Collector) CaptureBytes() int { return c.cfg.CaptureBytes }

// Get returns an empty exchange to fill, stamped with the time.
func (c *Collector) Get() *Exchange {
	e := c.pool.Get().(*Exchange)
	e.At = c.cfg.Now()
	return e
}

// Submit hands e to the collector without waiting: when the queue is full
// the observation is dropped and counted.
func (c *Collector) Submit(e *Exchange) {
	select {
	case c.queue <- e:
	default:
		c.dropped.Add(1)
		c.put(e)
	}
}

func (c *Collector) put(e *Exchange) {
	e.reset()
	c.pool.Put(e)
}

// Stats returns the counters.
func (c *Collector) Stats() CollectorStats {
	return CollectorStats{Observed: c.observed.Load(), Dropped: c.dropped.Load(),
		Unparsed: c.unparsed.Load(), SpoolErrors: c.spoolErrs.Load()}
}

// Run collects until ctx ends, then spools every window still open
// (a window cut short by a stop is shipped as it is, not lost).
func (c *Collector) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case e := <-c.queue:
			c.observe(e)
		case <-t.C:
			c.closeEnded(c.cfg.Now(), false)
		case <-ctx.Done():
			for {
				select {
				case e := <-c.queue:
					c.observe(e)
					continue
				default:
				}
				break
			}
			c.closeEnded(c.cfg.Now(), true)
			return
		}
	}
}

// observe adds e to its stream's open window, closing that window first
// when e falls past its end.
func (c *Collector) observe(e *Exchange) {
	defer c.put(e)
	key := streamKey{e.Deployment, e.Model, e.Version}
	st := c.streams[key]
	start := e.At.Truncate(c.cfg.Window)
	if end, ok := c.closed[key]; ok && start.Before(end) {
		start = end
	}
	switch {
	case st != nil && start.Before(st.start):
		start = st.start // arrived before the open window: late, counts in it
	case st != nil && !start.Before(st.end):
		c.spool(st)
		c.closed[key] = st.end
		st = nil
	}
	if st == nil {
		st = c.newStream(key, start)
		c.streams[key] = st
	}
	c.observed.Add(1)
	st.add(e, c)
}

// closeEnded spools every window that ended by now (all of them when
// all is set).
func (c *Collector) closeEnded(now time.Time, all bool) {
	for key, st := range c.streams {
		if all || !now.Before(st.end) {
			c.spool(st)
			c.closed[key] = st.end
			delete(c.streams, key)
		}
	}
	// A stream quiet for a long while needs no memory of its last
	// window: a request now is far past it.
	for key, end := range c.closed {
		if _, open := c.streams[key]; !open && now.Sub(end) > 2*c.cfg.Window+time.Hour {
			delete(c.closed, key)
		}
	}
}

func (c *Collector) newStream(key streamKey, start time.Time) *stream {
	return &stream{
		key: key, start: start, end: start.Add(c.cfg.Window),
		prof: sketch.NewProfile(nil),
		in:   features{byName: map[string]*feature{}},
		out:  features{byName: map[string]*feature{}},
	}
}

// spool encodes st's window and adds it to the spool.
func (c *Collector) spool(st *stream) {
	w := &sketch.Window{
		NodeID: c.cfg.NodeID, Deployment: st.key.deployment, Model: st.key.model,
		Version: strconv.FormatUint(st.key.version, 10),
		Start:   st.start, End: st.end, Profile: st.profile(),
	}
	b, err := w.Encode()
	if err == nil {
		err = c.cfg.Spool.Add(Record{Key: RecordKey(w), Start: w.Start, End: w.End, Windows: 1, Data: b})
	}
	if err != nil {
		c.spoolErrs.Add(1)
		c.log.Warn("a telemetry window was lost: the spool did not take it", "deployment", st.key.deployment,
			"version", st.key.version, "start", st.start, "err", err)
	}
	if c.cfg.Notify != nil {
		c.cfg.Notify()
	}
}

// RecordKey is the spool key of a window: windows of one key may merge.
func RecordKey(w *sketch.Window) string {
	return w.Deployment + "\x00" + w.Model + "\x00" + w.Version
}

// NodeRecordKey is the spool key of the node's own metrics windows.
const NodeRecordKey = "\x00node"

// MergeWindows is the spool's MergeFunc for encoded sketch windows: the
// profiles merge (counts exactly), or for the node's own windows its
// metrics, and the result spans both.
func MergeWindows(a, b Record) (Record, error) {
	if a.Key == NodeRecordKey {
		return mergeNodeWindows(a, b)
	}
	wa, err := sketch.DecodeWindow(a.Data)
	if err != nil {
		return Record{}, fmt.Errorf("merge windows: %w", err)
	}
	pb, err := sketch.UnmarshalWindow(b.Data)
	if err != nil {
		return Record{}, fmt.Errorf("merge windows: %w", err)
	}
	if err := wa.Profile.MergeProto(pb.Profile); err != nil {
		return Record{}, fmt.Errorf("merge windows: %w", err)
	}
	wa.Start = minTime(a.Start, b.Start)
	wa.End = maxTime(a.End, b.End)
	data, err := wa.Encode()
	if err != nil {
		return Record{}, err
	}
	return Record{Key: a.Key, Start: wa.Start, End: wa.End, Windows: a.Windows + b.Windows, Data: data}, nil
}

func mergeNodeWindows(a, b Record) (Record, error) {
	m := sketch.NewNodeMetrics()
	var node string
	for _, r := range []Record{a, b} {
		pb, err := sketch.UnmarshalWindow(r.Data)
		if err != nil {
			return Record{}, fmt.Errorf("merge node windows: %w", err)
		}
		if err := m.MergeProto(pb.GetNode()); err != nil {
			return Record{}, fmt.Errorf("merge node windows: %w", err)
		}
		node = pb.GetNodeId()
	}
	start, end := minTime(a.Start, b.Start), maxTime(a.End, b.End)
	data, err := EncodeNodeWindow(node, start, end, m.ToProto())
	if err != nil {
		return Record{}, err
	}
	return Record{Key: a.Key, Start: start, End: end, Windows: a.Windows + b.Windows, Data: data}, nil
}

// EncodeNodeWindow encodes the node's own metrics window.
func EncodeNodeWindow(node string, start, end time.Time, m *droverv1.NodeMetrics) ([]byte, error) {
	b, err := proto.Marshal(&droverv1.TelemetryWindow{NodeId: node, Start: timestamppb.New(start), End: timestamppb.New(end), Node: m})
	if err != nil {
		return nil, fmt.Errorf("encode node window: %w", err)
	}
	return b, nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// stream is one instance's open window.
type stream struct {
	key        streamKey
	start, end time.Time
	prof       *sketch.Profile // requests, errors, latency
	in, out    features
}

// features are one side's feature profiles, found by name. reqs counts
// the requests that carried the feature, which makes the missing count
// exact even for a feature first seen late in the window.
type features struct {
	byName map[string]*feature
	// elems caches the names of arrays' elements, "x[0]", "x[1]"…, so
	// that a request does not build them again.
	elems  map[string][]string
	argmax map[string]string
}

// elemName returns "name[i]".
func (fs *features) elemName(name string, i, max int) string {
	ns, ok := fs.elems[name]
	if !ok && len(fs.elems) >= max {
		return name + "[" + strconv.Itoa(i) + "]"
	}
	if len(ns) > i {
		return ns[i]
	}
	for len(ns) <= i {
		ns = append(ns, name+"["+strconv.Itoa(len(ns))+"]")
	}
	if fs.elems == nil {
		fs.elems = map[string][]string{}
	}
	fs.elems[strings.Clone(name)] = ns
	return ns[i]
}

// argmaxName returns "name.argmax".
func (fs *features) argmaxName(name string, max int) string {
	if n, ok := fs.argmax[name]; ok {
		return n
	}
	n := name + ".argmax"
	if len(fs.argmax) < max {
		if fs.argmax == nil {
			fs.argmax = map[string]string{}
		}
		fs.argmax[strings.Clone(name)] = n
	}
	return n
}

type feature struct {
	fp      *sketch.FeatureProfile
	lastReq uint64
	reqs    uint64
}

// observe adds v to the feature name, creating it (its kind from v) when
// there is room.
func (fs *features) observe(name string, v sketch.Value, kind sketch.Kind, req uint64, max int) {
	f := fs.byName[name]
	if f == nil {
		if len(fs.byName) >= max || name == "" || len(name) > sketch.MaxNameBytes {
			return
		}
		// name may alias a body buffer that is reused: copied to keep.
		name = strings.Clone(name)
		f = &feature{fp: sketch.NewFeatureProfile(sketch.Field{Name: name, Kind: kind})}
		fs.byName[name] = f
	}
	if f.lastReq != req {
		f.lastReq = req
		f.reqs++
	}
	f.fp.Observe(v)
}

func (fs *features) profiles(requests uint64) []*sketch.FeatureProfile {
	out := make([]*sketch.FeatureProfile, 0, len(fs.byName))
	for _, f := range fs.byName {
		f.fp.Missing += requests - f.reqs
		out = append(out, f.fp)
	}
	slices.SortFunc(out, func(a, b *sketch.FeatureProfile) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (st *stream) profile() *sketch.Profile {
	p := st.prof
	p.Inputs = st.in.profiles(p.Requests)
	p.Outputs = st.out.profiles(p.Requests)
	return p
}

// add records one exchange.
func (st *stream) add(e *Exchange, c *Collector) {
	p := st.prof
	p.Requests++
	req := p.Requests
	_ = p.Latency.Add(e.Latency.Seconds())
	if kind := errKind(e); kind != "" {
		p.AddError(kind)
	}
	ok := true
	if !e.RequestCut && len(e.Request) > 0 {
		ok = st.parse(e.Request, &st.in, req, false, c) && ok
	} else {
		ok = false
	}
	if e.Status >= 200 && e.Status < 300 {
		if !e.ResponseCut && len(e.Response) > 0 {
			ok = st.parse(e.Response, &st.out, req, true, c) && ok
		} else {
			ok = false
		}
	}
	if !ok {
		c.unparsed.Add(1)
	}
}

// errKind is the failure kind of an exchange: the endpoint's, else the
// HTTP status class.
func errKind(e *Exchange) string {
	switch {
	case e.ErrKind != "":
		return e.ErrKind
	case e.Status >= 500:
		return "http_5xx"
	case e.Status >= 400:
		return "http_4xx"
	}
	return ""
}

// parse reads body as {"inputs": {"NAME": value, ...}, ...} (or
// "outputs") and observes each value. It reports whether the body had
// that form.
func (st *stream) parse(body []byte, fs *features, req uint64, outputs bool, c *Collector) bool {
	field := "inputs"
	if outputs {
		field = "outputs"
	}
	return scanBody(body, field, fs, req, outputs, c.cfg.MaxElements, c.cfg.MaxFeatures)
}
