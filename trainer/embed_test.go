package trainer

import (
	"io/fs"
	"strings"
	"testing"
)

func TestRuntimeFiles(t *testing.T) {
	for _, p := range []string{"launch.sh", "bootstrap.sh", "requirements.txt", "understudy_trainer/__main__.py"} {
		if _, err := fs.Stat(FS(), p); err != nil {
			t.Errorf("runtime lacks %s: %v", p, err)
		}
	}
}

func TestCheckHyperparameters(t *testing.T) {
	ok := map[string]any{"epochs": 3.0, "learning_rate": 0.0001, "batch_size": 8.0, "max_seq_len": 256.0}
	if msg := CheckHyperparameters(ok); msg != "" {
		t.Fatalf("valid hyperparameters refused: %s", msg)
	}
	bad := map[string]string{
		"epochs=0":        "at least",
		"epochs=1.5":      "integer",
		"learning_rate=0": "greater than",
		"batch_size=4096": "at most",
		"colour=1":        "unknown hyperparameter",
		"epochs=str":      "must be a number",
	}
	for in, want := range bad {
		k, v, _ := strings.Cut(in, "=")
		var val any = v
		switch v {
		case "0":
			val = 0.0
		case "1.5":
			val = 1.5
		case "4096":
			val = 4096.0
		case "1":
			val = 1.0
		}
		msg := CheckHyperparameters(map[string]any{k: val})
		if !strings.Contains(msg, want) {
			t.Errorf("%s: got %q, want it to mention %q", in, msg, want)
		}
	}
}
