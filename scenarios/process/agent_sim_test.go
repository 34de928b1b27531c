package process_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/droverhq/drover/internal/jointoken"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/process"
)

// This file simulates drover-agent for the agent benchmarks: the same
// transports, TLS pinning and calls as agent/enroll.go, agent/rpc.go and
// agent/session.go, many agents in one process.

// Transport settings of the real agent (agent/rpc.go).
const (
	simDialTimeout = 5 * time.Second
	simIdleTimeout = time.Minute
	simRPCTimeout  = 15 * time.Second
	simMaxMessage  = 4 << 20
)

// simTransport is an HTTP/3 transport configured like the agent's: its own
// UDP socket, so one simulated agent is one QUIC connection from its own
// port, as a machine of a fleet would be.
func simTransport(conf *tls.Config) *http3.Transport {
	return &http3.Transport{
		TLSClientConfig: conf,
		QUICConfig: &quic.Config{
			HandshakeIdleTimeout: simDialTimeout,
			MaxIdleTimeout:       simIdleTimeout,
		},
	}
}

// simClient is an AgentService client like the agent's; opts are added
// to its options.
func simClient(tr *http3.Transport, addr string, opts ...connect.ClientOption) droverv1connect.AgentServiceClient {
	return droverv1connect.NewAgentServiceClient(&http.Client{Transport: tr}, "https://"+addr,
		append([]connect.ClientOption{connect.WithReadMaxBytes(simMaxMessage)}, opts...)...)
}

// simPinnedTLS trusts only the cluster CA and only server certificates,
// like the agent's pinnedTLS; cert, if not nil, is the node's certificate.
func simPinnedTLS(ca *x509.Certificate, cert *tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	conf := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		RootCAs:          pool,
		ServerName:       pki.PeerServerName,
		VerifyConnection: pki.RequireRole(pki.RoleServer),
	}
	if cert != nil {
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return conf
}

// simKey is a node key and its CSR, made before an enrollment is timed
// (the real agent makes them before it dials, too).
type simKey struct {
	key *ecdsa.PrivateKey
	csr []byte
}

func newSimKey(name string) (simKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return simKey{}, fmt.Errorf("generate node key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return simKey{}, fmt.Errorf("create CSR: %w", err)
	}
	return simKey{key: key, csr: csr}, nil
}

// simAgent is one enrolled simulated agent.
type simAgent struct {
	name string
	node *droverv1.Node
	cert tls.Certificate
	// session is the transport with the node's certificate; nil until
	// openSession. One transport, one QUIC connection: one node identity.
	session *http3.Transport
	client  droverv1connect.AgentServiceClient
	// beats is the node's heartbeat stream, nil until streamHeartbeat
	// opens it; closeBeats closes it.
	beats *connect.BidiStreamForClient[droverv1.HeartbeatRequest, droverv1.HeartbeatResponse]
}

// enrollTiming splits one enrollment as the agent sees it.
type enrollTiming struct {
	total  time.Duration // cluster info, CA check and Enroll, both handshakes included
	enroll time.Duration // the Enroll call on its fresh pinned connection
}

