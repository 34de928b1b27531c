package server

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/controlplane/telemetry"
	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// telemetryDirName is the telemetry store's folder in the data dir: its own
// Pebble instance, apart from the Raft log's, since telemetry never goes
// through Raft.
const telemetryDirName = "telemetry"

// Bounds of what agents ship.
const (
	// maxShipWindows bounds the windows of one ShipTelemetry call; an
	// agent with a longer backlog sends it in several.
	maxShipWindows = 1000
	// maxShipWindowBytes bounds one encoded window. A window of a model
	// with many features stays far below it.
	maxShipWindowBytes = 1 << 20
	// maxWindowFuture is how far past the server's clock a window may end:
	// clock skew, not windows from the future.
	maxWindowFuture = 5 * time.Minute
	// telemetryPeerTimeout bounds one call to a peer (a copy, a part of a
	// query).
	telemetryPeerTimeout = 10 * time.Second
)

// setupTelemetry opens the telemetry store and starts its retention loop.
func (s *Server) setupTelemetry() error {
	opts := telemetry.DefaultOptions()
	opts.Retention = time.Duration(s.cfg.TelemetryRetention)
	opts.MaxBytes = s.cfg.TelemetryMaxBytes
	opts.Logger = s.logger
	st, err := telemetry.Open(filepath.Join(s.cfg.DataDir, telemetryDirName), opts)
	if err != nil {
		return fmt.Errorf("open telemetry store: %w", err)
	}
	s.telemetry = st
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		st.RetentionLoop(s.ctx, telemetry.DefaultRetentionInterval)
	}()
	return nil
}

// telemetryHandler takes agents' windows and answers queries over them.
type telemetryHandler struct{ s *Server }

var _ droverv1connect.TelemetryServiceHandler = (*telemetryHandler)(nil)

// ShipTelemetry checks each window alone, stores those that pass with what
// the cluster knows of the node now, and copies them to one more server
// before it answers: an acknowledged window is on two servers' disks
// whenever the cluster has two live servers.
func (h *telemetryHandler) ShipTelemetry(ctx context.Context, req *connect.Request[droverv1.ShipTelemetryRequest]) (*connect.Response[droverv1.ShipTelemetryResponse], error) {
	s := h.s
	caller := agentNodeFrom(ctx)
	if caller == nil {
		return nil, apiErr(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING,
			"this call needs the node's client certificate", "enroll the agent with a join token")
	}
	if n := len(req.Msg.GetWindows()); n > maxShipWindows {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			fmt.Sprintf("%d windows in one call, more than %d", n, maxShipWindows),
			fmt.Sprintf("ship at most %d windows per call", maxShipWindows))
	}
	node, err := s.state.Node(caller.GetId())
	if err != nil {
		return nil, apiErr(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID,
			fmt.Sprintf("node %q is not known to the cluster", caller.GetId()), "enroll the agent again with a join token")
	}
	var gpu string
	if gs := node.GetInventory().GetGpus(); len(gs) > 0 {
		gpu = gs[0].GetName()
	}
	now := time.Now()
	resp := &droverv1.ShipTelemetryResponse{}
	var keep []*droverv1.StoredWindow
	for i, b := range req.Msg.GetWindows() {
		if reason := h.checkWindow(b, node.GetId(), now); reason != "" {
			resp.Refused = append(resp.Refused, &droverv1.WindowRefusal{Index: uint32(i), Reason: reason})
			continue
		}
		keep = append(keep, &droverv1.StoredWindow{Window: b, Site: node.GetSite(), Labels: node.GetLabels(), GpuModel: gpu})
	}
	s.metrics.telemetryWindows.WithLabelValues("refused").Add(float64(len(resp.Refused)))
	if len(keep) == 0 {
		return connect.NewResponse(resp), nil
	}
	holders, err := s.copyWindows(ctx, node.GetId(), keep)
	if err != nil {
		s.metrics.telemetryWindows.WithLabelValues("unavailable").Add(float64(len(keep)))
		return nil, err
	}
	for _, w := range keep {
		w.Holders = holders
	}
	if err := s.telemetry.Put(keep); err != nil {
		s.metrics.telemetryWindows.WithLabelValues("unavailable").Add(float64(len(keep)))
		return nil, apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED,
			fmt.Sprintf("store telemetry windows: %v", err), "the agent keeps its windows and ships them again")
	}
	s.metrics.telemetryWindows.WithLabelValues("stored").Add(float64(len(keep)))
	resp.Stored = uint32(len(keep))
	return connect.NewResponse(resp), nil
}

