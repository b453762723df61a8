package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/understudy-ai/training-service/dataset"
	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/lifecycle"
	"github.com/understudy-ai/training-service/progress"
)

// client talks to a running service.
type client struct {
	base  string
	token string
	http  *http.Client
}

func clientFlags(name string, stderr io.Writer) (*flag.FlagSet, *string, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	u := fs.String("url", envOr("UNDERSTUDY_URL", "http://127.0.0.1:8080"), "service URL")
	tf := fs.String("token-file", os.Getenv("UNDERSTUDY_API_TOKEN_FILE"), "file holding the API token (default $UNDERSTUDY_API_TOKEN, else ./.understudy/api-token)")
	return fs, u, tf
}

func newClient(base, tokenFile string) (*client, error) {
	tok := strings.TrimSpace(os.Getenv("UNDERSTUDY_API_TOKEN"))
	if tok == "" {
		p := tokenFile
		if p == "" {
			p = filepath.Join(envOr("UNDERSTUDY_DATA_DIR", ".understudy"), "api-token")
		}
		t, err := readSecretFile(p)
		if err != nil {
			return nil, usageError("no API token: set UNDERSTUDY_API_TOKEN or --token-file (" + err.Error() + ")")
		}
		tok = t
	}
	return &client{base: strings.TrimRight(base, "/"), token: tok, http: &http.Client{}}, nil
}

// apiError is an error answer of the service.
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string { return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Code) }

func (c *client) do(ctx context.Context, method, path string, body any, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("reach the service at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode >= 400 {
		var eb struct {
			Error struct{ Code, Message string }
		}
		json.Unmarshal(raw, &eb)
		return resp.StatusCode, &apiError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode answer: %w", err)
		}
	}
	return resp.StatusCode, nil
}

func printJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// checkDataset checks a local dataset as the service will, and counts its records.
func checkDataset(ctx context.Context, path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	res, err := dataset.Copy(ctx, io.Discard, f)
	if err != nil {
		return 0, errors.New(job.MessageOf(err))
	}
	return res.Records, nil
}

func clientStart(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, u, tf := clientFlags("start", stderr)
	trainID := fs.String("train-id", "", "job id (default: generated)")
	endpoint := fs.String("endpoint-id", "", "Understudy endpoint id (required)")
	version := fs.Int("version", 1, "model version")
	slm := fs.String("slm-type", "microsoft/DialoGPT-small", "small model: Hugging Face id or local model directory")
	source := fs.String("source-llm", "gpt-3.5-turbo", "the LLM whose answers are distilled")
	provider := fs.String("provider", "local", "where to train")
	datasetPath := fs.String("dataset", "", "JSONL dataset on this machine (sent as a file:// dataset_uri)")
	datasetURI := fs.String("dataset-uri", "", "dataset storage URL")
	hp := fs.String("hyperparameters", "", `hyperparameters as JSON, e.g. {"epochs":2}`)
	maxDur := fs.Int("max-duration", 0, "max_duration_seconds (0: none)")
	gpuType := fs.String("gpu-type", "", "the provider's GPU type (RunPod GPU type id, Lambda instance type); default: the service's")
	spot := fs.Bool("spot", false, "ask for an interruptible (spot) machine")
	fallback := fs.Bool("on-demand-fallback", false, "with --spot, take an on-demand machine when no spot machine can be had")
	wait := fs.Bool("wait", false, "follow the job's log until it ends; exit non-zero unless it completes")
	raw := fs.Bool("raw", false, "with --wait, print log lines as stored (progress as JSON)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *endpoint == "" {
		return usageError("start: --endpoint-id is required")
	}
	if (*datasetPath == "") == (*datasetURI == "") {
		return usageError("start: give exactly one of --dataset or --dataset-uri")
	}
	c, err := newClient(*u, *tf)
	if err != nil {
		return err
	}
	body := map[string]any{
		"endpoint_id": *endpoint, "version": *version, "slm_type": *slm,
		"source_llm": *source, "provider": *provider,
	}
	if *trainID == "" {
		*trainID = fmt.Sprintf("job-%s-%s", time.Now().UTC().Format("20060102-150405"), randomHex(3))
	}
	body["train_id"] = *trainID
	if *gpuType != "" {
		body["gpu_type"] = *gpuType
	}
	if *spot {
		body["spot"] = true
	}
	if *fallback {
		body["on_demand_fallback"] = true
	}
	if *datasetPath != "" {
		abs, err := filepath.Abs(*datasetPath)
		if err != nil {
			return err
		}
		n, err := checkDataset(ctx, abs)
		if err != nil {
			return fmt.Errorf("read dataset: %w", err)
		}
		body["dataset_uri"] = "file://" + abs
		body["training_pairs_count"] = n
	} else {
		body["dataset_uri"] = *datasetURI
	}
	if *slm != "" {
		if st, err := os.Stat(*slm); err == nil && st.IsDir() {
			abs, _ := filepath.Abs(*slm)
			body["slm_type"] = abs
		}
	}
	if *hp != "" {
		var v map[string]any
		if err := json.Unmarshal([]byte(*hp), &v); err != nil {
			return usageError("start: --hyperparameters must be a JSON object")
		}
		body["hyperparameters"] = v
	}
	if *maxDur > 0 {
		body["max_duration_seconds"] = *maxDur
	}
	var j job.Job
	code, err := c.do(ctx, http.MethodPost, "/api/v1/training/start", body, &j)
	if err != nil {
		return err
	}
	verb := "accepted"
	if code == http.StatusOK {
		verb = "already exists"
	}
	fmt.Fprintf(stdout, "job %s %s (%s)\n", j.TrainID, verb, j.Status)
	if !*wait {
		return nil
	}
	return followLogs(ctx, c, j.TrainID, stdout, *raw)
}

