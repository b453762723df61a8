package api

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/understudy-ai/training-service/job"
)

// The dashboard's session: signing in with the API token sets a cookie that scripts cannot
// read (HttpOnly, SameSite=Strict, Secure behind TLS). The cookie holds an expiry, a random
// session id and an HMAC of both under a key derived from the token, so that it never
// carries the token and stops working when the token changes. Signing out records the id
// as revoked in the job store (SessionStore), which replicas share, until the expiry: a copy
// of the cookie is refused from then on.
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

// SessionStore keeps the ids of signed-out sessions until they expire; the job store is one
// (store.Store), shared by the replicas that share it.
type SessionStore interface {
	SessionRevoke(ctx context.Context, id string, expires time.Time) error
	SessionRevoked(ctx context.Context, id string) (bool, error)
}

// memorySessions is the SessionStore of a server given none: this process's memory.
type memorySessions struct {
	mu      sync.Mutex
	revoked map[string]time.Time
}

func (m *memorySessions) SessionRevoke(_ context.Context, id string, expires time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	for k, exp := range m.revoked {
		if !exp.After(now) {
			delete(m.revoked, k)
		}
	}
	if expires.After(m.revoked[id]) {
		m.revoked[id] = expires
	}
	return nil
}

func (m *memorySessions) SessionRevoked(_ context.Context, id string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	exp, ok := m.revoked[id]
	return ok && exp.After(time.Now()), nil
}

func (s *Server) sessionMAC(exp int64, id string) []byte {
	m := hmac.New(sha256.New, s.sessionKey)
	m.Write([]byte("session|" + strconv.FormatInt(exp, 10) + "|" + id))
	return m.Sum(nil)
}

// newSession returns a cookie value, "<expiry>.<id>.<mac>", valid until exp.
func (s *Server) newSession(exp time.Time) string {
	id := base64.RawURLEncoding.EncodeToString(randomBytes(16))
	return strconv.FormatInt(exp.Unix(), 10) + "." + id + "." + base64.RawURLEncoding.EncodeToString(s.sessionMAC(exp.Unix(), id))
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand)
	return b
}

// parseSession returns the id and expiry of v when it is a session this service issued
// under its token and has not expired; it does not ask whether the session was signed out.
func (s *Server) parseSession(v string, now time.Time) (id string, exp time.Time, ok bool) {
	parts := strings.Split(v, ".")
	if len(parts) != 3 || len(parts[1]) != 22 {
		return "", time.Time{}, false
	}
	e, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil || now.Unix() >= e || e > now.Add(SessionTTL+time.Minute).Unix() {
		return "", time.Time{}, false
	}
	got, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || !hmac.Equal(got, s.sessionMAC(e, parts[1])) {
		return "", time.Time{}, false
	}
	return parts[1], time.Unix(e, 0), true
}

// validSession says whether v is a live session: issued here, not expired, not signed out.
// An error means the session store did not answer.
func (s *Server) validSession(ctx context.Context, v string, now time.Time) (bool, error) {
	id, _, ok := s.parseSession(v, now)
	if !ok {
		return false, nil
	}
	revoked, err := s.sessions.SessionRevoked(ctx, id)
	if err != nil {
		return false, err
	}
	return !revoked, nil
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

// signOut revokes the session (a copy of its cookie is refused from now on) and clears the
// cookie. Without a live session it only clears the cookie.
func (s *Server) signOut(w http.ResponseWriter, r *http.Request) {
	s.setSession(w, r, "", time.Unix(0, 0), -1)
	if c, err := r.Cookie(SessionCookie); err == nil {
		if id, exp, ok := s.parseSession(c.Value, time.Now()); ok {
			if err := s.sessions.SessionRevoke(r.Context(), id, exp); err != nil {
				s.log.Error("revoke dashboard session", "err", err)
				s.writeError(w, r, fail(job.CodeUnavailable, "session_not_revoked",
					"the cookie was cleared, but the session could not be revoked: the job store does not answer; sign out again"))
				return
			}
		}
	}
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
