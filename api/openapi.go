package api

import (
	_ "embed"
	"net/http"

	"github.com/gorilla/mux"
)

// openAPI is the OpenAPI 3.1 document of this API. Tests hold it to the router (every
// route and method, no more) and to the OpenAPI 3.1 schema, and the end-to-end tests check
// every response they see against it.
//
//go:embed openapi.json
var openAPI []byte

// OpenAPI returns the OpenAPI 3.1 document that GET /openapi.json serves.
func OpenAPI() []byte {
	return append([]byte(nil), openAPI...)
}

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(openAPI)
}

// Walk calls fn with each route's path template and method, for tests that hold the
// document to the router.
func (s *Server) Walk(fn func(path, method string) error) error {
	return s.router.Walk(func(route *mux.Route, router *mux.Router, ancestors []*mux.Route) error {
		path, err := route.GetPathTemplate()
		if err != nil {
			return err
		}
		methods, err := route.GetMethods()
		if err != nil {
			return err
		}
		for _, m := range methods {
			if err := fn(path, m); err != nil {
				return err
			}
		}
		return nil
	})
}