// simEnroll enrolls like agent.enroll: GetClusterInfo over a connection
// that trusts nothing, the CA checked against the token, then Enroll over
// a new connection that trusts only that CA. It returns the agent with its
// certificate, checked like the agent checks it.
func simEnroll(ctx context.Context, addr string, tok jointoken.Token, name string, k simKey,
	inv *droverv1.NodeInventory) (*simAgent, enrollTiming, error) {
	var tm enrollTiming
	ctx, cancel := context.WithTimeout(ctx, simRPCTimeout)
	defer cancel()
	start := time.Now()
	insecure := simTransport(&tls.Config{
		MinVersion: tls.VersionTLS13, ServerName: pki.PeerServerName, InsecureSkipVerify: true,
	})
	defer insecure.Close()
	info, err := simClient(insecure, addr).GetClusterInfo(ctx, connect.NewRequest(&droverv1.GetClusterInfoRequest{}))
	if err != nil {
		return nil, tm, fmt.Errorf("enroll %s: get cluster info: %w", name, err)
	}
	ca, err := pki.ParseCertPEM(info.Msg.GetCaPem())
	if err != nil {
		return nil, tm, fmt.Errorf("enroll %s: cluster CA: %w", name, err)
	}
	if err := jointoken.VerifyCA(tok, ca.Raw); err != nil {
		return nil, tm, fmt.Errorf("enroll %s: %w", name, err)
	}
	pinned := simTransport(simPinnedTLS(ca, nil))
	defer pinned.Close()
	t0 := time.Now()
	res, err := simClient(pinned, addr).Enroll(ctx, connect.NewRequest(&droverv1.EnrollRequest{
		Token:        tok.String(),
		Name:         name,
		CsrDer:       k.csr,
		Inventory:    inv,
		AgentVersion: "bench",
	}))
	now := time.Now()
	tm.enroll, tm.total = now.Sub(t0), now.Sub(start)
	if err != nil {
		return nil, tm, fmt.Errorf("enroll %s: %w", name, err)
	}
	node := res.Msg.GetNode()
	leaf, err := pki.ParseCertPEM(res.Msg.GetCertificatePem())
	if err == nil {
		err = checkSimCert(leaf, ca, &k.key.PublicKey, node.GetId())
	}
	if err != nil {
		return nil, tm, fmt.Errorf("enroll %s: node certificate: %w", name, err)
	}
	if node.GetName() != name {
		return nil, tm, fmt.Errorf("enroll %s: enrolled as %q", name, node.GetName())
	}
	return &simAgent{
		name: name,
		node: node,
		cert: tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: k.key, Leaf: leaf},
	}, tm, nil
}

// checkSimCert checks a node certificate as the agent does: signed by the
// CA for client auth, role agent, CN the node id, for the agent's key.
func checkSimCert(leaf, ca *x509.Certificate, pub *ecdsa.PublicKey, id string) error {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return err
	}
	if role := pki.RoleOf(leaf); role != pki.RoleAgent {
		return fmt.Errorf("role %q, want %q", role, pki.RoleAgent)
	}
	if id == "" || leaf.Subject.CommonName != id {
		return fmt.Errorf("common name %q, node id %q", leaf.Subject.CommonName, id)
	}
	if got, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !got.Equal(pub) {
		return errors.New("certificate is not for the agent's key")
	}
	return nil
}

// openSession opens the agent's session transport, authenticated by its
// node certificate, to addr.
func (a *simAgent) openSession(ca *x509.Certificate, addr string, opts ...connect.ClientOption) {
	a.session = simTransport(simPinnedTLS(ca, &a.cert))
	a.client = simClient(a.session, addr, opts...)
}

func (a *simAgent) close() {
	a.closeBeats()
	if a.session != nil {
		_ = a.session.Close()
	}
}

// register sends the inventory and checks the node is READY.
func (a *simAgent) register(ctx context.Context, inv *droverv1.NodeInventory) error {
	ctx, cancel := context.WithTimeout(ctx, simRPCTimeout)
	defer cancel()
	res, err := a.client.Register(ctx, connect.NewRequest(&droverv1.RegisterRequest{Inventory: inv, AgentVersion: "bench"}))
	if err != nil {
		return fmt.Errorf("register %s: %w", a.name, err)
	}
	if st := res.Msg.GetNode().GetStatus(); st != droverv1.NodeStatus_NODE_STATUS_READY {
		return fmt.Errorf("register %s: node is %v, want READY", a.name, st)
	}
	return nil
}

// heartbeat sends one heartbeat, as agent/session.go does, and checks the
// answer is that of a leader tracking a ready node.
func (a *simAgent) heartbeat(ctx context.Context) error {
	res, err := a.client.Heartbeat(ctx, connect.NewRequest(&droverv1.HeartbeatRequest{}))
	if err != nil {
		return fmt.Errorf("heartbeat %s: %w", a.name, err)
	}
	m := res.Msg
	if m.GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY || m.GetReregister() || m.GetTtl().AsDuration() <= 0 {
		return fmt.Errorf("heartbeat %s: answer status %v, reregister %v, ttl %v; want a READY node with a TTL",
			a.name, m.GetStatus(), m.GetReregister(), m.GetTtl().AsDuration())
	}
	return nil
}

