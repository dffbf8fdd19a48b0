package standin

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/arbstr/caddy-arbstr/internal/freeport"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// startCaddy runs siteBody (the body of one site block) in an in-process
// Caddy on free ports of 127.0.0.1, stops it at the end of the test, and
// returns the site's base URL. (The root package's testCaddy does more; the
// stand-in's tests need only this.)
func startCaddy(t *testing.T, siteBody string) string {
	t.Helper()
	ports := freeport.Ports(t, 2)
	port, adminPort := ports[0], ports[1]
	caddyfile := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https off
	skip_install_trust
	grace_period 1s
}
http://127.0.0.1:%d {
%s
}
`, adminPort, port, siteBody)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading config: %v\n%s", err, cfg)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if conn, err := net.Dial("tcp", addr); err == nil {
			conn.Close()
			return "http://" + addr
		}
	}
	t.Fatalf("caddy did not listen on %s", addr)
	return ""
}
