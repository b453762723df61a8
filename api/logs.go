package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/understudy-ai/training-service/job"
)

// logs streams a job's log and progress as server-sent events until the job is terminal:
// "log" events (id = log sequence number, so Last-Event-ID resumes), "status" events when
// the status or progress changes, and one "end" event. With ?follow=false it returns the
// log so far as JSON instead.
func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	id, err := trainID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx := r.Context()
	j, err := s.svc.Get(ctx, id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var after int64
	for _, v := range []string{r.URL.Query().Get("after"), r.Header.Get("Last-Event-ID")} {
		if v == "" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			s.writeError(w, r, invalid("invalid_after", "after must be a log sequence number"))
			return
		}
		after = n
	}
	follow := true
	if v := r.URL.Query().Get("follow"); v != "" {
		if follow, err = strconv.ParseBool(v); err != nil {
			s.writeError(w, r, invalid("invalid_follow", "follow must be true or false"))
			return
		}
	}
	if !follow {
		lines, err := s.svc.Logs(ctx, id, after, 10000)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"train_id": id, "status": j.Status, "lines": lines})
		return
	}
	select {
	case s.streams <- struct{}{}:
		defer func() { <-s.streams }()
	default:
		w.Header().Set("Retry-After", "5")
		s.writeError(w, r, &job.Error{Code: job.CodeResourceExhausted, Reason: "too_many_streams",
			Message: fmt.Sprintf("%d log streams are open, the most this service serves (serve --max-streams); try again later or use ?follow=false", cap(s.streams))})
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		s.writeError(w, r, fail(job.CodeInternal, "internal", "streaming is not supported"))
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	send := func(event string, id string, v any) {
		data, _ := json.Marshal(v)
		if id != "" {
			fmt.Fprintf(w, "id: %s\n", id)
		}
		fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data)
	}
	type statusView struct {
		Status   job.Status   `json:"status"`
		Progress job.Progress `json:"progress"`
		Error    *job.Failure `json:"error,omitempty"`
	}
	var last []byte
	heartbeat := time.Now()
	for {
		lines, err := s.svc.Logs(ctx, id, after, 1000)
		if err != nil {
			return
		}
		for _, l := range lines {
			send("log", strconv.FormatInt(l.Seq, 10), l)
			after = l.Seq
		}
		j, err := s.svc.Get(ctx, id)
		if err != nil {
			return
		}
		v := statusView{Status: j.Status, Progress: j.Progress, Error: j.Error}
		if cur, _ := json.Marshal(v); string(cur) != string(last) {
			send("status", "", v)
			last = cur
		}
		if j.Status.Terminal() && len(lines) < 1000 {
			send("end", "", v)
			flusher.Flush()
			return
		}
		if time.Since(heartbeat) > 15*time.Second {
			fmt.Fprint(w, ": keep-alive\n\n")
			heartbeat = time.Now()
		}
		flusher.Flush()
		if len(lines) == 1000 {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.poll):
		}
	}
}