func oneID(fs *flag.FlagSet, args []string, name string) (string, error) {
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if fs.NArg() != 1 {
		return "", usageError(name + ": give exactly one train_id")
	}
	return fs.Arg(0), nil
}

func clientStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, u, tf := clientFlags("status", stderr)
	id, err := oneID(fs, args, "status")
	if err != nil {
		return err
	}
	c, err := newClient(*u, *tf)
	if err != nil {
		return err
	}
	var v any
	if _, err := c.do(ctx, http.MethodGet, "/api/v1/training/"+url.PathEscape(id)+"/status", nil, &v); err != nil {
		return err
	}
	printJSON(stdout, v)
	return nil
}

func clientCancel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, u, tf := clientFlags("cancel", stderr)
	id, err := oneID(fs, args, "cancel")
	if err != nil {
		return err
	}
	c, err := newClient(*u, *tf)
	if err != nil {
		return err
	}
	var j job.Job
	if _, err := c.do(ctx, http.MethodPost, "/api/v1/training/"+url.PathEscape(id)+"/cancel", nil, &j); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "cancelling %s (was %s)\n", j.TrainID, j.Status)
	return nil
}

func clientLogs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, u, tf := clientFlags("logs", stderr)
	raw := fs.Bool("raw", false, "print log lines as stored (progress as JSON)")
	id, err := oneID(fs, args, "logs")
	if err != nil {
		return err
	}
	c, err := newClient(*u, *tf)
	if err != nil {
		return err
	}
	return followLogs(ctx, c, id, stdout, *raw)
}

// render turns one log line into what a person reads: progress events as short summaries,
// other streams as they are.
func render(stream, text string) string {
	if stream != "progress" {
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

// followLogs prints a job's log stream and returns jobFailed unless it completes. With raw,
// lines are printed as stored.
func followLogs(ctx context.Context, c *client, id string, stdout io.Writer, raw bool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/api/v1/training/"+url.PathEscape(id)+"/logs", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("reach the service: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("logs: %s: %s", resp.Status, bytes.TrimSpace(raw))
	}
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
				} else if line := render(l.Stream, l.Text); line != "" {
					fmt.Fprintln(stdout, line)
				}
			case "end":
				var v struct {
					Status job.Status
					Error  *job.Failure
				}
				json.Unmarshal([]byte(data), &v)
				if v.Status != job.StatusCompleted {
					msg := string(v.Status)
					if v.Error != nil {
						msg += ": " + v.Error.Code + ": " + v.Error.Message
					}
					return jobFailed("job " + id + " ended " + msg)
				}
				return nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read log stream: %w", err)
	}
	return fmt.Errorf("the log stream of %s ended before the job did", id)
}