// streamHeartbeat sends one heartbeat as a message on the node's
// heartbeat stream, opened with ctx on its first use as the agent opens
// it once per session, and checks the answer as heartbeat does.
func (a *simAgent) streamHeartbeat(ctx context.Context) error {
	if a.beats == nil {
		a.beats = a.client.HeartbeatStream(ctx)
	}
	if err := a.beats.Send(&droverv1.HeartbeatRequest{}); err != nil {
		return fmt.Errorf("heartbeat stream of %s: send: %w", a.name, err)
	}
	m, err := a.beats.Receive()
	if err != nil {
		return fmt.Errorf("heartbeat stream of %s: %w", a.name, err)
	}
	if m.GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY || m.GetReregister() || m.GetTtl().AsDuration() <= 0 {
		return fmt.Errorf("heartbeat stream of %s: answer status %v, reregister %v, ttl %v; want a READY node with a TTL",
			a.name, m.GetStatus(), m.GetReregister(), m.GetTtl().AsDuration())
	}
	return nil
}

// closeBeats ends the node's heartbeat stream, if it has one.
func (a *simAgent) closeBeats() {
	if a.beats == nil {
		return
	}
	_ = a.beats.CloseRequest()
	_ = a.beats.CloseResponse()
	a.beats = nil
}

// dialHeartbeat sends one heartbeat over a new connection, closed after:
// what every heartbeat costs when the agent's connection has idled out
// since the last one. The agent's transport keeps no TLS session cache,
// so this is a full handshake.
func (a *simAgent) dialHeartbeat(ctx context.Context, ca *x509.Certificate, addr string, opts ...connect.ClientOption) error {
	tr := simTransport(simPinnedTLS(ca, &a.cert))
	defer tr.Close()
	ctx, cancel := context.WithTimeout(ctx, simRPCTimeout)
	defer cancel()
	b := &simAgent{name: a.name, client: simClient(tr, addr, opts...)}
	return b.heartbeat(ctx)
}

// benchInventory is what a GPU server's agent reports: the size of a
// probed 8-GPU machine, so the node records the leader reads on every
// heartbeat are as large as a real fleet's.
func benchInventory(host string) *droverv1.NodeInventory {
	flags := strings.Fields(`fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi
		mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon pebs bts rep_good
		nopl xtopology nonstop_tsc cpuid aperfmperf tsc_known_freq pni pclmulqdq dtes64 monitor ds_cpl vmx smx est
		tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid dca sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave
		avx f16c rdrand lahf_lm abm 3dnowprefetch cpuid_fault epb cat_l3 cat_l2 cdp_l3 invpcid_single intel_ppin
		cdp_l2 ssbd mba ibrs ibpb stibp ibrs_enhanced tpr_shadow flexpriority ept vpid ept_ad fsgsbase tsc_adjust
		bmi1 hle avx2 smep bmi2 erms invpcid rtm cqm rdt_a avx512f avx512dq rdseed adx smap avx512ifma clflushopt
		clwb intel_pt avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves cqm_llc cqm_occup_llc
		cqm_mbm_total cqm_mbm_local split_lock_detect avx_vnni avx512_bf16 wbnoinvd dtherm ida arat pln pts hfi
		avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg tme
		avx512_vpopcntdq la57 rdpid bus_lock_detect cldemote movdiri movdir64b enqcmd fsrm md_clear serialize
		tsxldtrk pconfig arch_lbr ibt amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities`)
	inv := &droverv1.NodeInventory{
		Host: &droverv1.HostInfo{Hostname: host, Os: "linux", OsId: "ubuntu", OsVersion: "22.04",
			Kernel: "5.15.0-105-generic", Arch: "amd64", BootId: "5c1f3b0e-7a7e-4a55-9d7b-0f3c2d6e8a91"},
		Cpu: &droverv1.CPUInfo{Model: "Intel(R) Xeon(R) Platinum 8480+", Vendor: "GenuineIntel",
			Sockets: 2, Cores: 112, Threads: 224, Mhz: 2000, Flags: flags},
		Memory:    &droverv1.MemoryInfo{TotalBytes: 2 << 40, AvailableBytes: 1900 << 30},
		Container: &droverv1.ContainerLimits{CgroupVersion: 2, CgroupPath: "/system.slice/drover-agent.service"},
		GpuProbe:  &droverv1.GPUProbe{Available: true, DriverVersion: "550.54.15", CudaDriverVersion: "12.4"},
		Disks: []*droverv1.DiskInfo{
			{Path: "/dev/nvme0n1p2", MountPoint: "/", FsType: "ext4", TotalBytes: 1 << 40, FreeBytes: 700 << 30},
			{Path: "/dev/md0", MountPoint: "/raid", FsType: "xfs", TotalBytes: 30 << 40, FreeBytes: 21 << 40},
			{Path: "/dev/md0", MountPoint: "/var/lib/drover", FsType: "xfs", TotalBytes: 30 << 40, FreeBytes: 21 << 40},
		},
	}
	for i := range 8 {
		inv.Gpus = append(inv.Gpus, &droverv1.GPUInfo{
			Index: uint32(i), Uuid: fmt.Sprintf("GPU-%08x-1f2e-4d3c-8b7a-%012x", i, i*7919),
			Name: "NVIDIA H100 80GB HBM3", PciBusId: fmt.Sprintf("00000000:%02X:00.0", 0x18+i*0x10),
			MemoryTotalBytes: 80 << 30, ComputeCapability: "9.0", PowerLimitMw: 700000,
		})
	}
	return inv
}

