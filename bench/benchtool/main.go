// Command benchtool holds the parts of bench/run.sh that are awkward in a
// shell script:
//
//	benchtool ports N
//	    prints N distinct free TCP ports of 127.0.0.1.
//	benchtool stream -url URL -body FILE -n 50 -events 200
//	    opens n SSE chat streams one after the other (after a few warm-up
//	    ones) and prints the median time to the first data event and the
//	    median time per event after it: (total - first event) / events.
//	benchtool hold -url URL -body FILE -n 1000 -admin http://ADMIN -pid PID
//	    holds n streams open and idle at once and prints the Caddy
//	    process's heap, goroutine stacks, goroutines and RSS before, while
//	    held and after they are closed.
//	benchtool report -raw FILE
//	    turns the raw figures of a run into the summary table (markdown).
//
// stream and hold print "key=value" pairs for the script to record. Any
// failed or incomplete stream is an error: exit status 1.
package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		fatalf("usage: benchtool ports|stream|hold|report [flags]")
	}
	var err error
	switch os.Args[1] {
	case "ports":
		err = runPorts(os.Args[2:])
	case "stream":
		err = runStream(os.Args[2:])
	case "hold":
		err = runHold(os.Args[2:])
	case "report":
		err = runReport(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fatalf("benchtool %s: %v", os.Args[1], err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

// runPorts keeps every listener open until all are taken, so that the
// ports it prints are distinct.
func runPorts(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: benchtool ports N")
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 1 {
		return fmt.Errorf("bad count %q", args[0])
	}
	ports := make([]string, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer l.Close()
		ports = append(ports, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	}
	fmt.Println(strings.Join(ports, " "))
	return nil
}

var dataPrefix = []byte("data:")

func newRequest(ctx context.Context, url string, body []byte) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	return req, nil
}
