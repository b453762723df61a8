package api_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/understudy-ai/training-service/api"
	"github.com/understudy-ai/training-service/internal/openapitest"
)

// A standby answers every documented operation as the document says: /healthz ok with the
// role "standby", the document itself, and 503 "standby" with Retry-After for the rest.
func TestStandbyAnswersEveryOperationAsDocumented(t *testing.T) {
	doc, err := openapitest.Load(api.OpenAPI())
	if err != nil {
		t.Fatal(err)
	}
	h := api.Standby()
	n := 0
	for path, methods := range doc.Paths() {
		concrete := strings.NewReplacer("{train_id}", "job-1", "{file}", "app.js").Replace(path)
		for _, m := range methods {
			n++
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(m, concrete, strings.NewReader("{}")))
			body := rec.Body.Bytes()
			if err := doc.ValidateResponse(m, concrete, rec.Code, rec.Header().Get("Content-Type"), body); err != nil {
				t.Errorf("%s %s: %v", m, path, err)
			}
			switch {
			case m == http.MethodGet && path == "/healthz":
				if rec.Code != 200 || !strings.Contains(string(body), `"role": "standby"`) {
					t.Errorf("healthz: %d %s", rec.Code, body)
				}
			case m == http.MethodGet && path == "/openapi.json":
				if rec.Code != 200 || string(body) != string(api.OpenAPI()) {
					t.Errorf("openapi.json: %d", rec.Code)
				}
			default:
				if rec.Code != 503 || !strings.Contains(string(body), `"code": "standby"`) || rec.Header().Get("Retry-After") == "" {
					t.Errorf("%s %s: %d %s (Retry-After %q), want 503 standby", m, path, rec.Code, body, rec.Header().Get("Retry-After"))
				}
			}
		}
	}
	if n < 15 {
		t.Fatalf("only %d operations checked", n)
	}
}
