package api_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/api"
	"github.com/understudy-ai/training-service/dashboard"
	"github.com/understudy-ai/training-service/lifecycle"
)

// request sends one request with the given headers and cookie (nil: none) and returns the
// response with its body read; JSON responses are held to the OpenAPI document.
func request(t *testing.T, e *env, method, path, body string, cookie *http.Cookie, headers map[string]string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	if cookie != nil {
		req.AddCookie(cookie)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	checkResponse(t, method, path, resp, raw)
	return resp, string(raw)
}

func sessionCookie(resp *http.Response) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == api.SessionCookie {
			return c
		}
	}
	return nil
}

var jsonType = map[string]string{"Content-Type": "application/json"}

func signIn(t *testing.T, e *env, tok string, headers map[string]string) (*http.Response, string) {
	t.Helper()
	return request(t, e, "POST", "/api/v1/session", `{"token": "`+tok+`"}`, nil, headers)
}

// The dashboard's session: the token buys an HttpOnly, SameSite=Strict cookie that holds
// no token; it reads the API, but changes nothing without the dashboard's header.
func TestDashboardSession(t *testing.T) {
	e := newEnv(t)

	resp, raw := signIn(t, e, "wrong", jsonType)
	if resp.StatusCode != 401 || !strings.Contains(raw, "invalid_token") || sessionCookie(resp) != nil {
		t.Fatalf("wrong token: %d %s %v", resp.StatusCode, raw, resp.Cookies())
	}
	if resp, raw := signIn(t, e, token, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}); resp.StatusCode != 400 || !strings.Contains(raw, "invalid_content_type") {
		t.Fatalf("a form post: %d %s", resp.StatusCode, raw)
	}
	if resp, raw := request(t, e, "POST", "/api/v1/session", `{"token": 1}`, nil, jsonType); resp.StatusCode != 400 || !strings.Contains(raw, "invalid_json") {
		t.Fatalf("bad JSON: %d %s", resp.StatusCode, raw)
	}

	resp, raw = signIn(t, e, token, jsonType)
	c := sessionCookie(resp)
	if resp.StatusCode != 200 || c == nil {
		t.Fatalf("sign in: %d %s", resp.StatusCode, raw)
	}
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure || c.Path != "/" || strings.Contains(c.Value, token) {
		t.Fatalf("cookie: %+v", c)
	}
	if c.MaxAge < int(api.SessionTTL/time.Second)-5 || c.MaxAge > int(api.SessionTTL/time.Second) {
		t.Fatalf("cookie lifetime: %d", c.MaxAge)
	}
	// Behind a TLS-terminating proxy the cookie is Secure.
	if resp, _ := signIn(t, e, token, map[string]string{"Content-Type": "application/json", "X-Forwarded-Proto": "https"}); !sessionCookie(resp).Secure {
		t.Fatalf("behind TLS: %+v", sessionCookie(resp))
	}

	session := &http.Cookie{Name: c.Name, Value: c.Value}
	if resp, raw := request(t, e, "GET", "/api/v1/training", "", session, nil); resp.StatusCode != 200 {
		t.Fatalf("read with the session: %d %s", resp.StatusCode, raw)
	}
	if code, _ := e.do(t, "POST", "/api/v1/training/start", token, body(nil)); code != 202 {
		t.Fatalf("start: %d", code)
	}
	// A cookie alone cannot change anything: another site's page could send it.
	resp, raw = request(t, e, "POST", "/api/v1/training/t1/cancel", "", session, nil)
	if resp.StatusCode != 403 || !strings.Contains(raw, "dashboard_header_required") {
		t.Fatalf("cancel without the header: %d %s", resp.StatusCode, raw)
	}
	if code, out := e.do(t, "GET", "/api/v1/training/t1/status", token, ""); code != 200 || out["cancel_requested"] != false {
		t.Fatalf("the refused cancel changed the job: %v", out)
	}
	resp, raw = request(t, e, "POST", "/api/v1/training/t1/cancel", "", session, map[string]string{api.DashboardHeader: api.DashboardHeaderValue})
	if resp.StatusCode != 202 {
		t.Fatalf("cancel from the dashboard: %d %s", resp.StatusCode, raw)
	}

	// Tampered, expired, or issued under another token: not a session.
	exp, _, _ := strings.Cut(c.Value, ".")
	for name, v := range map[string]string{
		"tampered": exp + ".AAAA" + c.Value[len(exp)+5:],
		"expired":  "1000000000." + strings.SplitN(c.Value, ".", 2)[1],
		"garbage":  "x",
	} {
		if resp, _ := request(t, e, "GET", "/api/v1/training", "", &http.Cookie{Name: c.Name, Value: v}, nil); resp.StatusCode != 401 {
			t.Errorf("%s cookie: %d", name, resp.StatusCode)
		}
	}
	rotated := newEnv(t, func(_ *lifecycle.Config, o *api.Options) { o.Token = "another-token" })
	if resp, _ := request(t, rotated, "GET", "/api/v1/training", "", session, nil); resp.StatusCode != 401 {
		t.Errorf("a session of the old token: %d", resp.StatusCode)
	}

	// Another sign-in is another session; signing one out leaves the other.
	resp, _ = signIn(t, e, token, jsonType)
	other := &http.Cookie{Name: c.Name, Value: sessionCookie(resp).Value}
	if other.Value == session.Value {
		t.Fatal("two sign-ins gave the same session")
	}
	resp, _ = request(t, e, "DELETE", "/api/v1/session", "", session, nil)
	if out := sessionCookie(resp); resp.StatusCode != 204 || out == nil || out.MaxAge >= 0 || out.Value != "" {
		t.Fatalf("sign out: %d %+v", resp.StatusCode, out)
	}
	// A copy of the signed-out cookie is refused, by this replica and by any other that
	// shares the job store.
	if resp, _ := request(t, e, "GET", "/api/v1/training", "", session, nil); resp.StatusCode != 401 {
		t.Errorf("a copy of a signed-out cookie: %d", resp.StatusCode)
	}
	replica := newEnv(t, func(_ *lifecycle.Config, o *api.Options) { o.Sessions = e.store })
	if resp, _ := request(t, replica, "GET", "/api/v1/training", "", session, nil); resp.StatusCode != 401 {
		t.Errorf("a signed-out cookie on another replica: %d", resp.StatusCode)
	}
	if resp, raw := request(t, replica, "GET", "/api/v1/training", "", other, nil); resp.StatusCode != 200 {
		t.Errorf("the other session on another replica: %d %s", resp.StatusCode, raw)
	}
	if resp, raw := request(t, e, "GET", "/api/v1/training", "", other, nil); resp.StatusCode != 200 {
		t.Errorf("the other session after the first signed out: %d %s", resp.StatusCode, raw)
	}
	// Signing out without a session only clears the cookie.
	if resp, _ := request(t, e, "DELETE", "/api/v1/session", "", nil, nil); resp.StatusCode != 204 {
		t.Errorf("sign out without a session: %d", resp.StatusCode)
	}
}

