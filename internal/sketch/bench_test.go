package sketch

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user+system CPU time. The merge benchmarks
// report it beside wall time: on a shared machine wall time counts other
// work's time slices, CPU time only this benchmark's (GC included).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportMerge reports wall and CPU milliseconds per merge of the fleet.
func reportMerge(b *testing.B, cpu0 time.Duration) {
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "ms/merge")
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1e3/float64(b.N), "cpu-ms/merge")
}

// The benchmarks behind docs/performance.md "Telemetry sketches":
//
//	go test -run=NONE -bench='Add|Record' -cpu=1,2 ./internal/sketch/
//	go test -run=NONE -bench=Merge10k -benchtime=3x -cpu=1 -count=2 ./internal/sketch/
//	go test -run=NONE -bench=Merge10k/reader.merger-parallel -benchtime=3x -cpu=4 ./internal/sketch/

func BenchmarkNumericAdd(b *testing.B) {
	xs := make([]float64, 1<<16)
	r := rand.New(rand.NewPCG(1, 1))
	for i := range xs {
		xs[i] = 50 + 10*r.NormFloat64()
	}
	n := NewNumeric()
	i := 0
	for b.Loop() {
		_ = n.Add(xs[i&(len(xs)-1)])
		i++
	}
}

func BenchmarkCategoricalAdd(b *testing.B) {
	for _, distinct := range []int{50, 5000} {
		b.Run(fmt.Sprintf("distinct=%d", distinct), func(b *testing.B) {
			r := rand.New(rand.NewPCG(2, 2))
			z := rand.NewZipf(r, 1.2, 1, uint64(distinct-1))
			vs := make([]string, 1<<16)
			for i := range vs {
				vs[i] = fmt.Sprintf("sku-%08d", z.Uint64())
			}
			c := NewCategorical(DefaultCapacity)
			i := 0
			for b.Loop() {
				c.Add(vs[i&(len(vs)-1)])
				i++
			}
		})
	}
}

// observations pre-draws requests of the realistic schema (7 inputs, one
// output, latency), so the benchmark times only the recording.
func observations(n int) []Observation {
	r := rand.New(rand.NewPCG(3, 3))
	obs := make([]Observation, n)
	for i := range obs {
		in := make([]Value, len(realisticFeatures))
		for j, f := range realisticFeatures {
			in[j] = f.draw(r)
		}
		obs[i] = Observation{Inputs: in, Outputs: []Value{Number(r.Float64())}, Latency: time.Duration(r.IntN(5e6))}
	}
	return obs
}

// BenchmarkRecord times one request (8 values and a latency) through a
// Recorder; values/s = 8 × requests/s. Run with -cpu=1,2,… for the
// concurrent figures: every goroutine records into the same Recorder.
func BenchmarkRecord(b *testing.B) {
	obs := observations(1 << 12)
	rec := NewRecorder(realisticSchema(b), 0)
	b.RunParallel(func(pb *testing.PB) {
		i := rand.IntN(len(obs))
		for pb.Next() {
			rec.Record(&obs[i&(len(obs)-1)])
			i++
		}
	})
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/9, "ns/value")
}

// fleet is the merge benchmark's data: agent profiles of 20 features (15
// numeric of three shapes, 5 categorical), 200 requests each, and the same
// values kept raw for the baseline.
type fleet struct {
	profiles []*Profile
	raw      [][][]float64         // [agent][numeric feature] sorted values
	hist     [][]map[string]uint64 // [agent][categorical feature] exact counts
}

const (
	fleetDistinct = 1000 // distinct agent profiles, cycled to reach 10,000
	fleetAgents   = 10000
	fleetRequests = 200
	fleetNumeric  = 15
	fleetCat      = 5
)

