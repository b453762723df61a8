package progress

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func readVector(t *testing.T, name string) [][]byte {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "testdata", "progress", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, MaxLineBytes), MaxLineBytes)
	for sc.Scan() {
		lines = append(lines, append([]byte(nil), sc.Bytes()...))
	}
	return lines
}

func TestValidVector(t *testing.T) {
	var kinds []string
	var last Event
	for _, l := range readVector(t, "valid.jsonl") {
		e, err := Parse(l)
		if err != nil {
			t.Fatalf("parse %s: %v", l, err)
		}
		kinds = append(kinds, e.Event)
		last = e
	}
	want := []string{"start", "eval", "step", "log", "step", "checkpoint", "eval", "done"}
	if len(kinds) != len(want) {
		t.Fatalf("events %v, want %v", kinds, want)
	}
	for i := range want {
		if kinds[i] != want[i] {
			t.Fatalf("events %v, want %v", kinds, want)
		}
	}
	if len(last.Files) != 1 || last.Files[0].SHA256 == "" || last.Metrics["eval_loss_after"] != 3.2 {
		t.Fatalf("done event: %+v", last)
	}
}

func TestErrorVector(t *testing.T) {
	lines := readVector(t, "error.jsonl")
	e, err := Parse(lines[0])
	if err != nil || e.Code != "invalid_dataset" || e.Message == "" {
		t.Fatalf("error event: %+v, %v", e, err)
	}
}

func TestToleratedVector(t *testing.T) {
	var steps []Event
	ignored := 0
	for _, l := range readVector(t, "tolerated.jsonl") {
		e, err := Parse(l)
		if errors.Is(err, ErrIgnored) {
			ignored++
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		steps = append(steps, e)
	}
	if ignored != 3 || len(steps) != 2 || steps[1].Step != 2 || *steps[1].Loss != 1.2 {
		t.Fatalf("ignored %d, steps %+v", ignored, steps)
	}
}

func TestRejectsOversizedAndOtherVersions(t *testing.T) {
	big := append([]byte(`{"v":1,"event":"log","message":"`), make([]byte, MaxLineBytes)...)
	if _, err := Parse(big); !errors.Is(err, ErrIgnored) {
		t.Fatalf("oversized line: %v", err)
	}
	if _, err := Parse([]byte(`{"v":2,"event":"step"}`)); !errors.Is(err, ErrIgnored) {
		t.Fatalf("v2 line: %v", err)
	}
}

func TestStepGPUSample(t *testing.T) {
	e, err := Parse([]byte(`{"v":1,"event":"step","time":2,"step":1,"total_steps":2,"epoch":0.5,"loss":2.5,"learning_rate":0.1,"tokens_per_second":10,"eta_seconds":1,"gpu_utilization":0.87,"gpu_memory_bytes":12884901888}`))
	if err != nil || e.GPUUtilization == nil || *e.GPUUtilization != 0.87 || e.GPUMemoryBytes == nil || *e.GPUMemoryBytes != 12<<30 {
		t.Fatalf("step with a GPU sample: %+v, %v", e, err)
	}
	e, err = Parse([]byte(`{"v":1,"event":"step","time":2,"step":1,"total_steps":2,"epoch":0.5,"loss":2.5,"learning_rate":0.1,"tokens_per_second":10,"eta_seconds":1}`))
	if err != nil || e.GPUUtilization != nil || e.GPUMemoryBytes != nil {
		t.Fatalf("step on a CPU: %+v, %v", e, err)
	}
}

func TestStderrVector(t *testing.T) {
	var got []Event
	for _, l := range readVector(t, "stderr.jsonl") {
		e, err := Parse(l)
		if err != nil {
			t.Fatalf("parse %s: %v", l, err)
		}
		got = append(got, e)
	}
	if len(got) != 5 || got[4].Event != EventError {
		t.Fatalf("events %+v", got)
	}
	for i, want := range []string{StreamStderr, "", StreamStderr, StreamStderr} {
		if got[i].Event != EventLog || got[i].Stream != want {
			t.Fatalf("event %d: %+v, want a log event of stream %q", i, got[i], want)
		}
	}
	if got[0].Message != "UserWarning: the attention mask is not set" || got[0].StderrOffset != 43 || got[3].Level != "warning" || got[1].StderrOffset != 0 {
		t.Fatalf("stderr lines: %+v", got)
	}
}
