package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/understudy-ai/training-service/dataset"
	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/lifecycle"
)

// client talks to a running service.
type client struct {
	base  string
	token string
	// tokenSource says where the token came from, to name it when the service refuses it.
	tokenSource string
	http        *http.Client
}

func newHTTPClient() *http.Client { return &http.Client{} }

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
		return resp.StatusCode, c.answerError(resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode answer: %w", err)
		}
	}
	return resp.StatusCode, nil
}

// answerError turns an error answer into an apiError; a refused token names where it came
// from.
func (c *client) answerError(status int, raw []byte) error {
	var eb struct {
		Error struct{ Code, Message string }
	}
	if json.Unmarshal(raw, &eb) != nil || eb.Error.Code == "" {
		eb.Error.Code = "http_" + strconv.Itoa(status)
		eb.Error.Message = http.StatusText(status)
	}
	e := &apiError{Status: status, Code: eb.Error.Code, Message: eb.Error.Message}
	if status == http.StatusUnauthorized && c.tokenSource != "" {
		e.Message += "; the token came from " + c.tokenSource
	}
	return e
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
	fs, cf := newFlagSet("start", "", "Submit a training job. With --follow, watch it until it ends.", stderr)
	trainID := fs.String("train-id", "", "job id (default: generated)")
	endpoint := fs.String("endpoint-id", "", "Understudy endpoint id (required)")
	version := fs.Int("version", 1, "model version")
	slm := fs.String("slm-type", "microsoft/DialoGPT-small", "small model: Hugging Face id or local model directory")
	source := fs.String("source-llm", "gpt-3.5-turbo", "the LLM whose answers are distilled")
	provider := fs.String("provider", "local", "where to train")
	datasetPath := fs.String("dataset", "", "JSONL dataset on this machine (sent as a file:// dataset_uri)")
	datasetURI := fs.String("dataset-uri", "", "dataset storage URL")
	hp := fs.String("hyperparameters", "", `hyperparameters as JSON, e.g. {"epochs":2}`)
	maxDur := fs.Int("max-duration", 0, "max_duration_seconds (0: the service's default)")
	gpuType := fs.String("gpu-type", "", "the provider's GPU type (RunPod GPU type id, Lambda instance type); default: the service's")
	spot := fs.Bool("spot", false, "ask for an interruptible (spot) machine")
	fallback := fs.Bool("on-demand-fallback", false, "with --spot, take an on-demand machine when no spot machine can be had")
	follow := fs.Bool("follow", false, "watch the job until it ends (a progress bar on a terminal); exit non-zero unless it completes")
	fs.BoolVar(follow, "wait", false, "the same as --follow")
	raw := fs.Bool("raw", false, "with --follow, print log lines as stored (progress as JSON)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("start takes no arguments, only flags: " + strings.Join(fs.Args(), " "))
	}
	if *endpoint == "" {
		return usageError("start: --endpoint-id is required")
	}
	if (*datasetPath == "") == (*datasetURI == "") {
		return usageError("start: give exactly one of --dataset (a file here) or --dataset-uri (a storage URL)")
	}
	c, err := cf.connect()
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
			return fmt.Errorf("read dataset %s: %w", *datasetPath, err)
		}
		body["dataset_uri"] = "file://" + abs
		body["training_pairs_count"] = n
	} else {
		body["dataset_uri"] = *datasetURI
	}
	model, note, err := resolveModel(*slm)
	if err != nil {
		return err
	}
	body["slm_type"] = model
	if *hp != "" {
		var v map[string]any
		if err := json.Unmarshal([]byte(*hp), &v); err != nil {
			return usageError(`start: --hyperparameters must be a JSON object, e.g. {"epochs":2}`)
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
	if cf.json && !*follow {
		printJSON(stdout, j)
		return nil
	}
	verb := "accepted"
	if code == http.StatusOK {
		verb = "already exists"
	}
	fmt.Fprintf(stdout, "job %s %s (%s); model %s\n", j.TrainID, verb, j.Status, note)
	if !*follow {
		fmt.Fprintf(stdout, "follow it: understudy-train logs %s\n", j.TrainID)
		return nil
	}
	return watch(ctx, c, j.TrainID, stdout, *raw, cf.json)
}

// resolveModel says what slm_type will be taken for: an existing directory here is sent as
// its absolute path (the service reads it under its --model-root); a path that does not
// exist is refused; anything else is a Hugging Face id, and the note says so.
func resolveModel(slm string) (model, note string, err error) {
	if slm == "" {
		return "", "", usageError("start: --slm-type is empty")
	}
	p := strings.TrimPrefix(slm, "file://")
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", "", err
		}
		return abs, "from the local directory " + abs, nil
	}
	if looksLikePath(slm) {
		return "", "", usageError(fmt.Sprintf("start: --slm-type %s looks like a path, but there is no such directory here; give a local model directory or a Hugging Face id such as microsoft/DialoGPT-small", slm))
	}
	return slm, slm + " (not a directory here, so taken as a Hugging Face id: the training machine downloads it)", nil
}

func looksLikePath(s string) bool {
	return strings.HasPrefix(s, "file://") || strings.HasPrefix(s, "/") || strings.HasPrefix(s, "./") ||
		strings.HasPrefix(s, "../") || strings.HasPrefix(s, "~") || strings.Count(s, "/") > 1
}

func clientStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cf := newFlagSet("status", "<train_id>", "Show a job: a summary, or with --json the whole status document.", stderr)
	id, err := oneID(fs, args)
	if err != nil {
		return err
	}
	c, err := cf.connect()
	if err != nil {
		return err
	}
	var doc json.RawMessage
	if _, err := c.do(ctx, http.MethodGet, statusPath(id), nil, &doc); err != nil {
		return err
	}
	if cf.json {
		var v any
		json.Unmarshal(doc, &v)
		printJSON(stdout, v)
		return nil
	}
	var j job.Job
	if err := json.Unmarshal(doc, &j); err != nil {
		return fmt.Errorf("decode status: %w", err)
	}
	printSummary(stdout, &j)
	return nil
}

func statusPath(id string) string { return "/api/v1/training/" + url.PathEscape(id) + "/status" }

// printSummary prints what a person wants to know of a job, one fact a line.
func printSummary(w io.Writer, j *job.Job) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, args...)...) }
	row("job", "%s", j.TrainID)
	row("status", "%s", j.Status)
	row("endpoint", "%s v%d", j.EndpointID, j.Version)
	row("model", "%s", j.SLMType)
	where := j.Provider
	if j.Machine != nil && j.Machine.GPU != "" {
		where += ", " + j.Machine.GPU
	}
	row("provider", "%s", where)
	if p := j.Progress; p.TotalSteps > 0 {
		line := fmt.Sprintf("step %d/%d", p.Step, p.TotalSteps)
		if p.Loss != nil {
			line += fmt.Sprintf(", loss %.4f", *p.Loss)
		}
		if p.TokensPerSecond > 0 {
			line += fmt.Sprintf(", %s tokens/s", humanCount(p.TokensPerSecond))
		}
		if p.ETASeconds != nil && !j.Status.Terminal() {
			line += ", ETA " + (time.Duration(*p.ETASeconds) * time.Second).String()
		}
		row("progress", "%s", line)
	}
	row("cost", "$%.4f", j.CostUSD)
	if start, ok := j.Timestamps[job.StatusQueued]; ok {
		end := time.Now()
		for _, s := range []job.Status{job.StatusCompleted, job.StatusFailed, job.StatusCancelled} {
			if t, ok := j.Timestamps[s]; ok {
				end = t
			}
		}
		row("duration", "%s", end.Sub(start).Round(time.Second))
	}
	if j.WeightsURI != "" {
		row("weights", "%s", j.WeightsURI)
	}
	if j.CheckpointURI != "" {
		row("checkpoint", "%s", j.CheckpointURI)
	}
	if j.Error != nil {
		row("error", "%s: %s", j.Error.Code, j.Error.Message)
	}
	tw.Flush()
}

func clientCancel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cf := newFlagSet("cancel", "<train_id>", "Cancel a job: its machine is stopped and torn down.", stderr)
	id, err := oneID(fs, args)
	if err != nil {
		return err
	}
	c, err := cf.connect()
	if err != nil {
		return err
	}
	var j job.Job
	if _, err := c.do(ctx, http.MethodPost, "/api/v1/training/"+url.PathEscape(id)+"/cancel", nil, &j); err != nil {
		return err
	}
	if cf.json {
		printJSON(stdout, j)
		return nil
	}
	fmt.Fprintf(stdout, "cancelling %s (was %s)\n", j.TrainID, j.Status)
	return nil
}

func clientLogs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cf := newFlagSet("logs", "<train_id>", "Follow a job's log and progress until it ends (a progress bar on a terminal).", stderr)
	raw := fs.Bool("raw", false, "print log lines as stored (progress as JSON)")
	id, err := oneID(fs, args)
	if err != nil {
		return err
	}
	c, err := cf.connect()
	if err != nil {
		return err
	}
	return watch(ctx, c, id, stdout, *raw, cf.json)
}

func clientList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cf := newFlagSet("list", "", "List jobs, newest first.", stderr)
	status := fs.String("status", "", "comma-separated statuses")
	endpoint := fs.String("endpoint-id", "", "only this endpoint's jobs")
	limit := fs.Int("limit", 50, "page size")
	cursor := fs.String("cursor", "", "page cursor from a previous list")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, err := cf.connect()
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
	if cf.json {
		printJSON(stdout, out)
		return nil
	}
	printJobs(stdout, out.Jobs)
	if out.NextCursor != "" {
		fmt.Fprintf(stdout, "more: --cursor %s\n", out.NextCursor)
	}
	return nil
}

func clientStacks(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "gc" {
		return clientStacksGC(ctx, args[1:], stdout, stderr)
	}
	fs, cf := newFlagSet("stacks", "", "List the Pulumi stacks and the jobs that own them (stacks gc: machines no stack owns).", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, err := cf.connect()
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
	if cf.json {
		printJSON(stdout, out)
		return nil
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
	fs, cf := newFlagSet("stacks gc", "", "List machines and keys at the clouds that carry the service's name but belong to no stack; --yes removes them.", stderr)
	yes := fs.Bool("yes", false, "terminate what is listed (without it, only list)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("stacks gc takes no arguments")
	}
	c, err := cf.connect()
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
	if cf.json {
		printJSON(stdout, res)
		return nil
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
