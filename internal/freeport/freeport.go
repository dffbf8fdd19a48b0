// Package freeport finds free TCP ports of 127.0.0.1 for tests that start
// Caddy on fixed addresses.
package freeport

import (
	"net"
	"testing"
)

// Ports returns n distinct ports of 127.0.0.1 that were free a moment ago.
// All n are held open until the last is found: ports found one at a time
// may repeat (the kernel can hand out a port it has just been given back),
// and Caddy binds with SO_REUSEPORT, so an admin endpoint and a site given
// the same port both listen on it and answer each other's requests (a
// chat request once got the admin endpoint's 404).
func Ports(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}
