package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/understudy-ai/training-service/job"
)

// The dashboard's session: signing in with the API token sets a cookie that scripts cannot
// read (HttpOnly, SameSite=Strict, Secure behind TLS). The cookie holds only an expiry and
// an HMAC of it under a key derived from the token, so that it never carries the token,
// needs no server-side state shared by replicas, and stops working when the token changes.
const (
	// SessionCookie is the cookie's name.
	SessionCookie = "understudy_session"
	// SessionTTL is how long a session lasts.
	SessionTTL = 12 * time.Hour
	// DashboardHeader must be on every request that changes state and is authenticated by
	// the cookie: a page of another site cannot set it without a CORS preflight, which this
	// service never allows, so a cookie alone cannot cancel a job (CSRF).
	DashboardHeader      = "X-Requested-With"
	DashboardHeaderValue = "understudy-dashboard"
)

func sessionKey(token string) []byte {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("understudy dashboard session v1"))
	return m.Sum(nil)
}

func (s *Server) sessionMAC(exp int64) []byte {
	m := hmac.New(sha256.New, s.sessionKey)
	m.Write([]byte("session|" + strconv.FormatInt(exp, 10)))
	return m.Sum(nil)
}

// newSession returns a cookie value that is valid until exp.
func (s *Server) newSession(exp time.Time) string {
	return strconv.FormatInt(exp.Unix(), 10) + "." + base64.RawURLEncoding.EncodeToString(s.sessionMAC(exp.Unix()))
}

// validSession says whether v is a session this service issued and that has not expired.
func (s *Server) validSession(v string, now time.Time) bool {
	e, mac, ok := strings.Cut(v, ".")
	if !ok {
		return false
	}
	exp, err := strconv.ParseInt(e, 10, 64)
	if err != nil || now.Unix() >= exp || exp > now.Add(SessionTTL+time.Minute).Unix() {
		return false
	}
	got, err := base64.RawURLEncoding.DecodeString(mac)
	return err == nil && hmac.Equal(got, s.sessionMAC(exp))
}

// secure says whether the client reached the service over TLS, directly or through a proxy
// that says so.
func secure(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func (s *Server) setSession(w http.ResponseWriter, r *http.Request, value string, exp time.Time, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: SessionCookie, Value: value, Path: "/", Expires: exp, MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure(r),
	})
}

// SessionResponse is the body of a sign-in.
type SessionResponse struct {
	ExpiresAt time.Time `json:"expires_at"`
}

// signIn checks the API token in the JSON body and sets the session cookie.
func (s *Server) signIn(w http.ResponseWriter, r *http.Request) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		s.writeError(w, r, malformed("invalid_content_type", `sign in with a JSON body like {"token": "..."} and Content-Type: application/json`))
		return
	}
	var body struct {
		Token string `json:"token"`
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4<<10))
	if err != nil {
		s.writeError(w, r, malformed("body_too_large", "the sign-in body is larger than 4 KiB"))
		return
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		s.writeError(w, r, malformed("invalid_json", `the body must be a JSON object like {"token": "..."}`))
		return
	}
	if body.Token == "" || !s.validToken(body.Token) {
		s.log.Warn("dashboard sign-in refused", "remote", r.RemoteAddr)
		s.writeError(w, r, fail(job.CodeUnauthenticated, "invalid_token", "that is not this service's API token"))
		return
	}
	exp := time.Now().Add(SessionTTL).Truncate(time.Second)
	s.setSession(w, r, s.newSession(exp), exp, int(SessionTTL/time.Second))
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, SessionResponse{ExpiresAt: exp.UTC()})
}

// signOut clears the session cookie. The cookie itself stays valid until it expires or the
// token changes: the service keeps no session state to revoke.
func (s *Server) signOut(w http.ResponseWriter, r *http.Request) {
	s.setSession(w, r, "", time.Unix(0, 0), -1)
	w.WriteHeader(http.StatusNoContent)
}

// fromDashboard says whether the request carries the dashboard's header.
func fromDashboard(r *http.Request) bool {
	return r.Header.Get(DashboardHeader) == DashboardHeaderValue
}

// safeMethod says whether the method only reads.
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead
}
