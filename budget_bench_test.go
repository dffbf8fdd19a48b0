package arbstr

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/arbstr/caddy-arbstr/internal/freeport"
	"github.com/arbstr/caddy-arbstr/internal/pgtest"
)

// BenchmarkBudgetRequest is the cost of budgets per request: one chat
// request through arbstr to a stand-in provider in the same Caddy, with
// the ledger in SQLite or PostgreSQL, without a budget (the baseline,
// *-none) and with one budget in the same store (admission before the
// upstream call, settlement at the end). Compare ns/op within one run.
//
//	go test -run '^$' -bench BenchmarkBudgetRequest -benchtime 2000x .
func BenchmarkBudgetRequest(b *testing.B) {
	const budget = `
		budget bench {
			per    global
			limit  1000000000
			period total
		}`
	for _, c := range []struct{ name, options string }{
		{"sqlite-none", "ledger sqlite {DIR}/l.db"},
		{"sqlite", "ledger sqlite {DIR}/l.db" + budget},
		{"postgres-none", "ledger postgres {PG}"},
		{"postgres", "ledger postgres {PG}" + budget},
	} {
		b.Run(c.name, func(b *testing.B) {
			options := c.options
			if strings.HasPrefix(c.name, "postgres") {
				options = strings.ReplaceAll(options, "{PG}", pgtest.Database(b))
			}
			options = strings.ReplaceAll(options, "{DIR}", filepath.ToSlash(b.TempDir()))
			url := benchBudgetCaddy(b, options)
			body := []byte(`{"model":"standin","max_tokens":100,"messages":[{"role":"user","content":"hello"}]}`)
			client := &http.Client{}
			for b.Loop() {
				hpPost(b, client, url, body, false)
			}
		})
	}
}

func benchBudgetCaddy(b *testing.B, appOptions string) string {
	b.Helper()
	ports := freeport.Ports(b, 3)
	admin, up, arb := ports[0], ports[1], ports[2]
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https off
	skip_install_trust
	grace_period 1s
	log {
		level ERROR
	}
	arbstr {
%s
	}
}
http://127.0.0.1:%d {
	arbstr_standin
}
http://127.0.0.1:%d {
	arbstr {
		provider local {
			url http://127.0.0.1:%d/v1
			base_fee 1
		}
	}
}
`, admin, appOptions, up, arb, up)
	loadBenchCaddy(b, cfg, arb)
	return fmt.Sprintf("http://127.0.0.1:%d/v1/chat/completions", arb)
}
