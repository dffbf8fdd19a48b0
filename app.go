package arbstr

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/arbstr/caddy-arbstr/ledger"
)

func init() {
	caddy.RegisterModule(App{})
	httpcaddyfile.RegisterGlobalOption("arbstr", parseAppOption)
}

// Defaults of the arbstr app.
const (
	defaultRetention   = 90 * 24 * time.Hour
	defaultLedgerQueue = 10000
	// ledgerFlushTimeout bounds how long a reload or shutdown waits for the
	// last queued rows to reach the store.
	ledgerFlushTimeout = 10 * time.Second
	// retentionEvery is how often rows past the retention are deleted.
	retentionEvery = time.Hour
)

// App is the arbstr Caddy app (module ID `arbstr`, JSON `apps.arbstr`,
// Caddyfile global option `arbstr`). It owns what every arbstr handler
// shares: the ledger of requests, and budgets. Handlers reach it with
// ctx.App("arbstr"), which also instantiates it with the defaults when the
// config has no `arbstr` global block: the ledger is then on, in SQLite
// under Caddy's data directory.
type App struct {
	// Ledger is where every request is recorded. Default: SQLite at
	// {Caddy data dir}/arbstr/ledger.db.
	Ledger *LedgerConfig `json:"ledger,omitempty"`

	// Retention is how long rows are kept; older ones are deleted every
	// hour. Default: 90d.
	Retention caddy.Duration `json:"retention,omitempty"`

	// ClientID is who a request is billed to: any placeholder, replaced per
	// request (e.g. {http.auth.user.id} behind Caddy's authentication).
	// Never use a raw API key: the value is stored in every row.
	// Default: none (every row has an empty client).
	ClientID string `json:"client_id,omitempty"`

	// Queue is how many rows may wait while the store is slow or down;
	// beyond it rows are dropped and counted in
	// caddy_arbstr_ledger_dropped_total. Default: 10000.
	Queue int `json:"queue,omitempty"`

	// Budgets are spend caps checked before any upstream call (SPEC §12),
	// kept in the ledger's database.
	Budgets []*BudgetConfig `json:"budgets,omitempty"`

	// BudgetLease is how long a reservation holds budget without being
	// renewed: a process that dies mid-request stops holding budget after
	// it. Running requests renew theirs every lease/3. JSON only; default
	// 5m, at most 10m.
	BudgetLease caddy.Duration `json:"budget_lease,omitempty"`

	budgets *budgetSet // nil without budgets

	logger        *zap.Logger
	ledger        *pooledLedger // nil when the ledger is off
	ledgerKey     string
	instance      string // caddy.InstanceID(), read once
	stopRetention chan struct{}
	retentionDone chan struct{}
}