// A server given no session store keeps signed-out sessions in memory: a sign-out still
// holds for this process.
func TestSignOutWithoutAStore(t *testing.T) {
	e := newEnv(t, func(_ *lifecycle.Config, o *api.Options) { o.Sessions = nil })
	resp, _ := signIn(t, e, token, jsonType)
	session := &http.Cookie{Name: api.SessionCookie, Value: sessionCookie(resp).Value}
	if resp, _ := request(t, e, "GET", "/api/v1/training", "", session, nil); resp.StatusCode != 200 {
		t.Fatalf("signed in: %d", resp.StatusCode)
	}
	if resp, _ := request(t, e, "DELETE", "/api/v1/session", "", session, nil); resp.StatusCode != 204 {
		t.Fatalf("sign out: %d", resp.StatusCode)
	}
	if resp, _ := request(t, e, "GET", "/api/v1/training", "", session, nil); resp.StatusCode != 401 {
		t.Fatalf("a copy of the signed-out cookie: %d", resp.StatusCode)
	}
}

// The page and its assets are served without a token, under a strict content security
// policy; the binary under test must have the front-end built in.
func TestDashboardIsServed(t *testing.T) {
	if err := dashboard.Built(); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	for path, ctype := range map[string]string{"/": "text/html", "/jobs/t1": "text/html", "/assets/app.js": "text/javascript", "/assets/app.css": "text/css"} {
		resp, raw := request(t, e, "GET", path, "", nil, nil)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) || len(raw) < 100 {
			t.Errorf("%s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("%s: CSP %q", path, csp)
		}
	}
	if resp, _ := request(t, e, "GET", "/assets/secret.txt", "", nil, nil); resp.StatusCode != 404 {
		t.Errorf("unknown asset: %d", resp.StatusCode)
	}
}

// /metrics sits behind the token on the API's address; with a metrics address of its own,
// it says where they are.
func TestMetricsRoute(t *testing.T) {
	e := newEnv(t, func(_ *lifecycle.Config, o *api.Options) {
		o.Metrics = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
			io.WriteString(w, "understudy_up 1\n")
		})
	})
	if resp, _ := request(t, e, "GET", "/metrics", "", nil, nil); resp.StatusCode != 401 {
		t.Fatalf("without the token: %d", resp.StatusCode)
	}
	if resp, raw := request(t, e, "GET", "/metrics", "", nil, map[string]string{"Authorization": "Bearer " + token}); resp.StatusCode != 200 || raw != "understudy_up 1\n" {
		t.Fatalf("with the token: %d %q", resp.StatusCode, raw)
	}
	elsewhere := newEnv(t)
	if code, out := elsewhere.do(t, "GET", "/metrics", token, ""); code != 404 || errCode(t, out) != "metrics_elsewhere" {
		t.Fatalf("metrics on their own address: %d %v", code, out)
	}
}
