package sshrunner_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"gocloud.dev/blob/fileblob"

	"github.com/understudy-ai/training-service/sshrunner"
	"github.com/understudy-ai/training-service/sshrunner/sshdtest"
)

func BenchmarkZZProf(b *testing.B) {
	srv := sshdtest.Start(b)
	for range 2 {
		dst := filepath.Join(b.TempDir(), "dst")
		os.MkdirAll(dst, 0o755)
		ctx := context.Background()
		c, _ := sshrunner.Dial(ctx, srv.Target(), nil)
		bucket, _ := fileblob.OpenBucket(dst, &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
		t := time.Now()
		if _, err := c.Download(ctx, "/tmp/expsrc/out", bucket, "out", &sshrunner.DownloadOptions{Connections: envInt("EXP_CONNS", 1), ChunkSize: envInt("EXP_CHUNK", 4<<20), ParallelFiles: envInt("EXP_PF", 4), ParallelChunks: envInt("EXP_PC", 4), Sessions: envInt("EXP_SESS", 1)}); err != nil {
			b.Fatal(err)
		}
		fmt.Println(time.Since(t))
		bucket.Close()
		c.Close()
		os.RemoveAll(dst)
	}
}

func envInt(k string, d int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil {
		return v
	}
	return d
}
