package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// browser is headless chromium driven through the DevTools protocol over
// --remote-debugging-pipe (messages are JSON ended by a NUL byte; the browser
// reads fd 3 and writes fd 4), so no WebSocket client is needed.
type browser struct {
	t       *testing.T
	ctx     context.Context
	cmd     *exec.Cmd
	in      io.WriteCloser
	out     *bufio.Reader
	id      int
	session string
}

// openBrowser starts chromium and opens url in a page it attaches to.
func openBrowser(t *testing.T, url string) *browser {
	t.Helper()
	needChromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	toChrome, chromeIn, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	chromeOut, fromChrome, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{}, chromiumFlags...)
	args = append(args, "--user-data-dir="+t.TempDir(), "--remote-debugging-pipe", "about:blank")
	cmd := exec.CommandContext(ctx, chromiumPath, args...)
	cmd.ExtraFiles = []*os.File{toChrome, fromChrome} // fd 3, fd 4
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	toChrome.Close()
	fromChrome.Close()
	b := &browser{t: t, ctx: ctx, cmd: cmd, in: chromeIn, out: bufio.NewReader(chromeOut)}
	t.Cleanup(func() {
		b.call("", "Browser.close", nil)
		chromeIn.Close()
		_ = cmd.Wait()
		chromeOut.Close()
	})
	var target struct{ TargetID string }
	b.callInto("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	var attached struct{ SessionID string }
	b.callInto("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &attached)
	b.session = attached.SessionID
	// Navigate once attached: Page.navigate answers when the new document
	// is committed, so what is evaluated next runs in it.
	var nav struct{ ErrorText string }
	b.callInto(b.session, "Page.navigate", map[string]any{"url": url}, &nav)
	if nav.ErrorText != "" {
		t.Fatalf("opening %s: %s", url, nav.ErrorText)
	}
	return b
}

// call sends one command and returns its result, skipping events.
func (b *browser) call(session, method string, params any) json.RawMessage {
	b.t.Helper()
	b.id++
	msg := map[string]any{"id": b.id, "method": method, "params": params}
	if session != "" {
		msg["sessionId"] = session
	}
	data, _ := json.Marshal(msg)
	if _, err := b.in.Write(append(data, 0)); err != nil {
		if method == "Browser.close" {
			return nil
		}
		b.t.Fatalf("%s: %v", method, err)
	}
	for {
		raw, err := b.out.ReadBytes(0)
		if err != nil {
			if method == "Browser.close" {
				return nil
			}
			b.t.Fatalf("%s: reading the browser's answer: %v", method, err)
		}
		var answer struct {
			ID     int
			Result json.RawMessage
			Error  *struct{ Message string }
		}
		if err := json.Unmarshal(raw[:len(raw)-1], &answer); err != nil {
			b.t.Fatalf("%s: %v", method, err)
		}
		if answer.ID != b.id {
			continue // an event
		}
		if answer.Error != nil {
			b.t.Fatalf("%s: %s", method, answer.Error.Message)
		}
		return answer.Result
	}
}

func (b *browser) callInto(session, method string, params, into any) {
	b.t.Helper()
	if err := json.Unmarshal(b.call(session, method, params), into); err != nil {
		b.t.Fatalf("%s: %v", method, err)
	}
}

// eval runs a JavaScript expression in the page (awaiting a promise) and
// returns its value as JSON.
func (b *browser) eval(expr string) json.RawMessage {
	b.t.Helper()
	var r struct {
		Result           struct{ Value json.RawMessage }
		ExceptionDetails *struct {
			Text      string
			Exception struct{ Description string }
		}
	}
	b.callInto(b.session, "Runtime.evaluate", map[string]any{
		"expression": expr, "awaitPromise": true, "returnByValue": true,
	}, &r)
	if r.ExceptionDetails != nil {
		b.t.Fatalf("%s: %s %s", expr, r.ExceptionDetails.Text, r.ExceptionDetails.Exception.Description)
	}
	return r.Result.Value
}

// waitFor waits, inside the page, until cond (a JavaScript expression) holds;
// it fails the test after 20 s.
func (b *browser) waitFor(cond string) {
	b.t.Helper()
	ok := b.eval(fmt.Sprintf(`new Promise((done) => {
		const until = Date.now() + 20000;
		const check = () => { try { if (%s) return done(true); } catch (e) {}
			if (Date.now() > until) return done(false); setTimeout(check, 20); };
		check(); })`, cond))
	if string(ok) != "true" {
		b.t.Fatalf("the page never got to %s; it shows:\n%s", cond, b.eval(`document.body.innerText`))
	}
}

func (b *browser) text(selector string) string {
	b.t.Helper()
	var s string
	if err := json.Unmarshal(b.eval(fmt.Sprintf(`document.querySelector(%q).textContent`, selector)), &s); err != nil {
		b.t.Fatal(err)
	}
	return s
}

func TestDashboardInBrowserLoadMoreAndRanges(t *testing.T) {
	f := filledFixture(t)
	start := time.Now()
	b := openBrowser(t, f.URL+"/arbstr/dashboard")
	b.waitFor(`document.body.dataset.state === 'ready' && document.querySelectorAll('#requests tbody tr').length === 2`)

	// "Load more" appends the next page and disappears on the last one.
	b.eval(`document.getElementById('more').click()`)
	b.waitFor(`document.querySelectorAll('#requests tbody tr').length === 3`)
	if got := b.text("#requests tbody tr:last-child"); !strings.Contains(got, "older-model") {
		t.Errorf("the row loaded last is %q; want the older page's row", got)
	}
	b.waitFor(`document.getElementById('more').hidden`)
	if got := b.text("#requests-note"); !strings.Contains(got, "3 requests shown") {
		t.Errorf("requests note: %q", got)
	}

	// Picking 7d asks for daily groups and starts the table over.
	b.eval(`document.querySelector('#range button[data-range="7d"]').click()`)
	b.waitFor(`document.getElementById('updated').textContent.endsWith('last 7d')`)
	if !strings.Contains(strings.Join(f.requestsSeen(), "\n"), "GET /arbstr/stats?since=7d&group_by=day%2Cprovider") {
		t.Errorf("7d did not ask for day,provider groups; the page asked:\n%s", strings.Join(f.requestsSeen(), "\n"))
	}
	if got := b.text("#range button[aria-pressed=true]"); got != "7d" {
		t.Errorf("the chosen range shows as %q", got)
	}
	b.waitFor(`location.hash === '#7d' && document.querySelectorAll('#requests tbody tr').length === 2`)

	// The hostile provider name is text in the legend, and nothing ran.
	if got := b.eval(`document.title`); !strings.Contains(string(got), "arbstr") {
		t.Errorf("document.title became %s", got)
	}
	if got := string(b.eval(`document.querySelectorAll('img').length`)); got != "0" {
		t.Errorf("%s img elements on the page", got)
	}
	t.Logf("browser session took %v", time.Since(start).Round(time.Millisecond))
}
