package api_test

import "testing"

func TestStartBudgetFields(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct {
		name      string
		overrides map[string]any
		code      int
		errCode   string
	}{
		{"negative max cost", map[string]any{"max_cost_usd": -0.5}, 422, "invalid_max_cost_usd"},
		{"max cost not a number", map[string]any{"max_cost_usd": "NaN"}, 400, "invalid_field"},
		{"keep checkpoint not a bool", map[string]any{"keep_checkpoint": "yes"}, 400, "invalid_field"},
	} {
		code, out := e.do(t, "POST", "/api/v1/training/start", token, body(c.overrides))
		if code != c.code || errCode(t, out) != c.errCode {
			t.Errorf("%s: %d %v, want %d %s", c.name, code, out, c.code, c.errCode)
		}
	}
	code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"max_cost_usd": 1.5, "keep_checkpoint": true}))
	if code != 202 || out["max_cost_usd"] != 1.5 || out["keep_checkpoint"] != true {
		t.Fatalf("start: %d %v, want 202 echoing max_cost_usd and keep_checkpoint", code, out)
	}
}
