package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/progress"
)

// render turns one log line into what a person reads: progress events as short summaries,
// Pulumi's output cut to what happened to the resources, other streams as they are. An
// empty result means the line is not shown (it stays in the job's log: `logs --raw`).
func render(stream, text string) string {
	switch stream {
	case "progress":
	case "pulumi":
		return renderPulumi(text)
	default:
		return "[" + stream + "] " + text
	}
	e, err := progress.Parse([]byte(text))
	if err != nil {
		return "[runtime] " + text
	}
	f := func(p *float64, format string) string {
		if p == nil {
			return "-"
		}
		return fmt.Sprintf(format, *p)
	}
	switch e.Event {
	case progress.EventStart:
		return fmt.Sprintf("[train] start: %s on %s, %d steps, %d pairs used, %d skipped", e.Model, e.Device, e.TotalSteps, e.PairsUsed, e.PairsSkipped)
	case progress.EventStep:
		return fmt.Sprintf("[train] step %d/%d  epoch %.2f  loss %s  lr %s  %.0f tok/s  eta %ss",
			e.Step, e.TotalSteps, e.Epoch, f(e.Loss, "%.4f"), f(e.LearningRate, "%.2e"), e.TokensPerSecond, f(e.ETASeconds, "%.0f"))
	case progress.EventEval:
		return fmt.Sprintf("[train] eval (%s) at step %d: loss %s, perplexity %s", e.Phase, e.Step, f(e.EvalLoss, "%.4f"), f(e.Perplexity, "%.2f"))
	case progress.EventCheckpoint:
		return fmt.Sprintf("[train] checkpoint at step %d (%s)", e.Step, e.Reason)
	case progress.EventLog:
		return "[train] " + e.Message
	case progress.EventDone:
		return fmt.Sprintf("[train] done: %d files", len(e.Files))
	case progress.EventError:
		return fmt.Sprintf("[train] error %s: %s", e.Code, e.Message)
	}
	return ""
}

// A resource step in Pulumi's output: " +  understudy:index:LocalWorker worker created (1s)".
var pulumiStep = regexp.MustCompile(`^\s*([+\-~]|\+-|-\+)\s+(\S+)\s+(\S+)\s+(created|deleted|updated|replaced|creating failed|deleting failed|updating failed)\b(.*)$`)

// renderPulumi keeps, of Pulumi's output, the resources created, deleted or replaced and
// the errors; previews, outputs, summaries and advice (such as running `pulumi stack rm`,
// which the service does itself) are left to the job's log.
func renderPulumi(text string) string {
	if m := pulumiStep.FindStringSubmatch(text); m != nil {
		typ := m[2][strings.LastIndex(m[2], ":")+1:]
		return fmt.Sprintf("[pulumi] %s %s %s%s", typ, m[3], m[4], strings.TrimRight(m[5], " "))
	}
	if t := strings.TrimSpace(text); strings.HasPrefix(t, "error:") {
		return "[pulumi] " + t
	}
	return ""
}

// watch follows a job's log until it ends, then says where its weights are. On a terminal
// progress steps redraw one bar; elsewhere (or with raw) every line is printed. It returns
// jobFailed unless the job completes; interrupted, it says how to re-attach or cancel.
func watch(ctx context.Context, c *client, id string, stdout io.Writer, raw, asJSON bool) error {
	bar := !raw && !asJSON && isTerminal(stdout)
	err := followLogs(ctx, c, id, stdout, raw, bar)
	if ctx.Err() != nil {
		fmt.Fprintf(stdout, "\nstopped following %s; the job keeps running. Re-attach: understudy-train logs %s; cancel: understudy-train cancel %s\n", id, id, id)
		return ctx.Err()
	}
	var fe *followEnd
	if !errors.As(err, &fe) {
		return err
	}
	var j job.Job
	if _, serr := c.do(context.WithoutCancel(ctx), http.MethodGet, statusPath(id), nil, &j); serr != nil {
		return serr
	}
	if asJSON {
		printJSON(stdout, j)
	} else {
		printSummary(stdout, &j)
	}
	if j.Status != job.StatusCompleted {
		msg := string(j.Status)
		if j.Error != nil {
			msg += ": " + j.Error.Code + ": " + j.Error.Message
		}
		return jobFailed("job " + id + " ended " + msg)
	}
	return nil
}

// followEnd is how followLogs reports that the stream said the job ended.
type followEnd struct{ status job.Status }