// checkWindow says why a shipped window is refused, or "" to store it.
func (h *telemetryHandler) checkWindow(b []byte, nodeID string, now time.Time) string {
	if len(b) > maxShipWindowBytes {
		return fmt.Sprintf("window is %d bytes, more than %d: ship fewer features or shorter windows", len(b), maxShipWindowBytes)
	}
	w, err := sketch.UnmarshalWindow(b)
	if err != nil {
		return err.Error()
	}
	if w.NodeId != nodeID {
		return fmt.Sprintf("window names node %q but comes from node %q: a node ships its own windows only", w.NodeId, nodeID)
	}
	end := w.End.AsTime()
	if end.After(now.Add(maxWindowFuture)) {
		return fmt.Sprintf("window ends at %v, more than %v after the server's clock (%v): check the node's clock", end.UTC(), maxWindowFuture, now.UTC())
	}
	if !h.s.telemetry.Retained(end) {
		return fmt.Sprintf("window ended at %v, longer ago than the telemetry retention (%v)", end.UTC(), h.s.telemetry.Retention())
	}
	if _, err := telemetry.Key(w); err != nil {
		return err.Error()
	}
	return ""
}

// copyWindows copies ws to one other live server, the first of them in
// rendezvous order of the node's id that takes them, and returns the
// holders: this server, then the peer. With no live peer there is nothing
// to copy to and the holders are this server alone; with peers none of
// which took the copy it fails with Unavailable, so that the agent keeps
// the windows rather than trust one disk with them.
func (s *Server) copyWindows(ctx context.Context, nodeID string, ws []*droverv1.StoredWindow) ([]string, error) {
	peers := rendezvous(nodeID, s.fillPeers())
	if len(peers) == 0 {
		return []string{s.cfg.Name}, nil
	}
	var errs []error
	for _, p := range peers {
		holders := []string{s.cfg.Name, p.name}
		copies := make([]*droverv1.StoredWindow, len(ws))
		for i, w := range ws {
			copies[i] = &droverv1.StoredWindow{Window: w.Window, Site: w.Site, Labels: w.Labels, GpuModel: w.GpuModel, Holders: holders}
		}
		cctx, cancel := context.WithTimeout(ctx, telemetryPeerTimeout)
		_, err := s.telemetryClient(p.apiAddr).ReplicateWindows(cctx, connect.NewRequest(&droverv1.ReplicateWindowsRequest{Windows: copies}))
		cancel()
		if err == nil {
			return holders, nil
		}
		s.metrics.telemetryCopyFailures.Inc()
		s.logger.Warn("copy telemetry windows to peer", "peer", p.name, "err", err)
		errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
	}
	return nil, apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED,
		fmt.Sprintf("no other server took a copy of the windows: %v", errors.Join(errs...)),
		"the agent keeps its windows and ships them again; check \"drover status\"")
}

// rendezvous orders peers by highest random weight of (peer, node): each
// node's copies go to the same peer while it lives, and to an even spread
// of the others when it does not.
func rendezvous(nodeID string, peers []voter) []voter {
	weight := func(p voter) uint64 {
		h := fnv.New64a()
		_, _ = h.Write([]byte(p.name))
		_, _ = h.Write([]byte{0})
		_, _ = h.Write([]byte(nodeID))
		return h.Sum64()
	}
	slices.SortFunc(peers, func(a, b voter) int {
		wa, wb := weight(a), weight(b)
		switch {
		case wa > wb:
			return -1
		case wa < wb:
			return 1
		}
		return 0
	})
	return peers
}

// telemetryClient is a TelemetryService client to another server,
// authenticated by this server's certificate.
func (s *Server) telemetryClient(apiAddr string) droverv1connect.TelemetryServiceClient {
	return droverv1connect.NewTelemetryServiceClient(&http.Client{Transport: s.forwarder.transport}, "https://"+apiAddr)
}

// ReplicateWindows stores a peer's copy. The windows are checked again:
// a peer's certificate vouches for the peer, not for what an agent sent it.
func (h *telemetryHandler) ReplicateWindows(_ context.Context, req *connect.Request[droverv1.ReplicateWindowsRequest]) (*connect.Response[droverv1.ReplicateWindowsResponse], error) {
	ws := req.Msg.GetWindows()
	if len(ws) > maxShipWindows {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			fmt.Sprintf("%d windows in one copy, more than %d", len(ws), maxShipWindows), "")
	}
	for i, w := range ws {
		if len(w.GetWindow()) > maxShipWindowBytes {
			return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
				fmt.Sprintf("window %d is %d bytes, more than %d", i, len(w.GetWindow()), maxShipWindowBytes), "")
		}
		if _, err := sketch.UnmarshalWindow(w.GetWindow()); err != nil {
			return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
				fmt.Sprintf("window %d: %v", i, err), "")
		}
	}
	if err := h.s.telemetry.Put(ws); err != nil {
		return nil, apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED,
			fmt.Sprintf("store telemetry copy: %v", err), "")
	}
	return connect.NewResponse(&droverv1.ReplicateWindowsResponse{}), nil
}

