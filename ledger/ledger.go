// Package ledger records every request arbstr served in a database (SQLite
// or PostgreSQL) and answers what was spent, on what, and how it went.
//
// A Store holds the rows; Open returns one for a driver and data source,
// with the schema migrated. A Writer puts rows into a Store off the request
// path: a bounded queue, batched inserts, retries while the store is down.
package ledger

import (
	"context"
	"errors"
	"time"
)

// Store is where ledger rows live. Both implementations (SQLite and
// PostgreSQL) share one schema and the same queries.
type Store interface {
	// Insert writes rows in one batch. A row whose time and id are already
	// stored is skipped, so that a batch retried after an unclear failure
	// is not written twice.
	Insert(ctx context.Context, rows []Row) error
	// Stats sums the rows a query selects, in total and per group.
	Stats(ctx context.Context, q StatsQuery) (Stats, error)
	// Requests lists the rows a query selects, newest first, one page at a time.
	Requests(ctx context.Context, q RequestsQuery) (Page, error)
	// DeleteBefore deletes the rows of the hours that ended by t (t cut
	// to the hour) and says how many went.
	DeleteBefore(ctx context.Context, t time.Time) (int64, error)
	// Close releases the store's connections.
	Close() error
}

// Row is one request as the ledger records it (SPEC §11). JSON names are
// the column names.
type Row struct {
	// ID is the request id (x-arbstr-request-id).
	ID string `json:"id"`
	// Time is when the request started.
	Time time.Time `json:"time"`
	// Instance is the Caddy instance that served it (caddy.InstanceID()).
	Instance string `json:"instance"`
	// Client is the value of the client_id placeholder: who pays.
	Client string `json:"client"`
	// Policy is the policy that applied, "" for none.
	Policy string `json:"policy"`
	// Model is the public model name the client asked for.
	Model string `json:"model"`
	// Provider is the provider that answered, "" when none did.
	Provider string `json:"provider"`
	// UpstreamModel is the model name sent to that provider.
	UpstreamModel string `json:"upstream_model"`
	// Stream tells whether the client asked for a stream.
	Stream bool `json:"stream"`
	// Status is the HTTP status the client got (0 when it left first).
	Status int `json:"status"`
	// Outcome is ok, relayed, error, client_gone, broken_stream or continued.
	Outcome string `json:"outcome"`
	// Attempts is how many upstream attempts were made.
	Attempts int `json:"attempts"`
	// Retries is the x-arbstr-retries value: failed attempts per provider.
	Retries string `json:"retries"`
	// PromptTokens and CompletionTokens are the usage the provider reported.
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	// CostSats is what the request cost, in satoshis; 0 when none answered.
	CostSats float64 `json:"cost_sats"`
	// DearestCostSats is what the same tokens would have cost at the
	// dearest provider that qualified for the request.
	DearestCostSats float64 `json:"dearest_cost_sats"`
	// LatencyMS is the time from the request's start to its end.
	LatencyMS int64 `json:"latency_ms"`
	// FirstEventMS is a stream's time to its first event; nil otherwise.
	FirstEventMS *int64 `json:"first_event_ms"`
	// ErrorCode is the code of arbstr's error answer, "" otherwise.
	ErrorCode string `json:"error_code"`
	// Continuations is how many mid-stream continuations the request took.
	Continuations int `json:"continuations"`
	// Complexity is the request's complexity score when tiers are on.
	Complexity *float64 `json:"complexity"`
	// Tier is the serving provider's tier when tiers are on.
	Tier string `json:"tier"`
	// Endpoint is the API the client called: chat, embeddings, responses
	// or messages. Insert stores "" as chat, the column's default.
	Endpoint string `json:"endpoint"`
}

// Filter selects rows. Match holds equality filters by column; only the
// columns in FilterColumns may be used.
type Filter struct {
	// Since and Until bound the row time: Since ≤ time < Until. Zero is open.
	Since, Until time.Time
	// Match maps a column name to the value it must equal.
	Match map[string]string
}

// FilterColumns are the columns a Filter may match on.
var FilterColumns = []string{"provider", "model", "client", "policy", "outcome", "instance", "endpoint"}

// GroupColumns are the keys Stats may group by. day and hour are the UTC
// calendar day and hour of the row time.
var GroupColumns = []string{"provider", "model", "policy", "client", "endpoint", "day", "hour"}

// StatsQuery selects the rows to sum and how to group them.
type StatsQuery struct {
	Filter
	// GroupBy lists keys from GroupColumns; empty means totals only.
	GroupBy []string
}

// Totals are the sums over a set of rows. Succeeded counts outcomes ok and
// continued; Failed is every other request.
type Totals struct {
	Requests         int64   `json:"requests"`
	Succeeded        int64   `json:"succeeded"`
	Failed           int64   `json:"failed"`
	PromptTokens     int64   `json:"prompt_tokens"`
	CompletionTokens int64   `json:"completion_tokens"`
	CostSats         float64 `json:"cost_sats"`
	DearestCostSats  float64 `json:"dearest_cost_sats"`
	SavedSats        float64 `json:"saved_sats"`
	LatencyMSP50     int64   `json:"latency_ms_p50"`
	LatencyMSP95     int64   `json:"latency_ms_p95"`
}

// Group is the totals of the rows sharing one key. Day and hour keys are
// the RFC 3339 start of the period.
type Group struct {
	Key map[string]string `json:"key"`
	Totals
}

// Stats is the answer to a StatsQuery.
type Stats struct {
	Total  Totals  `json:"total"`
	Groups []Group `json:"groups"`
}

// DefaultLimit and MaxLimit bound a page of requests.
const (
	DefaultLimit = 50
	MaxLimit     = 1000
)

// RequestsQuery selects a page of rows.
type RequestsQuery struct {
	Filter
	// Limit is the page size: DefaultLimit when 0, at most MaxLimit.
	Limit int
	// Cursor is the NextCursor of the previous page, "" for the first.
	Cursor string
}

// Page is one page of rows, newest first. NextCursor is "" on the last page.
type Page struct {
	Rows       []Row  `json:"requests"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// ErrBadQuery wraps errors in a query (unknown column, bad cursor): the
// caller's mistake, not the store's.
var ErrBadQuery = errors.New("bad ledger query")
