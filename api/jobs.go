package api

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/lifecycle"
	"github.com/understudy-ai/training-service/store"
)

func trainID(r *http.Request) (string, error) {
	id := mux.Vars(r)["train_id"]
	if !job.IDPattern.MatchString(id) {
		return "", fail(job.CodeNotFound, "job_not_found", "no job with train_id "+strconv.Quote(id))
	}
	return id, nil
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	id, err := trainID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	j, err := s.svc.Get(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, j)
}

func (s *Server) cancel(w http.ResponseWriter, r *http.Request) {
	id, err := trainID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	j, err := s.svc.Cancel(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, j)
}

func (s *Server) completed(w http.ResponseWriter, r *http.Request) {
	id, err := trainID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// Anyone can reach this endpoint: a body that trickles in must not hold the connection
	// for the server's whole read timeout.
	http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.completedRead))
	tok, ok := bearer(r)
	if !ok {
		s.writeError(w, r, fail(job.CodeUnauthenticated, "unauthenticated", "the job's completion token is required"))
		return
	}
	var body struct {
		ExitCode *int `json:"exit_code"`
	}
	raw, _ := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if len(strings.TrimSpace(string(raw))) > 0 {
		if err := json.Unmarshal(raw, &body); err != nil {
			s.writeError(w, r, malformed("invalid_json", "the body must be a JSON object like {\"exit_code\": 0}"))
			return
		}
	}
	j, err := s.svc.Complete(r.Context(), id, tok, body.ExitCode)
	if err != nil {
		// An unknown job and a wrong token look the same to the caller.
		if c := job.CodeOf(err); c == job.CodeNotFound || c == job.CodeUnauthenticated {
			err = fail(job.CodeUnauthenticated, "invalid_completion_token", "the completion token is not valid for this job")
		}
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"train_id": j.TrainID, "status": j.Status})
}

// ListResponse is the body of GET /api/v1/training.
type ListResponse struct {
	Jobs       []*job.Job `json:"jobs"`
	NextCursor string     `json:"next_cursor,omitempty"`
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p := store.JobListParams{EndpointID: q.Get("endpoint_id"), Cursor: q.Get("cursor")}
	for _, v := range q["status"] {
		for _, st := range strings.Split(v, ",") {
			st = strings.TrimSpace(st)
			if st == "" {
				continue
			}
			if !job.Status(st).Valid() {
				s.writeError(w, r, invalid("invalid_status", "unknown status %q", st))
				return
			}
			p.Statuses = append(p.Statuses, job.Status(st))
		}
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > store.MaxLimit {
			s.writeError(w, r, invalid("invalid_limit", "limit must be an integer from 1 to %d", store.MaxLimit))
			return
		}
		p.Limit = n
	}
	jobs, next, err := s.svc.List(r.Context(), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if jobs == nil {
		jobs = []*job.Job{}
	}
	writeJSON(w, http.StatusOK, ListResponse{Jobs: jobs, NextCursor: next})
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	id, err := trainID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	evs, err := s.svc.Events(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if evs == nil {
		evs = []job.Event{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"train_id": id, "events": evs})
}

func (s *Server) stacks(w http.ResponseWriter, r *http.Request) {
	st, err := s.svc.Stacks(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"stacks": st})
}

// orphans lists what the service made at its clouds that no stack tracks.
func (s *Server) orphans(w http.ResponseWriter, r *http.Request) {
	list, err := s.svc.Orphans(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if list == nil {
		list = []lifecycle.CloudMachine{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"orphans": list})
}

// collect removes what orphans lists.
func (s *Server) collect(w http.ResponseWriter, r *http.Request) {
	res, err := s.svc.CollectOrphans(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if res.Orphans == nil {
		res.Orphans = []lifecycle.CloudMachine{}
	}
	// What could not be removed is listed in failed; the caller decides what that means.
	writeJSON(w, http.StatusOK, res)
}
