package storage

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestFileWeightsArePlainFiles(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "weights")
	w, err := OpenWeights(ctx, "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Bucket.WriteAll(ctx, "ep/v1/job/model.safetensors", []byte("abc"), nil); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "ep", "v1", "job", "model.safetensors"))
	if err != nil || string(got) != "abc" {
		t.Fatalf("stored file = %q, %v", got, err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "ep", "v1", "job"))
	if len(entries) != 1 {
		t.Fatalf("want only the object, no sidecars: %v", entries)
	}
	if w.BaseURI != "file://"+dir {
		t.Fatalf("BaseURI = %q", w.BaseURI)
	}
}

func TestRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"file://relative/path", "s4://bucket", "::"} {
		if _, err := OpenWeights(context.Background(), u); err == nil {
			t.Errorf("%q accepted", u)
		}
	}
}