func makeFleet(b *testing.B) *fleet {
	var fs []Field
	for i := range fleetNumeric {
		fs = append(fs, Field{fmt.Sprintf("num%02d", i), KindNumeric})
	}
	for i := range fleetCat {
		fs = append(fs, Field{fmt.Sprintf("cat%02d", i), KindCategorical})
	}
	s, err := NewSchema(fs, nil)
	if err != nil {
		b.Fatal(err)
	}
	f := &fleet{}
	for a := range fleetDistinct {
		r := rand.New(rand.NewPCG(uint64(a), 4))
		zipf := rand.NewZipf(r, 1.1, 1, 4999)
		rec := NewRecorder(s, 1)
		raw := make([][]float64, fleetNumeric)
		hist := make([]map[string]uint64, fleetCat)
		for i := range hist {
			hist[i] = map[string]uint64{}
		}
		in := make([]Value, len(fs))
		for range fleetRequests {
			for i := range fleetNumeric {
				var x float64
				switch i % 3 {
				case 0:
					x = float64(i) + r.NormFloat64()
				case 1:
					x = 40 + 12*r.NormFloat64()
				default:
					x = math.Exp(3 + 1.5*r.NormFloat64())
				}
				in[i] = Number(x)
				raw[i] = append(raw[i], x)
			}
			for i := range fleetCat {
				v := fmt.Sprintf("v%04d", zipf.Uint64())
				in[fleetNumeric+i] = Category(v)
				hist[i][v]++
			}
			rec.Record(&Observation{Inputs: in})
		}
		for _, xs := range raw {
			slices.Sort(xs)
		}
		f.profiles = append(f.profiles, rec.Flush())
		f.raw = append(f.raw, raw)
		f.hist = append(f.hist, hist)
	}
	return f
}

