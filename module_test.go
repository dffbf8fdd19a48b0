package arbstr

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// A literal key with braces is a key, not a placeholder: it is sent as
// written and, when something does fail, never quoted in the error.
func TestModuleAPIKeyLiteralBraces(t *testing.T) {
	repl := caddy.NewReplacer()
	key, err := resolveAPIKey(&Provider{Name: "a", APIKey: "sk-a{bc}d"}, repl)
	if err != nil || key != "sk-a{bc}d" {
		t.Fatalf("key %q, err %v", key, err)
	}
	t.Setenv("ARBSTR_TEST_EMPTY", "")
	_, err = resolveAPIKey(&Provider{Name: "a", APIKey: "sk-secret{env.ARBSTR_TEST_EMPTY}"}, repl)
	if err == nil || strings.Contains(err.Error(), "sk-secret") || !strings.Contains(err.Error(), "ARBSTR_TEST_EMPTY") {
		t.Fatalf("error %v: must name the empty placeholder and hold no secret", err)
	}
}
