// Command caddy is Caddy with its standard modules plus arbstr, so that
// `go run ./cmd/caddy run --config Caddyfile.example` works in a fresh clone
// without xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/arbstr/caddy-arbstr"
	_ "github.com/arbstr/caddy-arbstr/standin"
)

func main() {
	caddycmd.Main()
}