func (e *followEnd) Error() string { return "job ended " + string(e.status) }

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// followLogs prints a job's log stream until its end event (returned as *followEnd).
func followLogs(ctx context.Context, c *client, id string, stdout io.Writer, raw, bar bool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/api/v1/training/"+url.PathEscape(id)+"/logs", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("reach the service at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		return c.answerError(resp.StatusCode, body)
	}
	p := &printer{w: stdout, bar: bar, cost: func() float64 {
		var j job.Job
		if _, err := c.do(ctx, http.MethodGet, statusPath(id), nil, &j); err != nil {
			return -1
		}
		return j.CostUSD
	}}
	defer p.endBar()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var event string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data := strings.TrimPrefix(line, "data: ")
			switch event {
			case "log":
				var l struct{ Stream, Text string }
				json.Unmarshal([]byte(data), &l)
				if raw {
					fmt.Fprintf(stdout, "[%s] %s\n", l.Stream, l.Text)
				} else {
					p.line(l.Stream, l.Text)
				}
			case "end":
				var v struct{ Status job.Status }
				json.Unmarshal([]byte(data), &v)
				return &followEnd{status: v.Status}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read log stream: %w", err)
	}
	return fmt.Errorf("the log stream of %s ended before the job did; re-attach: understudy-train logs %s", id, id)
}

// printer prints rendered lines; with bar, training steps redraw one line instead.
type printer struct {
	w      io.Writer
	bar    bool
	drawn  bool
	cost   func() float64
	costAt time.Time
	usd    float64
}

func (p *printer) line(stream, text string) {
	if p.bar && stream == "progress" {
		if e, err := progress.Parse([]byte(text)); err == nil && e.Event == progress.EventStep {
			p.drawBar(e)
			return
		}
	}
	if out := render(stream, text); out != "" {
		p.endBar()
		fmt.Fprintln(p.w, out)
	}
}

func (p *printer) endBar() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

// drawBar redraws the progress line: step/total, loss, tokens/s, ETA and the cost so far
// (read from the job's status at most every 5 s).
func (p *printer) drawBar(e progress.Event) {
	if time.Since(p.costAt) > 5*time.Second && p.cost != nil {
		p.usd, p.costAt = p.cost(), time.Now()
	}
	fmt.Fprint(p.w, "\r"+progressBar(e, p.usd)+"\x1b[K")
	p.drawn = true
}

func progressBar(e progress.Event, usd float64) string {
	const width = 24
	frac := 0.0
	if e.TotalSteps > 0 {
		frac = min(1, float64(e.Step)/float64(e.TotalSteps))
	}
	filled := int(frac * width)
	bar := strings.Repeat("=", filled) + strings.Repeat(" ", width-filled)
	if filled < width {
		bar = strings.Repeat("=", filled) + ">" + strings.Repeat(" ", width-filled-1)
	}
	s := fmt.Sprintf("[%s] %d/%d %3.0f%%", bar, e.Step, e.TotalSteps, 100*frac)
	if e.Loss != nil {
		s += fmt.Sprintf("  loss %.4f", *e.Loss)
	}
	s += "  " + humanCount(e.TokensPerSecond) + " tok/s"
	if e.ETASeconds != nil {
		s += "  ETA " + (time.Duration(*e.ETASeconds) * time.Second).String()
	}
	if usd >= 0 {
		s += fmt.Sprintf("  $%.4f", usd)
	}
	return s
}

// humanCount writes 1234567 as 1.2M.
func humanCount(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fK", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// printJobs prints an aligned table of jobs; a failed job shows its error code.
func printJobs(w io.Writer, jobs []job.Job) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TRAIN_ID\tENDPOINT\tVERSION\tPROVIDER\tSTATUS\tSTEP\tCOST\tCREATED\tERROR")
	for _, j := range jobs {
		errText := "-"
		if j.Error != nil {
			errText = j.Error.Code
			if len(j.Error.Message) > 0 {
				msg := j.Error.Message
				if len(msg) > 60 {
					msg = msg[:57] + "..."
				}
				errText += ": " + msg
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d/%d\t$%.4f\t%s\t%s\n", j.TrainID, j.EndpointID, j.Version, j.Provider, j.Status,
			j.Progress.Step, j.Progress.TotalSteps, j.CostUSD, j.CreatedAt.Local().Format("2006-01-02 15:04"), errText)
	}
	tw.Flush()
}
