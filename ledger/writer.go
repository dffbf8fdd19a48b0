package ledger

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// WriterOptions tune a Writer. Zero values take the defaults.
type WriterOptions struct {
	// Queue is how many rows may wait to be written (default 10000). When
	// it is full, new rows are dropped and counted.
	Queue int
	// Batch is the most rows written in one insert (default 1024).
	Batch int
	// Linger is how long a batch waits for more rows after its first
	// (default 100ms; negative: not at all). One commit per request would
	// cost more than the request (measured in bench/run.sh); a flush marker
	// ends the wait.
	Linger time.Duration
	// BackoffMin and BackoffMax bound the wait between tries while the
	// store fails (default 100ms doubling up to 5s).
	BackoffMin, BackoffMax time.Duration
	// OnDrop is told how many rows were dropped, each time some are.
	OnDrop func(n int)
	// OnError is told why a write failed (it is retried); nil ignores it.
	OnError func(err error)
}

// Writer writes rows to a Store off the request path: Enqueue never blocks,
// rows go out in batches, a failing store is retried with backoff while new
// rows wait in the bounded queue.
type Writer struct {
	store Store
	opts  WriterOptions
	queue chan item

	mu     sync.RWMutex // guards closed against Enqueue's send
	closed bool

	// poke wakes a lingering batch early: it is full, or flushed, or the
	// queue closed. Rows themselves do not wake the writer: under load a
	// goroutine wakeup per row is scheduler work for nothing, the batch
	// waits for the linger anyway.
	poke chan struct{}
	// room is how many more rows the lingering batch takes: Enqueue
	// nudges the writer once the queue holds that many.
	room atomic.Int64

	ctx     context.Context // cancelled when Close gives up on the store
	cancel  context.CancelFunc
	done    chan struct{}
	dropped atomic.Uint64
}

// item is a row, or a flush marker that is closed once every row queued
// before it was written.
type item struct {
	row     Row
	flushed chan struct{}
}

// NewWriter starts a writer for store.
func NewWriter(store Store, opts WriterOptions) *Writer {
	if opts.Queue <= 0 {
		opts.Queue = 10000
	}
	if opts.Batch <= 0 {
		opts.Batch = insertBatch
	}
	if opts.Linger == 0 {
		opts.Linger = 100 * time.Millisecond
	}
	if opts.BackoffMin <= 0 {
		opts.BackoffMin = 100 * time.Millisecond
	}
	if opts.BackoffMax < opts.BackoffMin {
		opts.BackoffMax = max(5*time.Second, opts.BackoffMin)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &Writer{store: store, opts: opts, queue: make(chan item, opts.Queue), poke: make(chan struct{}, 1), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	w.room.Store(int64(opts.Batch))
	go w.run()
	return w
}

// Enqueue queues a row without waiting. It reports false when the row was
// dropped: the queue is full or the writer closed.
func (w *Writer) Enqueue(r Row) bool {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if !w.closed {
		select {
		case w.queue <- item{row: r}:
			if int64(len(w.queue)) >= w.room.Load() {
				w.nudge()
			}
			return true
		default:
		}
	}
	w.drop(1)
	return false
}

// Dropped is how many rows were dropped since the writer started.
func (w *Writer) Dropped() uint64 { return w.dropped.Load() }

func (w *Writer) drop(n int) {
	if n == 0 {
		return
	}
	w.dropped.Add(uint64(n))
	if w.opts.OnDrop != nil {
		w.opts.OnDrop(n)
	}
}

// Flush waits until every row queued before it is written, or ctx ends.
func (w *Writer) Flush(ctx context.Context) error {
	marker := make(chan struct{})
	w.mu.RLock()
	if w.closed {
		w.mu.RUnlock()
		return errors.New("ledger: writer closed")
	}
	select {
	case w.queue <- item{flushed: marker}:
		w.mu.RUnlock()
		w.nudge()
	case <-ctx.Done():
		w.mu.RUnlock()
		return ctx.Err()
	}
	select {
	case <-marker:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops taking rows and writes those queued. When ctx ends first
// (the store is still down), the rest are dropped and counted.
func (w *Writer) Close(ctx context.Context) error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.queue)
	}
	w.mu.Unlock()
	w.nudge()
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		w.cancel()
		<-w.done
		return fmt.Errorf("ledger: the store did not take the queued rows before shutdown: %w", ctx.Err())
	}
}

func (w *Writer) run() {
	defer close(w.done)
	defer w.cancel()
	batch := make([]Row, 0, w.opts.Batch)
	var markers []chan struct{}
	for it := range w.queue {
		batch, markers = w.gather(add(batch, markers, it))
		w.write(batch)
		for _, m := range markers {
			close(m)
		}
		batch, markers = batch[:0], markers[:0]
	}
}

// nudge wakes a lingering batch, without waiting.
func (w *Writer) nudge() {
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

// gather fills a batch begun with one row: with what is waiting, then,
// after Linger (or a nudge: the queue holds a full batch, a flush marker
// came, the queue closed), with what arrived meanwhile, until it is full.
// It sleeps through the linger instead of taking rows as they come, so
// that rows do not wake it one by one.
func (w *Writer) gather(batch []Row, markers []chan struct{}) ([]Row, []chan struct{}) {
	var linger <-chan time.Time
	if w.opts.Linger > 0 {
		t := time.NewTimer(w.opts.Linger)
		defer t.Stop()
		linger = t.C
	}
	for {
		var open bool
		batch, markers, open = w.drain(batch, markers)
		if !open || len(batch) >= w.opts.Batch || len(markers) > 0 || linger == nil {
			return batch, markers
		}
		w.room.Store(int64(w.opts.Batch - len(batch)))
		if len(w.queue) >= w.opts.Batch-len(batch) {
			continue // filled before room was set: no nudge will come
		}
		select {
		case <-w.poke:
		case <-linger:
			linger = nil // take what is there, then write
		}
	}
}

// drain adds what waits in the queue to the batch, up to a full batch. It
// reports false when the queue is closed and empty.
func (w *Writer) drain(batch []Row, markers []chan struct{}) ([]Row, []chan struct{}, bool) {
	for len(batch) < w.opts.Batch {
		select {
		case it, ok := <-w.queue:
			if !ok {
				return batch, markers, false
			}
			batch, markers = add(batch, markers, it)
		default:
			return batch, markers, true
		}
	}
	return batch, markers, true
}

func add(batch []Row, markers []chan struct{}, it item) ([]Row, []chan struct{}) {
	if it.flushed != nil {
		return batch, append(markers, it.flushed)
	}
	return append(batch, it.row), markers
}

// write inserts a batch, retrying with backoff until it goes in or Close
// gives up (then the batch is dropped and counted).
func (w *Writer) write(batch []Row) {
	if len(batch) == 0 {
		return
	}
	wait := w.opts.BackoffMin
	for {
		err := w.store.Insert(w.ctx, batch)
		if err == nil {
			return
		}
		if w.opts.OnError != nil && w.ctx.Err() == nil {
			w.opts.OnError(err)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-w.ctx.Done():
			t.Stop()
			w.drop(len(batch))
			return
		}
		wait = min(wait*2, w.opts.BackoffMax)
	}
}
