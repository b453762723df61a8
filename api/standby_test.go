package api_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/api"
	"github.com/understudy-ai/training-service/internal/openapitest"
)

// With no leader to pass requests to, a standby answers every documented operation as the
// document says: /healthz ok with the role "standby", the document itself, and 503
// "standby" with Retry-After for the rest.
func TestStandbyWithoutALeaderAnswersEveryOperationAsDocumented(t *testing.T) {
	doc, err := openapitest.Load(api.OpenAPI())
	if err != nil {
		t.Fatal(err)
	}
	// A leader that does not answer: a port nothing listens on.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	gone := "http://" + ln.Addr().String()
	ln.Close()
	for name, leader := range map[string]string{"unknown": "", "gone": gone} {
		h := api.Standby(func() string { return leader }, nil)
		n := 0
		for path, methods := range doc.Paths() {
			concrete := strings.NewReplacer("{train_id}", "job-1", "{file}", "app.js").Replace(path)
			for _, m := range methods {
				n++
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(m, concrete, strings.NewReader("{}")))
				body := rec.Body.Bytes()
				if err := doc.ValidateResponse(m, concrete, rec.Code, rec.Header().Get("Content-Type"), body); err != nil {
					t.Errorf("%s: %s %s: %v", name, m, path, err)
				}
				switch {
				case m == http.MethodGet && path == "/healthz":
					if rec.Code != 200 || !strings.Contains(string(body), `"role": "standby"`) {
						t.Errorf("%s: healthz: %d %s", name, rec.Code, body)
					}
				case m == http.MethodGet && path == "/openapi.json":
					if rec.Code != 200 || string(body) != string(api.OpenAPI()) {
						t.Errorf("%s: openapi.json: %d", name, rec.Code)
					}
				default:
					if rec.Code != 503 || !strings.Contains(string(body), `"code": "standby"`) || rec.Header().Get("Retry-After") == "" {
						t.Errorf("%s: %s %s: %d %s (Retry-After %q), want 503 standby", name, m, path, rec.Code, body, rec.Header().Get("Retry-After"))
					}
				}
			}
		}
		if n < 15 {
			t.Fatalf("only %d operations checked", n)
		}
	}
}

// With a leader, a standby passes every request but its own /healthz on to it, as it came
// (method, path, query, headers, body), and the answer back, streams as they flow.
func TestStandbyPassesRequestsToTheLeader(t *testing.T) {
	leader := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: first\n\n")
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		json.NewEncoder(w).Encode(map[string]string{"method": r.Method, "uri": r.URL.RequestURI(),
			"auth": r.Header.Get("Authorization"), "body": string(body)})
	}))
	defer leader.Close()
	standby := httptest.NewServer(api.Standby(func() string { return leader.URL }, nil))
	defer standby.Close()

	req, _ := http.NewRequest("POST", standby.URL+"/api/v1/training/start?x=1", strings.NewReader(`{"a":1}`))
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if resp.StatusCode != 202 || got["method"] != "POST" || got["uri"] != "/api/v1/training/start?x=1" ||
		got["auth"] != "Bearer tok" || got["body"] != `{"a":1}` {
		t.Fatalf("passed on as %d %v", resp.StatusCode, got)
	}

	resp, err = http.Get(standby.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(raw), "standby") {
		t.Fatalf("the standby's healthz came from elsewhere: %s", raw)
	}

	// An event stream reaches the client as the leader flushes it, not when it ends.
	resp, err = http.Get(standby.URL + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(resp.Body).ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		if l != "data: first\n" {
			t.Fatalf("first line %q", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a streamed event was held back by the standby")
	}

	// A request a standby passed on already is never passed on again (two standbys that
	// each take the other for the leader).
	req, _ = http.NewRequest("GET", standby.URL+"/api/v1/training", nil)
	req.Header.Set("X-Understudy-Standby-Hop", "1")
	resp2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != 503 {
		t.Fatalf("a passed-on request was passed on again: %d", resp2.StatusCode)
	}
}