// LedgerConfig chooses the ledger's store.
type LedgerConfig struct {
	// Driver is sqlite (default), postgres, or off.
	Driver string `json:"driver,omitempty"`
	// DSN is the SQLite file path (default {Caddy data dir}/arbstr/ledger.db)
	// or the PostgreSQL connection URL. Placeholders such as {env.NAME} are
	// replaced at load; the value is never logged.
	DSN string `json:"dsn,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "arbstr",
		New: func() caddy.Module { return new(App) },
	}
}

// ledgers holds the open stores with their writers, by driver and DSN, so
// that a reload keeps the same store, queue and connections.
var ledgers = caddy.NewUsagePool()

// pooledLedger is one store and its writer, shared by every config that
// names the same store.
type pooledLedger struct {
	store  *ledger.SQLStore
	writer *ledger.Writer
}

// Destruct flushes the queue and closes the store once no config uses it.
func (l *pooledLedger) Destruct() error {
	ctx, cancel := context.WithTimeout(context.Background(), ledgerFlushTimeout)
	defer cancel()
	err := l.writer.Close(ctx)
	return errors.Join(err, l.store.Close())
}

// Provision opens (or reuses across a reload) the ledger's store.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.instance = instanceID()
	if a.Retention == 0 {
		a.Retention = caddy.Duration(defaultRetention)
	}
	if a.Queue == 0 {
		a.Queue = defaultLedgerQueue
	}
	if err := registerLedgerMetrics(ctx); err != nil {
		return err
	}
	driver, dsn := ledger.DriverSQLite, ""
	if a.Ledger != nil {
		if a.Ledger.Driver != "" {
			driver = a.Ledger.Driver
		}
		dsn = caddy.NewReplacer().ReplaceKnown(a.Ledger.DSN, "")
	}
	switch driver {
	case "off":
		return a.provisionBudgets()
	case ledger.DriverSQLite:
		if dsn == "" {
			dsn = filepath.Join(caddy.AppDataDir(), "arbstr", "ledger.db")
		}
	case ledger.DriverPostgres:
		if dsn == "" {
			return fmt.Errorf("arbstr: ledger postgres needs a connection URL, e.g. 'ledger postgres {env.ARBSTR_DATABASE_URL}'")
		}
	default:
		return fmt.Errorf("arbstr: unknown ledger store %q; use sqlite, postgres or off", driver)
	}
	a.ledgerKey = driver + "\x00" + strconv.Itoa(a.Queue) + "\x00" + dsn
	logger := a.logger
	val, _, err := ledgers.LoadOrNew(a.ledgerKey, func() (caddy.Destructor, error) {
		openCtx, cancel := context.WithTimeout(ctx, ledgerFlushTimeout)
		defer cancel()
		store, err := ledger.Open(openCtx, driver, dsn)
		if err != nil {
			return nil, err
		}
		w := ledger.NewWriter(store, ledger.WriterOptions{
			Queue:  a.Queue,
			OnDrop: func(n int) { ledgerDropped.Add(float64(n)) },
			OnError: func(err error) {
				logger.Warn("ledger store unavailable; rows stay queued and are retried", zap.String("driver", driver), zap.Error(err))
			},
		})
		return &pooledLedger{store: store, writer: w}, nil
	})
	if err != nil {
		return fmt.Errorf("arbstr: opening the ledger: %w", err)
	}
	a.ledger = val.(*pooledLedger)
	return a.provisionBudgets()
}

// Validate refuses settings that cannot work.
func (a *App) Validate() error {
	if a.Retention < 0 {
		return fmt.Errorf("arbstr: retention must be positive, e.g. 90d")
	}
	if a.Queue < 0 {
		return fmt.Errorf("arbstr: queue must be a positive number of rows")
	}
	return nil
}

// Start begins deleting rows past the retention, and makes this app the
// one the admin API asks.
func (a *App) Start() error {
	activeApp.Store(a)
	if a.ledger == nil {
		return nil
	}
	a.stopRetention = make(chan struct{})
	a.retentionDone = make(chan struct{})
	go a.retain()
	return nil
}

// Stop ends the retention loop.
func (a *App) Stop() error {
	activeApp.CompareAndSwap(a, nil)
	if a.stopRetention != nil {
		close(a.stopRetention)
		<-a.retentionDone
		a.stopRetention = nil
	}
	return nil
}

// Cleanup releases the store: the last config using it flushes the queue
// and closes it; on a reload to the same store nothing is lost, the queue
// goes on.
func (a *App) Cleanup() error {
	if a.ledger == nil {
		return nil
	}
	_, err := ledgers.Delete(a.ledgerKey)
	return err
}

// retain deletes rows older than the retention now and every hour.
func (a *App) retain() {
	defer close(a.retentionDone)
	t := time.NewTicker(retentionEvery)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		n, err := a.ledger.store.DeleteBefore(ctx, time.Now().Add(-time.Duration(a.Retention)))
		a.sweepBudgets(ctx)
		cancel()
		if err != nil {
			a.logger.Warn("ledger retention: deleting old rows failed; trying again later", zap.Error(err))
		} else if n > 0 {
			a.logger.Info("ledger retention: deleted old rows", zap.Int64("rows", n))
		}
		select {
		case <-t.C:
		case <-a.stopRetention:
			return
		}
	}
}

// activeApp is the app of the running config, for the admin API, which is
// not part of any config's module tree. The newest started app wins.
var activeApp atomic.Pointer[App]

// loadApp returns the arbstr app of a handler's config, instantiating it
// with the defaults when the config has none.
func loadApp(ctx caddy.Context) (*App, error) {
	v, err := ctx.App("arbstr")
	if err != nil {
		return nil, err
	}
	app, ok := v.(*App)
	if !ok {
		return nil, fmt.Errorf("arbstr: app module is %T, not *arbstr.App", v)
	}
	return app, nil
}

// ledgerDropped counts rows the ledger dropped because its queue was full.
// It is created once per process and registered in each config's metrics
// registry, like the other caddy_arbstr_* collectors.
var ledgerDropped = prometheus.NewCounter(prometheus.CounterOpts{
	Namespace: "caddy", Subsystem: "arbstr", Name: "ledger_dropped_total",
	Help: "Ledger rows dropped because the queue was full (the store slow or down).",
})

func registerLedgerMetrics(ctx caddy.Context) error {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return nil
	}
	if err := reg.Register(ledgerDropped); err != nil {
		var already prometheus.AlreadyRegisteredError
		if !errors.As(err, &already) {
			return err
		}
	}
	return nil
}

// parseAppOption sets up the arbstr app from the global option block.
// Syntax:
//
//	arbstr {
//		ledger    sqlite [<path>] | postgres <url> | off   # default: sqlite in Caddy's data dir
//		retention <duration>                               # default 90d
//		client_id <placeholder>                            # default: none
//		queue     <rows>                                   # default 10000
//	}
func parseAppOption(d *caddyfile.Dispenser, existing any) (any, error) {
	app := new(App)
	if existing != nil {
		return nil, d.Err("the arbstr global option may appear only once")
	}
	d.Next() // the option name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "ledger":
			if !d.NextArg() {
				return nil, d.Err("ledger needs a store: sqlite [path], postgres <url> or off")
			}
			cfg := &LedgerConfig{Driver: d.Val()}
			switch cfg.Driver {
			case ledger.DriverSQLite:
				if d.NextArg() {
					cfg.DSN = d.Val()
				}
			case ledger.DriverPostgres:
				if !d.NextArg() {
					return nil, d.Err("ledger postgres needs a connection URL, e.g. {env.ARBSTR_DATABASE_URL}")
				}
				cfg.DSN = d.Val()
			case "off":
			default:
				return nil, d.Errf("unknown ledger store %q; use sqlite, postgres or off", cfg.Driver)
			}
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			app.Ledger = cfg
		case "retention":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 {
				return nil, d.Errf("retention %q: want a positive duration such as 90d or 720h", d.Val())
			}
			app.Retention = caddy.Duration(dur)
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case "client_id":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			app.ClientID = d.Val()
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case "queue":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n <= 0 {
				return nil, d.Errf("queue %q: want a positive number of rows", d.Val())
			}
			app.Queue = n
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case "budget":
			c, err := parseBudget(d)
			if err != nil {
				return nil, err
			}
			app.Budgets = append(app.Budgets, c)
		default:
			return nil, d.Errf("unknown arbstr global option %q; known: ledger, retention, client_id, queue, budget", d.Val())
		}
	}
	return httpcaddyfile.App{Name: "arbstr", Value: caddyconfig.JSON(app, nil)}, nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ caddy.Destructor   = (*pooledLedger)(nil)
)
