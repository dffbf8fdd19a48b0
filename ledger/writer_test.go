package ledger

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"
)

// fakeStore records inserted rows; while down it refuses them. Every
// Insert call is announced on calls (when set), so tests wait on it
// instead of sleeping.
type fakeStore struct {
	mu    sync.Mutex
	down  bool
	rows  []Row
	calls chan struct{}
}

func (f *fakeStore) Insert(ctx context.Context, rows []Row) error {
	f.mu.Lock()
	defer func() {
		f.mu.Unlock()
		if f.calls != nil {
			select {
			case f.calls <- struct{}{}:
			default:
			}
		}
	}()
	if err := ctx.Err(); err != nil {
		return err
	}
	if f.down {
		return errors.New("connection refused")
	}
	f.rows = append(f.rows, rows...)
	return nil
}

func (f *fakeStore) setDown(down bool) {
	f.mu.Lock()
	f.down = down
	f.mu.Unlock()
}

func (f *fakeStore) ids() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.rows {
		out = append(out, r.ID)
	}
	return out
}

func (f *fakeStore) Stats(context.Context, StatsQuery) (Stats, error)       { return Stats{}, nil }
func (f *fakeStore) Requests(context.Context, RequestsQuery) (Page, error)  { return Page{}, nil }
func (f *fakeStore) DeleteBefore(context.Context, time.Time) (int64, error) { return 0, nil }
func (f *fakeStore) Close() error                                           { return nil }

func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestWriterWritesInBatches(t *testing.T) {
	store := &fakeStore{}
	w := NewWriter(store, WriterOptions{Queue: 100})
	for i := range 50 {
		if !w.Enqueue(Row{ID: fmt.Sprint(i)}) {
			t.Fatalf("row %d dropped with room in the queue", i)
		}
	}
	if err := w.Flush(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	if got := store.ids(); len(got) != 50 || got[0] != "0" || got[49] != "49" {
		t.Fatalf("store has %v, want 0..49 in order", got)
	}
	if err := w.Close(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// While the store is down, rows wait (up to the queue bound) and are all
// written once it is back.
func TestWriterKeepsRowsWhileStoreDown(t *testing.T) {
	store := &fakeStore{down: true, calls: make(chan struct{}, 1)}
	w := NewWriter(store, WriterOptions{Queue: 100, BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond})
	defer w.Close(waitCtx(t))
	for i := range 30 {
		w.Enqueue(Row{ID: fmt.Sprint(i)})
	}
	for range 3 { // it tried, and tried again
		<-store.calls
	}
	if got := store.ids(); len(got) != 0 {
		t.Fatalf("rows written while down: %v", got)
	}
	store.setDown(false)
	if err := w.Flush(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	if got := store.ids(); len(got) != 30 || w.Dropped() != 0 {
		t.Fatalf("after the store came back: %d rows written, %d dropped; want 30, 0", len(got), w.Dropped())
	}
}

// A full queue drops rows, counts them, and never blocks the caller.
func TestWriterDropsWhenQueueFull(t *testing.T) {
	store := &fakeStore{down: true, calls: make(chan struct{}, 1)}
	var dropped int
	var mu sync.Mutex
	w := NewWriter(store, WriterOptions{Queue: 10, Batch: 5, BackoffMin: time.Hour,
		OnDrop: func(n int) { mu.Lock(); dropped += n; mu.Unlock() }})
	w.Enqueue(Row{ID: "first"})
	<-store.calls // the writer holds "first" in its batch, waiting an hour
	accepted := 0
	for i := range 25 {
		if w.Enqueue(Row{ID: fmt.Sprint(i)}) {
			accepted++
		}
	}
	if accepted != 10 || w.Dropped() != 15 {
		t.Fatalf("accepted %d, dropped %d; want 10 and 15", accepted, w.Dropped())
	}
	mu.Lock()
	if dropped != 15 {
		t.Fatalf("OnDrop told of %d rows, want 15", dropped)
	}
	mu.Unlock()
	// Shutdown with the store still down: Close gives up when told to,
	// and what it could not write is counted too.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Close(ctx); err == nil {
		t.Fatal("Close reported success with rows unwritten")
	}
	if w.Dropped() != 26 {
		t.Fatalf("dropped %d after giving up, want all 26", w.Dropped())
	}
	if w.Enqueue(Row{ID: "late"}) {
		t.Fatal("a closed writer took a row")
	}
}

// Close writes what is queued before it returns.
func TestWriterCloseFlushes(t *testing.T) {
	store := &fakeStore{}
	w := NewWriter(store, WriterOptions{Queue: 1000})
	for i := range 500 {
		w.Enqueue(Row{ID: fmt.Sprint(i)})
	}
	if err := w.Close(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	if got := store.ids(); len(got) != 500 {
		t.Fatalf("%d rows written by Close, want 500", len(got))
	}
}

// Rows that arrive within Linger of each other go out in one insert: one
// commit per request would cost more than the request.
func TestWriterLingersForABatch(t *testing.T) {
	store := &fakeStore{calls: make(chan struct{}, 10)}
	w := NewWriter(store, WriterOptions{Queue: 100, Linger: time.Hour})
	w.Enqueue(Row{ID: "0"})
	select {
	case <-store.calls:
		t.Fatal("a lone row was written at once; it should wait for more")
	case <-time.After(100 * time.Millisecond):
	}
	w.Enqueue(Row{ID: "1"})
	w.Enqueue(Row{ID: "2"})
	if err := w.Flush(waitCtx(t)); err != nil { // the marker ends the wait
		t.Fatal(err)
	}
	if n := len(store.calls); n != 1 {
		t.Errorf("%d inserts for 3 rows, want 1", n)
	}
	if got := store.ids(); len(got) != 3 {
		t.Fatalf("store has %v, want 3 rows", got)
	}
	if err := w.Close(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// A full batch is written without waiting for the linger to end.
func TestWriterFullBatchEndsLinger(t *testing.T) {
	store := &fakeStore{calls: make(chan struct{}, 10)}
	w := NewWriter(store, WriterOptions{Queue: 100, Batch: 4, Linger: time.Hour})
	for i := range 4 {
		w.Enqueue(Row{ID: strconv.Itoa(i)})
	}
	select {
	case <-store.calls:
	case <-waitCtx(t).Done():
		t.Fatal("a full batch waited for the linger")
	}
	if got := store.ids(); len(got) != 4 {
		t.Fatalf("store has %v, want 4 rows", got)
	}
	if err := w.Close(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
}
