package e2e

import (
	"bytes"
	"context"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/understudy-ai/training-service/internal/servicetest"
	"github.com/understudy-ai/training-service/internal/testenv"
)

// artifactsDir is where tests keep what a person may want to look at afterwards
// (UNDERSTUDY_TEST_ARTIFACTS, or build/test-artifacts in the repository).
func artifactsDir(t *testing.T) string {
	dir := os.Getenv("UNDERSTUDY_TEST_ARTIFACTS")
	if dir == "" {
		wd, _ := os.Getwd()
		dir = filepath.Join(filepath.Dir(wd), "build", "test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The dashboard as a person uses it, in headless Chromium: a wrong token is refused, the
// right one signs in (a cookie scripts cannot read, no token in the URL), the jobs table
// lists the running job, its page shows the loss curve growing, the phase timeline and
// the log tail; a screenshot of the page is kept; the cancel button ends the job and its
// machine.
func TestDashboardInChromium(t *testing.T) {
	bin, python, model := servicetest.Prerequisites(t)
	chrome, err := exec.LookPath("chromium")
	if err != nil {
		testenv.Missing(t, "Chromium is not installed (make deps installs Debian's chromium)")
	}
	s := servicetest.New(t, bin, python)
	s.Start()
	const id = "e2e-dashboard"
	dataset := servicetest.WritePairs(t, 400)
	if code := s.Request("POST", "/api/v1/training/start", startBody(id, model, dataset, 400,
		map[string]any{"epochs": 100, "max_seq_len": 64, "batch_size": 4}), nil); code != 202 {
		t.Fatalf("start: %d", code)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chrome), chromedp.WindowSize(1280, 1100))
	if os.Geteuid() == 0 {
		// Chromium's sandbox cannot run as root; the browser only visits the test's service.
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(bctx, 3*time.Minute)
	defer cancel()
	run := func(what string, actions ...chromedp.Action) {
		t.Helper()
		if what != "read the curve" {
			t.Logf("browser: %s", what)
		}
		if err := chromedp.Run(ctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	run("start Chromium", chromedp.Navigate("about:blank"))
	browser := chromedp.FromContext(ctx).Browser.Process()
	defer func() {
		// The browser is the test's own process: end it and check that it is gone.
		cancelBrowser()
		cancelAlloc()
		deadline := time.Now().Add(10 * time.Second)
		for syscall.Kill(browser.Pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if syscall.Kill(browser.Pid, 0) == nil {
			syscall.Kill(browser.Pid, syscall.SIGKILL)
			t.Errorf("Chromium (pid %d) outlived the test", browser.Pid)
		}
	}()

	base := "http://" + s.Addr
	var errText string
	run("a wrong token",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible("#token", chromedp.ByID),
		chromedp.SendKeys("#token", "not-the-token", chromedp.ByID),
		chromedp.Click(`#signin button[type="submit"]`),
		chromedp.WaitVisible("#signin-error", chromedp.ByID),
		chromedp.Text("#signin-error", &errText, chromedp.ByID))
	if !strings.Contains(errText, "not this service's API token") {
		t.Fatalf("wrong token says %q", errText)
	}

	var url, scriptCookies string
	var cookies []*network.Cookie
	run("sign in",
		chromedp.SendKeys("#token", s.Token, chromedp.ByID),
		chromedp.Click(`#signin button[type="submit"]`),
		chromedp.WaitVisible(`#jobs tr[data-train-id="`+id+`"]`),
		chromedp.Location(&url),
		chromedp.Evaluate(`document.cookie`, &scriptCookies),
		chromedp.ActionFunc(func(ctx context.Context) (err error) {
			cookies, err = network.GetCookies().Do(ctx)
			return err
		}))
	if strings.Contains(url, s.Token) {
		t.Fatalf("the token is in the URL: %s", url)
	}
	var session *network.Cookie
	for _, c := range cookies {
		if c.Name == "understudy_session" {
			session = c
		}
	}
	if session == nil || !session.HTTPOnly || session.SameSite != network.CookieSameSiteStrict || strings.Contains(session.Value, s.Token) {
		t.Fatalf("session cookie: %+v", session)
	}
	if strings.Contains(scriptCookies, "understudy_session") {
		t.Fatalf("scripts can read the session cookie: %q", scriptCookies)
	}
	// keepScreenshot saves the page as it is now among the test's artifacts.
	keepScreenshot := func(name string) {
		t.Helper()
		var shot []byte
		run("screenshot "+name, chromedp.FullScreenshot(&shot, 100))
		if _, err := png.Decode(bytes.NewReader(shot)); err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		p := filepath.Join(artifactsDir(t), name)
		if err := os.WriteFile(p, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s (%d bytes)", p, len(shot))
	}
	var row string
	run("jobs table", chromedp.Text(`#jobs tr[data-train-id="`+id+`"]`, &row))
	if !strings.Contains(row, "local") || !strings.Contains(row, "$") {
		t.Errorf("job row: %q", row)
	}
	keepScreenshot("dashboard-jobs.png")

	// The job's page: the curve grows while we watch.
	points := func() int {
		t.Helper()
		var v string
		var ok bool
		run("read the curve", chromedp.AttributeValue("#loss-chart", "data-train-points", &v, &ok, chromedp.ByID))
		n, _ := strconv.Atoi(v)
		return n
	}
	waitPoints := func(min int, within time.Duration) int {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			if n := points(); n >= min {
				return n
			}
			if time.Now().After(deadline) {
				t.Fatalf("the loss curve has %d points after %s, want %d", points(), within, min)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	run("open the job", chromedp.Click(`#jobs tr[data-train-id="`+id+`"]`), chromedp.WaitVisible("#loss-chart", chromedp.ByID),
		chromedp.WaitVisible("#loss-chart canvas"), chromedp.WaitVisible(`#timeline [data-phase="training"]`))
	first := waitPoints(3, 3*time.Minute)
	grown := waitPoints(first+3, 2*time.Minute)
	t.Logf("loss curve: %d points, then %d", first, grown)
	// The progress shown is as new as the curve, not the older status the page polled.
	var steps []int
	run("progress and curve", chromedp.Evaluate(`[
		Number((document.getElementById("progress").textContent.match(/step (\d+)\//) || [0, -1])[1]),
		Number(document.getElementById("loss-chart").dataset.lastStep)]`, &steps))
	if len(steps) != 2 || steps[1] < 1 || steps[0] < steps[1] {
		t.Errorf("progress shows step %v while the curve has reached step %v", steps[:1], steps[1:])
	}
	var logText, status string
	run("log tail and status",
		chromedp.WaitVisible(`#log`, chromedp.ByID),
		chromedp.Text("#log", &logText, chromedp.ByID),
		chromedp.Text("#job-status", &status, chromedp.ByID))
	if !strings.Contains(logText, "loss") || !strings.Contains(status, "training") {
		t.Fatalf("status %q, log:\n%s", status, logText)
	}

	keepScreenshot("dashboard-job.png")

	run("cancel",
		chromedp.Click("#cancel", chromedp.ByID),
		chromedp.WaitVisible("#cancel-confirm", chromedp.ByID),
		chromedp.Click("#cancel-confirm", chromedp.ByID))
	run("cancelled on the page", chromedp.WaitVisible(`#job-status .status-cancelled`))
	j := s.Job(id)
	if j.Status != "cancelled" {
		t.Fatalf("the API says %s: %+v", j.Status, j.Error)
	}
	assertTornDown(t, s, id)

	// A job that completed: its page shows where the weights are and the final metrics.
	const doneID = "e2e-dashboard-done"
	small := servicetest.WritePairs(t, 40)
	if code := s.Request("POST", "/api/v1/training/start", startBody(doneID, model, small, 40,
		map[string]any{"epochs": 1, "max_seq_len": 64, "batch_size": 4}), nil); code != 202 {
		t.Fatalf("start: %d", code)
	}
	done := s.WaitFor(doneID, 4*time.Minute, "completed", terminal)
	if done.Status != "completed" {
		t.Fatalf("%s ended %s: %+v", doneID, done.Status, done.Error)
	}
	var weights, metrics string
	run("a completed job's page",
		chromedp.Navigate(base+"/jobs/"+doneID),
		chromedp.WaitVisible(`#job-status .status-completed`),
		chromedp.WaitVisible("#metrics", chromedp.ByID),
		chromedp.Text("#weights", &weights, chromedp.ByID),
		chromedp.Text("#metrics", &metrics, chromedp.ByID))
	if !strings.Contains(weights, done.WeightsURI) || !strings.Contains(metrics, "eval loss") {
		t.Fatalf("weights %q (want %q), metrics:\n%s", weights, done.WeightsURI, metrics)
	}
	if n := points(); n < 1 {
		t.Errorf("the completed job's curve has %d train points", n)
	}
	// Pulumi's own output is folded for people, and there when asked for.
	var folded, unfolded string
	run("the log, with and without Pulumi's output",
		chromedp.Text("#log", &folded, chromedp.ByID),
		chromedp.Click("#show-pulumi", chromedp.ByID),
		chromedp.Text("#log", &unfolded, chromedp.ByID))
	if !strings.Contains(folded, "lines of Pulumi output") || strings.Contains(folded, "pulumi stack rm") ||
		!strings.Contains(unfolded, "pulumi stack rm") {
		t.Errorf("folded log:\n%s\nunfolded log:\n%s", folded, unfolded)
	}
	keepScreenshot("dashboard-completed.png")
	assertTornDown(t, s, doneID)

	// The jobs table pages through the API's cursor: a page of one shows the newest job,
	// and "Older jobs" adds the next.
	var shown, firstRow string
	var rows int
	run("the jobs table a page at a time",
		chromedp.Navigate(base+"/?limit=1"),
		chromedp.WaitVisible("#older-jobs", chromedp.ByID),
		chromedp.Evaluate(`document.querySelectorAll("#jobs tbody tr").length`, &rows),
		chromedp.AttributeValue(`#jobs tbody tr`, "data-train-id", &firstRow, nil))
	if rows != 1 || firstRow != doneID {
		t.Fatalf("a page of 1 shows %d rows, the first %q; want the newest job, %s", rows, firstRow, doneID)
	}
	run("older jobs",
		chromedp.Click("#older-jobs", chromedp.ByID),
		chromedp.WaitVisible(`#jobs tr[data-train-id="`+id+`"]`),
		chromedp.Evaluate(`document.querySelectorAll("#jobs tbody tr").length`, &rows),
		chromedp.Text("#jobs-shown", &shown, chromedp.ByID))
	if rows != 2 || shown != "2 newest jobs" {
		t.Fatalf("after older jobs: %d rows, %q", rows, shown)
	}

	run("sign out", chromedp.Click("#signout", chromedp.ByID), chromedp.WaitVisible("#token", chromedp.ByID),
		chromedp.ActionFunc(func(ctx context.Context) (err error) {
			cookies, err = network.GetCookies().Do(ctx)
			return err
		}))
	for _, c := range cookies {
		if c.Name == "understudy_session" {
			t.Fatalf("the session cookie outlived sign-out: %+v", c)
		}
	}
	// A copy of the signed-out cookie is refused: sign-out revoked the session.
	req, _ := http.NewRequest("GET", base+"/api/v1/training", nil)
	req.AddCookie(&http.Cookie{Name: session.Name, Value: session.Value})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a copy of the signed-out session cookie: %d, want 401", resp.StatusCode)
	}
}
