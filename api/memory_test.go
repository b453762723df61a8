package api_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"

	"github.com/understudy-ai/training-service/api"
	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/lifecycle"
)

// pairsBody generates a start body with n inline pairs of about size bytes each, as it is
// read: the test holds none of it. At mark bytes it calls atMark once.
type pairsBody struct {
	n, size, i int
	mark, read int
	atMark     func()
	buf        bytes.Buffer
	done       bool
}

func (b *pairsBody) Read(p []byte) (int, error) {
	for b.buf.Len() < len(p) && !b.done {
		switch {
		case b.i == 0 && b.buf.Len() == 0 && b.read == 0:
			fmt.Fprintf(&b.buf, `{"train_id":"big","endpoint_id":"ep-1","version":1,"training_pairs_count":%d,"slm_type":"m","source_llm":"s","provider":"local","training_pairs":[`, b.n)
		case b.i < b.n:
			if b.i > 0 {
				b.buf.WriteByte(',')
			}
			fmt.Fprintf(&b.buf, `{"prompt":"question %d %s","response":"answer"}`, b.i, bytes.Repeat([]byte{'x'}, b.size))
			b.i++
		default:
			b.buf.WriteString(`]}`)
			b.done = true
		}
	}
	n, err := b.buf.Read(p)
	b.read += n
	if b.atMark != nil && b.read >= b.mark {
		f := b.atMark
		b.atMark = nil
		f()
	}
	if err == io.EOF && !b.done {
		err = nil
	}
	return n, err
}

// heapService measures the live heap when Submit is called, after the body was read.
type heapService struct {
	api.Service
	heap uint64
}

func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func (h *heapService) Submit(ctx context.Context, req lifecycle.StartRequest) (*job.Job, bool, error) {
	h.heap = liveHeap()
	return &job.Job{Spec: req.Spec}, true, nil
}

// A start with about 50 MB of inline pairs is read with a live heap far below its size:
// the body is decoded as it arrives and the pairs spooled to disk, never held whole (the
// body used to be read whole, then decoded into fields and again into pairs).
func TestLargeStartMemoryIsBounded(t *testing.T) {
	const n, size = 100_000, 480
	svc := &heapService{}
	srv := api.New(svc, api.Options{Token: token, Providers: []string{"local"}, SpoolDir: t.TempDir()})
	base := liveHeap()
	var midHeap uint64
	body := &pairsBody{n: n, size: size, mark: 40 << 20, atMark: func() { midHeap = liveHeap() }}
	req := httptest.NewRequest(http.MethodPost, "/api/v1/training/start", body)
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, req)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("start: %d %s", rec.Code, rec.Body)
	}
	if body.read < 50<<20 {
		t.Fatalf("the body was only %d bytes", body.read)
	}
	const bound = 16 << 20
	for what, h := range map[string]uint64{"40 MB into the body": midHeap, "at submit": svc.heap} {
		grew := int64(h) - int64(base)
		t.Logf("%s: live heap grew by %.1f MiB for a %.1f MiB body", what, float64(grew)/(1<<20), float64(body.read)/(1<<20))
		if grew > bound {
			t.Errorf("%s: live heap grew by %d bytes for a %d-byte body, want under %d", what, grew, body.read, bound)
		}
	}
}
