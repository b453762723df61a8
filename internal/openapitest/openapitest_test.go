package openapitest_test

import (
	"strings"
	"testing"

	"github.com/understudy-ai/training-service/internal/openapitest"
)

const doc = `{
  "openapi": "3.1.0",
  "info": {"title": "t", "version": "1"},
  "paths": {
    "/things/{id}": {
      "get": {
        "responses": {
          "200": {"description": "a thing", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}},
          "404": {"$ref": "#/components/responses/Error"}
        }
      }
    },
    "/things/new": {
      "post": {"responses": {"204": {"description": "made"}}}
    }
  },
  "components": {
    "schemas": {
      "Thing": {"type": "object", "required": ["id", "size"], "additionalProperties": false,
        "properties": {"id": {"type": "string"}, "size": {"type": "integer", "minimum": 0}, "at": {"type": "string", "format": "date-time"}}}
    },
    "responses": {
      "Error": {"description": "an error", "content": {"application/json": {"schema": {"type": "object", "required": ["error"]}}}}
    }
  }
}`

func load(t *testing.T) *openapitest.Doc {
	t.Helper()
	d, err := openapitest.Load([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Check(); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestValidateResponseAcceptsWhatMatches(t *testing.T) {
	t.Parallel()
	d := load(t)
	for _, c := range []struct {
		method, path string
		status       int
		ct, body     string
	}{
		{"GET", "/things/a1?x=1", 200, "application/json; charset=utf-8", `{"id": "a1", "size": 3, "at": "2024-01-02T03:04:05Z"}`},
		{"GET", "/things/a1", 404, "application/json", `{"error": {"code": "not_found"}}`},
		{"POST", "/things/new", 204, "", ""},
	} {
		if err := d.ValidateResponse(c.method, c.path, c.status, c.ct, []byte(c.body)); err != nil {
			t.Errorf("%s %s %d: %v", c.method, c.path, c.status, err)
		}
	}
}

func TestValidateResponseRefusesWhatDoesNot(t *testing.T) {
	t.Parallel()
	d := load(t)
	for _, c := range []struct {
		name, method, path string
		status             int
		ct, body, want     string
	}{
		{"wrong type", "GET", "/things/a1", 200, "application/json", `{"id": "a1", "size": "3"}`, "does not match"},
		{"extra field", "GET", "/things/a1", 200, "application/json", `{"id": "a1", "size": 3, "secret": "x"}`, "does not match"},
		{"missing field", "GET", "/things/a1", 200, "application/json", `{"id": "a1"}`, "does not match"},
		{"bad date", "GET", "/things/a1", 200, "application/json", `{"id": "a1", "size": 3, "at": "yesterday"}`, "does not match"},
		{"not json", "GET", "/things/a1", 200, "application/json", `<html>`, "not JSON"},
		{"undocumented status", "GET", "/things/a1", 500, "application/json", `{}`, "status not documented"},
		{"undocumented type", "GET", "/things/a1", 200, "text/plain", `hi`, "content type text/plain not documented"},
		{"undocumented method", "DELETE", "/things/a1", 200, "application/json", `{}`, "no DELETE operation"},
		{"undocumented path", "GET", "/other", 200, "application/json", `{}`, "no path"},
		{"unexpected body", "POST", "/things/new", 204, "application/json", `{}`, "no body"},
	} {
		err := d.ValidateResponse(c.method, c.path, c.status, c.ct, []byte(c.body))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error saying %q", c.name, err, c.want)
		}
	}
}

func TestLoadRefusesOtherVersions(t *testing.T) {
	t.Parallel()
	if _, err := openapitest.Load([]byte(`{"openapi": "3.0.3", "info": {}, "paths": {}}`)); err == nil {
		t.Fatal("a 3.0 document was accepted")
	}
}

func TestCheckFindsBrokenSchemas(t *testing.T) {
	t.Parallel()
	broken := strings.Replace(doc, `"#/components/schemas/Thing"`, `"#/components/schemas/Nothing"`, 1)
	d, err := openapitest.Load([]byte(broken))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Check(); err == nil {
		t.Fatal("a $ref to nothing was accepted")
	}
}

func TestPaths(t *testing.T) {
	t.Parallel()
	got := load(t).Paths()
	if len(got) != 2 || got["/things/{id}"][0] != "GET" || got["/things/new"][0] != "POST" {
		t.Fatalf("Paths() = %v", got)
	}
}
