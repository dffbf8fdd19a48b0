package dashboard

import (
	"context"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// The charts are painted, not only present in the DOM: a screenshot of the
// filled dashboard holds the providers' bar colours. With
// ARBSTR_DASHBOARD_SCREENSHOT=path the screenshot is kept there (docs use it).
func TestDashboardInBrowserScreenshot(t *testing.T) {
	needChromium(t)
	f := filledFixtureNamed(t, "fastmodels")
	shot := filepath.Join(t.TempDir(), "dashboard.png")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{}, chromiumFlags...)
	args = append(args, "--user-data-dir="+t.TempDir(), "--virtual-time-budget=3000",
		"--hide-scrollbars", "--force-device-scale-factor=1", "--window-size=1280,1500",
		"--screenshot="+shot, f.URL+"/arbstr/dashboard")
	start := time.Now()
	if out, err := exec.CommandContext(ctx, chromiumPath, args...).CombinedOutput(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
	t.Logf("chromium --screenshot took %v", time.Since(start).Round(time.Millisecond))

	file, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	img, err := png.Decode(file)
	if err != nil {
		t.Fatalf("the screenshot is not a PNG: %v", err)
	}
	// Pixels of the first two palette colours: the bars of "cheapcloud" and
	// of the second provider in the spend and saved charts.
	want := map[[3]uint8]string{{0x2f, 0x5f, 0xd0}: "first provider", {0xe0, 0x7b, 0x24}: "second provider"}
	count := map[[3]uint8]int{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			c := [3]uint8{uint8(r >> 8), uint8(g >> 8), uint8(bl >> 8)}
			if _, ok := want[c]; ok {
				count[c]++
			}
		}
	}
	for c, who := range want {
		// A bar of the spend chart alone is some 20 × 50 pixels.
		if count[c] < 500 {
			t.Errorf("the screenshot has %d pixels of the %s's colour #%02x%02x%02x; want bars of it", count[c], who, c[0], c[1], c[2])
		}
	}
	if keep := os.Getenv("ARBSTR_DASHBOARD_SCREENSHOT"); keep != "" {
		data, err := os.ReadFile(shot)
		if err == nil {
			err = os.WriteFile(keep, data, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}
