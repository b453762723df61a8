package main

import (
	"flag"
	"os"
	"strings"
	"testing"
	"time"
)

func TestLimitsFlags(t *testing.T) {
	dir := t.TempDir()
	other := t.TempDir()
	file := dir + "/f"
	os.WriteFile(file, nil, 0o600)
	t.Setenv("UNDERSTUDY_DATASET_ROOTS", "/from/env")
	var l Limits
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	if err := l.register(fs); err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse([]string{"--dataset-root", dir + "," + other, "--dataset-root", dir, "--model-root", other, "--max-queued", "7"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(l.DatasetRoots) != 3 || l.DatasetRoots[1] != other || len(l.ModelRoots) != 1 || l.MaxQueued != 7 ||
		l.MaxDatasetBytes != 1<<30 || l.MaxDatasetRecords != 1_000_000 || l.MaxPairs != 200_000 || l.MaxStreams != 256 || l.DefaultMaxDuration != 24*time.Hour {
		t.Fatalf("%+v", l)
	}
	for _, c := range []struct {
		args []string
		flag string
	}{
		{[]string{"--dataset-root", dir + "/nope"}, "--dataset-root"},
		{[]string{"--model-root", file}, "--model-root"},
		{[]string{"--max-pairs", "-1"}, "--max-pairs"},
		{[]string{"--default-max-duration", "-1s"}, "--default-max-duration"},
	} {
		t.Setenv("UNDERSTUDY_DATASET_ROOTS", "")
		var l Limits
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		l.register(fs)
		fs.Parse(c.args)
		if err := l.Validate(); err == nil || !strings.Contains(err.Error(), c.flag) {
			t.Errorf("%v: %v, want an error naming %s", c.args, err, c.flag)
		}
	}
	// The environment's roots stand when no flag is given.
	t.Setenv("UNDERSTUDY_DATASET_ROOTS", "/from/env")
	var env Limits
	fs = flag.NewFlagSet("serve", flag.ContinueOnError)
	env.register(fs)
	fs.Parse(nil)
	if len(env.DatasetRoots) != 1 || env.DatasetRoots[0] != "/from/env" {
		t.Fatalf("env roots: %v", env.DatasetRoots)
	}
}