// BenchmarkMerge10kProfiles merges 10,000 agent profiles of 20 features
// into one cohort profile, beside the baseline of merging the same data
// exactly: raw sorted samples per numeric feature (concatenated, then
// sorted: the input a exact KS needs) and exact histograms per categorical
// feature. It also checks and merges 10,000 encoded windows
// (UnmarshalWindow, Profile.MergeProto): the leader's whole path.
func BenchmarkMerge10kProfiles(b *testing.B) {
	f := makeFleet(b)
	b.Run("sketches", func(b *testing.B) {
		cpu0 := cpuTime()
		for b.Loop() {
			out := NewProfile(nil)
			for a := range fleetAgents {
				if err := out.Merge(f.profiles[a%fleetDistinct]); err != nil {
					b.Fatal(err)
				}
			}
			if out.Requests != fleetAgents*fleetRequests {
				b.Fatal(out.Requests)
			}
		}
		reportMerge(b, cpu0)
	})
	b.Run("merger", func(b *testing.B) {
		cpu0 := cpuTime()
		for b.Loop() {
			m := NewMerger()
			for a := range fleetAgents {
				if err := m.Add(f.profiles[a%fleetDistinct]); err != nil {
					b.Fatal(err)
				}
			}
			if out := m.Profile(); out.Requests != fleetAgents*fleetRequests {
				b.Fatal(out.Requests)
			}
		}
		reportMerge(b, cpu0)
	})
	encoded := make([][]byte, fleetDistinct)
	var bytes int
	for i, p := range f.profiles {
		w := &Window{NodeID: "n", Deployment: "d", Model: "m", Version: "v", Start: time.Unix(0, 0), End: time.Unix(60, 0), Profile: p}
		var err error
		if encoded[i], err = w.Encode(); err != nil {
			b.Fatal(err)
		}
		bytes += len(encoded[i])
	}
	b.Run("decode+merger", func(b *testing.B) {
		cpu0 := cpuTime()
		for b.Loop() {
			m := NewMerger()
			for a := range fleetAgents {
				w, err := UnmarshalWindow(encoded[a%fleetDistinct])
				if err != nil {
					b.Fatal(err)
				}
				if err := m.AddProto(w.Profile); err != nil {
					b.Fatal(err)
				}
			}
			if out := m.Profile(); out.Requests != fleetAgents*fleetRequests {
				b.Fatal(out.Requests)
			}
		}
		reportMerge(b, cpu0)
	})
	b.Run("reader+merger", func(b *testing.B) {
		cpu0 := cpuTime()
		for b.Loop() {
			var r WindowReader
			m := NewMerger()
			for a := range fleetAgents {
				if _, err := r.Read(encoded[a%fleetDistinct]); err != nil {
					b.Fatal(err)
				}
				if err := r.MergeInto(m); err != nil {
					b.Fatal(err)
				}
			}
			if out := m.Profile(); out.Requests != fleetAgents*fleetRequests {
				b.Fatal(out.Requests)
			}
		}
		reportMerge(b, cpu0)
	})
	// The same spread over GOMAXPROCS goroutines (run it with -cpu=1,2,4…):
	// one reader and Merger per goroutine over a contiguous share of the
	// windows, then one Merger over their profiles. cpu-ms/merge is all
	// cores together; cpu-ms/core divides it by GOMAXPROCS. The result
	// keeps every bound but is not the in-order one (see Merger).
	b.Run("reader+merger-parallel", func(b *testing.B) {
		procs := runtime.GOMAXPROCS(0)
		cpu0 := cpuTime()
		for b.Loop() {
			parts := make([]*Profile, procs)
			errs := make([]error, procs)
			var wg sync.WaitGroup
			for g := range procs {
				wg.Go(func() {
					var r WindowReader
					m := NewMerger()
					for a := g * fleetAgents / procs; a < (g+1)*fleetAgents/procs; a++ {
						if _, err := r.Read(encoded[a%fleetDistinct]); err != nil {
							errs[g] = err
							return
						}
						if err := r.MergeInto(m); err != nil {
							errs[g] = err
							return
						}
					}
					parts[g] = m.Profile()
				})
			}
			wg.Wait()
			m := NewMerger()
			for g, p := range parts {
				if errs[g] != nil {
					b.Fatal(errs[g])
				}
				if err := m.Add(p); err != nil {
					b.Fatal(err)
				}
			}
			if out := m.Profile(); out.Requests != fleetAgents*fleetRequests {
				b.Fatal(out.Requests)
			}
		}
		reportMerge(b, cpu0)
		b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1e3/float64(b.N)/float64(procs), "cpu-ms/core")
		b.ReportMetric(float64(procs), "goroutines")
	})
	b.Run("decode+sketches", func(b *testing.B) {
		cpu0 := cpuTime()
		for b.Loop() {
			out := NewProfile(nil)
			for a := range fleetAgents {
				w, err := UnmarshalWindow(encoded[a%fleetDistinct])
				if err != nil {
					b.Fatal(err)
				}
				if err := out.MergeProto(w.Profile); err != nil {
					b.Fatal(err)
				}
			}
		}
		reportMerge(b, cpu0)
		b.ReportMetric(float64(bytes)/fleetDistinct/(fleetNumeric+fleetCat), "B/feature")
	})
	b.Run("baseline-raw", func(b *testing.B) {
		buf := make([]float64, 0, fleetAgents*fleetRequests)
		cpu0 := cpuTime()
		for b.Loop() {
			for i := range fleetNumeric {
				buf = buf[:0]
				for a := range fleetAgents {
					buf = append(buf, f.raw[a%fleetDistinct][i]...)
				}
				slices.Sort(buf)
			}
			for i := range fleetCat {
				m := map[string]uint64{}
				for a := range fleetAgents {
					for k, n := range f.hist[a%fleetDistinct][i] {
						m[k] += n
					}
				}
			}
		}
		reportMerge(b, cpu0)
		b.ReportMetric(float64(fleetAgents*fleetRequests*(fleetNumeric*8+fleetCat*6))/float64(fleetAgents*(fleetNumeric+fleetCat)), "rawB/feature")
	})
}
