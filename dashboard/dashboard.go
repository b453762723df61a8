// Package dashboard serves the web dashboard: a small front-end (Preact and uPlot, built
// from web/ with esbuild by the Makefile into dist/) embedded in the binary. It talks to the
// service's REST API with the session cookie that api sets at sign-in; this package only
// serves the files.
package dashboard

import (
	"bytes"
	"embed"
	"io/fs"
	"net/http"
	"path"
	"time"
)

//go:embed all:dist
var dist embed.FS

// Files the build writes.
const (
	indexFile  = "index.html"
	scriptFile = "app.js"
	styleFile  = "app.css"
)

// notBuilt is the error of a binary compiled without the front-end.
type notBuilt struct{}

func (notBuilt) Error() string {
	return "the dashboard was not built into this binary: run `make build` (it runs npm in dashboard/web) and rebuild"
}

// Built says whether the front-end was embedded: nil, or an error that says how to build it.
func Built() error {
	for _, f := range []string{indexFile, scriptFile, styleFile} {
		if _, err := fs.Stat(dist, path.Join("dist", f)); err != nil {
			return notBuilt{}
		}
	}
	return nil
}

// CSP is the dashboard's content security policy: its own scripts and styles only, no
// frames, and requests to its own origin only.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Handler serves the page (for "/" and every client-side route) and its assets.
type Handler struct {
	files   fs.FS
	started time.Time
}

// New returns the dashboard's handler.
func New() *Handler {
	sub, _ := fs.Sub(dist, "dist")
	return &Handler{files: sub, started: time.Now()}
}

// Page serves index.html, whatever the path: the front-end routes by itself.
func (h *Handler) Page(w http.ResponseWriter, r *http.Request) {
	h.serve(w, r, indexFile, "text/html; charset=utf-8", "no-cache")
}

// Asset serves app.js or app.css; any other name is a 404.
func (h *Handler) Asset(w http.ResponseWriter, r *http.Request, name string) {
	switch name {
	case scriptFile:
		h.serve(w, r, name, "text/javascript; charset=utf-8", "no-cache")
	case styleFile:
		h.serve(w, r, name, "text/css; charset=utf-8", "no-cache")
	default:
		http.Error(w, "no such asset", http.StatusNotFound)
	}
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request, name, ctype, cache string) {
	b, err := fs.ReadFile(h.files, name)
	if err != nil {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(notBuilt{}.Error() + "\n"))
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", ctype)
	hd.Set("Cache-Control", cache)
	hd.Set("Content-Security-Policy", CSP)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	// The embedded files change only with the binary: its start time is their version.
	http.ServeContent(w, r, name, h.started, bytes.NewReader(b))
}