// operator holds HTTPS (HTTP/2) clients with the management token, for
// what an operator does in the benchmarks, and for /metrics.
type operator struct {
	hc     *http.Client
	tr     *http.Transport
	token  string
	tokens droverv1connect.TokenServiceClient
}

func newOperator(c *process.Cluster, addr string) (*operator, error) {
	conf, err := pki.ClientTLSConfig(c.CAFile())
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true}
	hc := &http.Client{Transport: tr}
	auth := connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+c.Token())
			return next(ctx, req)
		}
	}))
	return &operator{hc: hc, tr: tr, token: c.Token(), tokens: droverv1connect.NewTokenServiceClient(hc, "https://"+addr, auth)}, nil
}

func (o *operator) close() { o.tr.CloseIdleConnections() }

// createToken makes a join token for uses enrollments.
func (o *operator) createToken(ctx context.Context, uses int) (jointoken.Token, error) {
	res, err := o.tokens.CreateToken(ctx, connect.NewRequest(&droverv1.CreateTokenRequest{
		Description: "benchmark", MaxUses: uint32(uses),
	}))
	if err != nil {
		return jointoken.Token{}, fmt.Errorf("create join token: %w", err)
	}
	return jointoken.Parse(res.Msg.GetTokenString())
}

// tokenUses returns how many times the token was used, from the leader.
func (o *operator) tokenUses(ctx context.Context, id string) (uint32, error) {
	res, err := o.tokens.ListTokens(ctx, connect.NewRequest(&droverv1.ListTokensRequest{}))
	if err != nil {
		return 0, fmt.Errorf("list join tokens: %w", err)
	}
	for _, t := range res.Msg.GetTokens() {
		if t.GetId() == id {
			return t.GetUses(), nil
		}
	}
	return 0, fmt.Errorf("join token %s not listed", id)
}

// metrics scrapes a server's /metrics into series → value, the series
// named as exposed, labels included (e.g. `drover_nodes{status="down"}`).
func (o *operator) metrics(ctx context.Context, addr string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+o.token)
	resp, err := o.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", addr, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("scrape %s: %q: %w", addr, line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scrape %s: %w", addr, err)
	}
	return out, nil
}