// QueryLocal answers this server's part of a query: the windows it is the
// first answering holder of.
func (h *telemetryHandler) QueryLocal(_ context.Context, req *connect.Request[droverv1.QueryLocalTelemetryRequest]) (*connect.Response[droverv1.QueryTelemetryResponse], error) {
	groups, err := h.s.queryLocal(req.Msg.GetQuery(), req.Msg.GetAnswering())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&droverv1.QueryTelemetryResponse{Groups: groups, Answered: []string{h.s.cfg.Name}}), nil
}

func (s *Server) queryLocal(q *droverv1.QueryTelemetryRequest, answering []string) ([]*droverv1.TelemetryGroup, error) {
	q, err := telemetry.Normalize(q, time.Now())
	if err != nil {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, err.Error(), "")
	}
	groups, err := s.telemetry.Query(q, s.cfg.Name, answering)
	if err != nil {
		return nil, apiErr(connect.CodeInternal, droverv1.ErrorReason_ERROR_REASON_INTERNAL, fmt.Sprintf("query telemetry: %v", err), "")
	}
	return groups, nil
}

// Query asks every live server for its part and merges the parts. A server
// that fails is left out and the others asked again without it, so that
// the windows it would have counted are counted by their other holder;
// it is listed in missing.
func (h *telemetryHandler) Query(ctx context.Context, req *connect.Request[droverv1.QueryTelemetryRequest]) (*connect.Response[droverv1.QueryTelemetryResponse], error) {
	resp, err := h.s.queryFleet(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
}

func (s *Server) queryFleet(ctx context.Context, q *droverv1.QueryTelemetryRequest) (*droverv1.QueryTelemetryResponse, error) {
	q, err := telemetry.Normalize(q, time.Now())
	if err != nil {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, err.Error(),
			"group by one of site, label:KEY, gpu, version, deployment, node; since before until")
	}
	servers := map[string]string{} // name → API address
	for _, m := range s.gossipServers() {
		if m.Status == memberAlive && (m.APIAddr != "" || m.Name == s.cfg.Name) {
			servers[m.Name] = m.APIAddr
		}
	}
	var missing []*droverv1.ServerMiss
	for attempt := 0; ; attempt++ {
		answering := make([]string, 0, len(servers))
		for n := range servers {
			answering = append(answering, n)
		}
		slices.Sort(answering)
		parts, failed := s.askAll(ctx, q, servers, answering)
		if len(failed) == 0 || attempt == 1 {
			m := telemetry.NewMerger(q)
			var answered []string
			for _, n := range answering {
				if p, ok := parts[n]; ok {
					if err := m.Add(p); err != nil {
						return nil, apiErr(connect.CodeInternal, droverv1.ErrorReason_ERROR_REASON_INTERNAL, fmt.Sprintf("merge telemetry: %v", err), "")
					}
					answered = append(answered, n)
				}
			}
			for _, n := range slices.Sorted(maps.Keys(failed)) {
				missing = append(missing, &droverv1.ServerMiss{ServerId: n, Reason: failed[n]})
			}
			return &droverv1.QueryTelemetryResponse{Groups: m.Groups(), Answered: answered, Missing: missing}, nil
		}
		for _, n := range slices.Sorted(maps.Keys(failed)) {
			missing = append(missing, &droverv1.ServerMiss{ServerId: n, Reason: failed[n]})
			delete(servers, n)
		}
	}
}

// askAll asks every server in answering for its part, at once.
func (s *Server) askAll(ctx context.Context, q *droverv1.QueryTelemetryRequest, addrs map[string]string, answering []string) (map[string][]*droverv1.TelemetryGroup, map[string]string) {
	var (
		mu     sync.Mutex
		parts  = map[string][]*droverv1.TelemetryGroup{}
		failed = map[string]string{}
		wg     sync.WaitGroup
	)
	for _, n := range answering {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var gs []*droverv1.TelemetryGroup
			var err error
			if n == s.cfg.Name {
				gs, err = s.queryLocal(q, answering)
			} else {
				cctx, cancel := context.WithTimeout(ctx, telemetryPeerTimeout)
				var r *connect.Response[droverv1.QueryTelemetryResponse]
				r, err = s.telemetryClient(addrs[n]).QueryLocal(cctx, connect.NewRequest(&droverv1.QueryLocalTelemetryRequest{Query: q, Answering: answering}))
				cancel()
				if err == nil {
					gs = r.Msg.GetGroups()
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed[n] = err.Error()
				return
			}
			parts[n] = gs
		}()
	}
	wg.Wait()
	return parts, failed
}