func clientList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, u, tf := clientFlags("list", stderr)
	status := fs.String("status", "", "comma-separated statuses")
	endpoint := fs.String("endpoint-id", "", "only this endpoint's jobs")
	limit := fs.Int("limit", 50, "page size")
	cursor := fs.String("cursor", "", "page cursor from a previous list")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := newClient(*u, *tf)
	if err != nil {
		return err
	}
	q := url.Values{}
	if *status != "" {
		q.Set("status", *status)
	}
	if *endpoint != "" {
		q.Set("endpoint_id", *endpoint)
	}
	q.Set("limit", fmt.Sprint(*limit))
	if *cursor != "" {
		q.Set("cursor", *cursor)
	}
	var out struct {
		Jobs       []job.Job `json:"jobs"`
		NextCursor string    `json:"next_cursor"`
	}
	if _, err := c.do(ctx, http.MethodGet, "/api/v1/training?"+q.Encode(), nil, &out); err != nil {
		return err
	}
	if *asJSON {
		printJSON(stdout, out)
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TRAIN_ID\tENDPOINT\tVERSION\tPROVIDER\tSTATUS\tSTEP\tCREATED")
	for _, j := range out.Jobs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d/%d\t%s\n", j.TrainID, j.EndpointID, j.Version, j.Provider, j.Status,
			j.Progress.Step, j.Progress.TotalSteps, j.CreatedAt.Format(time.RFC3339))
	}
	tw.Flush()
	if out.NextCursor != "" {
		fmt.Fprintf(stdout, "more: --cursor %s\n", out.NextCursor)
	}
	return nil
}

func clientStacks(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "gc" {
		return clientStacksGC(ctx, args[1:], stdout, stderr)
	}
	fs, u, tf := clientFlags("stacks", stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := newClient(*u, *tf)
	if err != nil {
		return err
	}
	var out struct {
		Stacks []struct {
			Name      string `json:"name"`
			JobStatus string `json:"job_status"`
			Orphaned  bool   `json:"orphaned"`
		} `json:"stacks"`
	}
	if _, err := c.do(ctx, http.MethodGet, "/api/v1/stacks", nil, &out); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STACK\tJOB_STATUS\tORPHANED")
	for _, s := range out.Stacks {
		fmt.Fprintf(tw, "%s\t%s\t%v\n", s.Name, s.JobStatus, s.Orphaned)
	}
	return tw.Flush()
}

// clientStacksGC lists the machines and keys at the clouds that carry the service's name
// but belong to no stack, and with --yes removes them.
func clientStacksGC(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, u, tf := clientFlags("stacks gc", stderr)
	yes := fs.Bool("yes", false, "terminate what is listed (without it, only list)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("stacks gc takes no arguments")
	}
	c, err := newClient(*u, *tf)
	if err != nil {
		return err
	}
	var res lifecycle.GCResult
	method := http.MethodGet
	if *yes {
		method = http.MethodPost
	}
	if _, err := c.do(ctx, method, "/api/v1/stacks/gc", nil, &res); err != nil {
		return err
	}
	if len(res.Orphans) == 0 {
		fmt.Fprintln(stdout, "no orphaned machines or keys")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROVIDER\tKIND\tID\tNAME\tSTATUS\tUSD/H")
	for _, m := range res.Orphans {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.2f\n", m.Provider, m.Kind, m.ID, m.Name, m.Status, m.HourlyPriceUSD)
	}
	tw.Flush()
	if !*yes {
		fmt.Fprintf(stdout, "%d orphaned; run `understudy-train stacks gc --yes` to terminate them\n", len(res.Orphans))
		return nil
	}
	fmt.Fprintf(stdout, "removed %d\n", len(res.Removed))
	for _, f := range res.Failed {
		fmt.Fprintf(stderr, "could not remove %s %s %s: %s\n", f.Provider, f.Kind, f.ID, f.Error)
	}
	if len(res.Failed) > 0 {
		return fmt.Errorf("%d orphans could not be removed", len(res.Failed))
	}
	return nil
}