// serverPID finds the process of a running server by its data directory,
// which is unique to the cluster (the harness does not hand out PIDs).
func serverPID(c *process.Cluster, name string) (int, error) {
	dir := c.DataDir(name)
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("find the process of %s: %w", name, err)
	}
	found := 0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(bytes.TrimRight(raw, "\x00")), "\x00")
		if len(args) < 2 || args[1] != "server" {
			continue
		}
		for i := 2; i+1 < len(args); i++ {
			if args[i] == "--data-dir" && args[i+1] == dir {
				if found != 0 {
					return 0, fmt.Errorf("find the process of %s: processes %d and %d both use %s", name, found, pid, dir)
				}
				found = pid
			}
		}
	}
	if found == 0 {
		return 0, fmt.Errorf("find the process of %s: none runs with --data-dir %s", name, dir)
	}
	return found, nil
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat:
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// procCPU returns the CPU time (user + system, all threads) a process has
// used, from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu time of %d: %w", pid, err)
	}
	// The command name, field 2, is in parentheses and may hold spaces;
	// fields are counted after its closing parenthesis. utime and stime
	// are fields 14 and 15.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, fmt.Errorf("cpu time of %d: malformed stat", pid)
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("cpu time of %d: %d fields in stat", pid, len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("cpu time of %d: %w", pid, err)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// udpStats are the network namespace's UDP counters (/proc/net/snmp):
// every process on the box, the benchmark's agents and servers included.
type udpStats struct{ in, out, rcvbufErrors uint64 }

func readUDPStats() (udpStats, error) {
	raw, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return udpStats{}, err
	}
	var names, values []string
	for line := range strings.SplitSeq(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "Udp: "); ok {
			if names == nil {
				names = strings.Fields(rest)
			} else {
				values = strings.Fields(rest)
			}
		}
	}
	if len(names) == 0 || len(names) != len(values) {
		return udpStats{}, errors.New("/proc/net/snmp: no Udp counters")
	}
	var st udpStats
	for i, n := range names {
		v, err := strconv.ParseUint(values[i], 10, 64)
		if err != nil {
			return udpStats{}, fmt.Errorf("/proc/net/snmp: Udp %s: %w", n, err)
		}
		switch n {
		case "InDatagrams":
			st.in = v
		case "OutDatagrams":
			st.out = v
		case "RcvbufErrors":
			st.rcvbufErrors = v
		}
	}
	return st, nil
}

// loadAvg is the box's one-minute load average, for the log: the other
// processes the benchmark shares the cores with.
func loadAvg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(raw))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// selfCPU is the CPU time this test process (the load generator) has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loadGen runs workers goroutines that each call call(w, k), k = 0, 1, …,
// until halt; the first error stops every worker.
type loadGen struct {
	stop  atomic.Bool
	calls atomic.Int64
	wg    sync.WaitGroup

	mu  sync.Mutex // guards err
	err error
}

func startLoad(workers int, call func(w, k int) error) *loadGen {
	g := &loadGen{}
	for w := range workers {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			for k := 0; !g.stop.Load(); k++ {
				if err := call(w, k); err != nil {
					g.mu.Lock()
					if g.err == nil {
						g.err = err
					}
					g.mu.Unlock()
					g.stop.Store(true)
					return
				}
				g.calls.Add(1)
			}
		}()
	}
	return g
}

// failed returns the first error so far.
func (g *loadGen) failed() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// halt stops the workers, waits for their calls in flight and returns how
// many calls succeeded in all and the first error.
func (g *loadGen) halt() (int64, error) {
	g.stop.Store(true)
	g.wg.Wait()
	return g.calls.Load(), g.failed()
}

// forEach runs f(i) for i in [0, n) on at most par goroutines and returns
// the first error; after one, the remaining indexes are skipped.
func forEach(n, par int, f func(i int) error) error {
	var next atomic.Int64
	var first atomic.Pointer[error]
	var wg sync.WaitGroup
	for range min(par, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for first.Load() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					first.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if p := first.Load(); p != nil {
		return *p
	}
	return nil
}

// intList parses a comma-separated list of positive integers.
func intList(flagName, s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-%s %q: want positive integers separated by commas", flagName, s)
		}
		out = append(out, n)
	}
	return out, nil
}
