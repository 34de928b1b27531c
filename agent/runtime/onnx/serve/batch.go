package serve

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/droverhq/drover/agent/runtime/onnx"
)

var errClosed = errors.New("the server is shutting down")

// batcher coalesces concurrent requests into one model run: a request
// waits at most Config.BatchWait for others, and a batch never exceeds
// Config.MaxBatch rows. One goroutine gathers batches, Config.Workers
// goroutines run them; close stops all of them and fails what waits.
type batcher struct {
	model   *onnx.Model
	cfg     Config
	metrics *metrics
	jobs    chan *job
	batches chan []*job
	stop    chan struct{}
	// inflight counts requests inside submit: a batch holding all of
	// them runs at once, since nobody else is coming to wait for.
	inflight atomic.Int64
	wg       sync.WaitGroup
	once     sync.Once
}

type job struct {
	inputs map[string]*onnx.Tensor
	rows   int
	done   chan result // buffered: the runner never blocks on a caller that left
}

type result struct {
	out map[string]*onnx.Tensor
	err error
}

func newBatcher(m *onnx.Model, cfg Config, mt *metrics) *batcher {
	b := &batcher{model: m, cfg: cfg, metrics: mt, jobs: make(chan *job), batches: make(chan []*job), stop: make(chan struct{})}
	b.wg.Add(1 + cfg.Workers)
	go b.gather()
	for range cfg.Workers {
		go b.work()
	}
	return b
}

func (b *batcher) close() {
	b.once.Do(func() { close(b.stop) })
	b.wg.Wait()
}

// submit queues a request and waits for its share of a batch's outputs.
func (b *batcher) submit(ctx context.Context, inputs map[string]*onnx.Tensor, rows int) (map[string]*onnx.Tensor, error) {
	j := &job{inputs: inputs, rows: rows, done: make(chan result, 1)}
	b.inflight.Add(1)
	defer b.inflight.Add(-1)
	select {
	case b.jobs <- j:
	case <-b.stop:
		return nil, errClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-j.done:
		return r.out, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b *batcher) gather() {
	defer b.wg.Done()
	defer close(b.batches)
	var carry *job // a job that would have overfilled the last batch
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-b.jobs:
			case <-b.stop:
				return
			}
		}
		batch, rows := []*job{first}, first.rows
		t := b.cfg.Clock.NewTimer(b.cfg.BatchWait)
	fill:
		for rows < b.cfg.MaxBatch && int64(len(batch)) < b.inflight.Load() {
			select {
			case j := <-b.jobs:
				if rows+j.rows > b.cfg.MaxBatch {
					carry = j
					break fill
				}
				batch = append(batch, j)
				rows += j.rows
			case <-t.C():
				break fill
			case <-b.stop:
				t.Stop()
				fail(batch, errClosed)
				if carry != nil {
					fail([]*job{carry}, errClosed)
				}
				return
			}
		}
		t.Stop()
		select {
		case b.batches <- batch:
		case <-b.stop:
			fail(batch, errClosed)
			if carry != nil {
				fail([]*job{carry}, errClosed)
			}
			return
		}
	}
}

func fail(batch []*job, err error) {
	for _, j := range batch {
		j.done <- result{err: err}
	}
}

func (b *batcher) work() {
	defer b.wg.Done()
	for batch := range b.batches {
		b.run(batch)
	}
}

// run computes one batch. If stacking fails (a model whose outputs do not
// keep the batch dimension after all), each request runs alone.
func (b *batcher) run(batch []*job) {
	rows := 0
	for _, j := range batch {
		rows += j.rows
	}
	b.metrics.batchRows.Observe(float64(rows))
	if len(batch) == 1 {
		out, err := b.model.Run(batch[0].inputs)
		batch[0].done <- result{out: out, err: err}
		return
	}
	if err := b.runStacked(batch, rows); err != nil {
		for _, j := range batch {
			out, err := b.model.Run(j.inputs)
			j.done <- result{out: out, err: err}
		}
	}
}

func (b *batcher) runStacked(batch []*job, rows int) error {
	in := map[string]*onnx.Tensor{}
	for _, v := range b.model.Inputs() {
		parts := make([]*onnx.Tensor, len(batch))
		for i, j := range batch {
			parts[i] = j.inputs[v.Name]
		}
		t, err := onnx.Concat(parts...)
		if err != nil {
			return err
		}
		in[v.Name] = t
	}
	out, err := b.model.Run(in)
	if err != nil {
		return err
	}
	for _, t := range out {
		if len(t.Shape()) == 0 || t.Shape()[0] != rows {
			return fmt.Errorf("an output has shape %v, not %d rows", t.Shape(), rows)
		}
	}
	shares := make([]map[string]*onnx.Tensor, len(batch))
	for i := range batch {
		shares[i] = map[string]*onnx.Tensor{}
	}
	for name, t := range out {
		lo := 0
		for i, j := range batch {
			part, err := t.Rows(lo, lo+j.rows)
			if err != nil {
				return err
			}
			shares[i][name] = part
			lo += j.rows
		}
	}
	for i, j := range batch {
		j.done <- result{out: shares[i]}
	}
	return nil
}
