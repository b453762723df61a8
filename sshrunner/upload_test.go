package sshrunner_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/understudy-ai/training-service/sshrunner/sshdtest"
)

func TestUpload(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	ctx := testContext(t)

	fsys := fstest.MapFS{
		"run.sh":                {Data: []byte("#!/bin/sh\necho ran \"$@\"\n"), Mode: 0o755},
		"pkg/__init__.py":       {Data: []byte(""), Mode: 0o644},
		"pkg/train.py":          {Data: []byte("print('train')\n"), Mode: 0o644},
		"pkg/data/readonly.txt": {Data: []byte("do not touch\n"), Mode: 0o444},
		"big.bin":               {Data: []byte(strings.Repeat("0123456789abcdef", 200_000)), Mode: 0o600},
		"empty":                 {Mode: fs.ModeDir | 0o755},
	}
	remote := filepath.Join(t.TempDir(), "job", "runtime")
	if err := c.Upload(ctx, fsys, remote); err != nil {
		t.Fatalf("Upload: %v", err)
	}
	// Twice: files from the first upload, read-only ones included, are replaced.
	if err := c.Upload(ctx, fsys, remote); err != nil {
		t.Fatalf("second Upload: %v", err)
	}

	for name, f := range fsys {
		local := filepath.Join(remote, filepath.FromSlash(name))
		info, err := os.Stat(local)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if f.Mode.IsDir() {
			if !info.IsDir() {
				t.Errorf("%s is not a directory", name)
			}
			continue
		}
		if info.Mode().Perm() != f.Mode.Perm() {
			t.Errorf("%s: mode %v, want %v", name, info.Mode().Perm(), f.Mode.Perm())
		}
		got, err := os.ReadFile(local)
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if string(got) != string(f.Data) {
			t.Errorf("%s: content differs (%d bytes, want %d)", name, len(got), len(f.Data))
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(remote, ".*.upload"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
	out, err := c.Run(ctx, remote+"/run.sh ok")
	if err != nil || string(out) != "ran ok\n" {
		t.Errorf("running the uploaded script: %q, %v", out, err)
	}
}

func TestUploadFile(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	ctx := testContext(t)

	local := filepath.Join(t.TempDir(), "train.jsonl")
	data := strings.Repeat(`{"prompt":"p","response":"r"}`+"\n", 50_000)
	if err := os.WriteFile(local, []byte(data), 0o640); err != nil {
		t.Fatal(err)
	}
	remote := filepath.Join(t.TempDir(), "job", "data", "train.jsonl")
	if err := c.UploadFile(ctx, local, remote); err != nil {
		t.Fatalf("UploadFile: %v", err)
	}
	got, err := os.ReadFile(remote)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != data {
		t.Errorf("content differs: %d bytes, want %d", len(got), len(data))
	}
	if info, _ := os.Stat(remote); info.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", info.Mode().Perm())
	}
}
