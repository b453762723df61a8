// Package trainer embeds the Python training runtime that the service ships to every
// training machine, and the hyperparameter schema that both the runtime and the API check.
package trainer

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"math"
	"sort"
	"strings"
)

//go:embed launch.sh bootstrap.sh requirements.txt requirements-dev.txt understudy_trainer/*.py understudy_trainer/hparams_schema.json
var files embed.FS

// FS is the runtime as laid out on a machine under <job dir>/runtime.
func FS() fs.FS { return files }

// Param is one hyperparameter's rule in understudy_trainer/hparams_schema.json.
type Param struct {
	Type             string   `json:"type"` // "integer" or "number"
	Minimum          *float64 `json:"minimum"`
	Maximum          *float64 `json:"maximum"`
	ExclusiveMinimum *float64 `json:"exclusiveMinimum"`
}

// Schema returns the hyperparameter rules.
func Schema() (map[string]Param, error) {
	raw, err := files.ReadFile("understudy_trainer/hparams_schema.json")
	if err != nil {
		return nil, fmt.Errorf("read hyperparameter schema: %w", err)
	}
	var s map[string]Param
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("parse hyperparameter schema: %w", err)
	}
	return s, nil
}

// CheckHyperparameters checks a decoded hyperparameters object against the schema and
// returns a message naming the first problem, or "".
func CheckHyperparameters(hp map[string]any) string {
	schema, err := Schema()
	if err != nil {
		return err.Error()
	}
	names := make([]string, 0, len(hp))
	for k := range hp {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		rule, ok := schema[name]
		if !ok {
			known := make([]string, 0, len(schema))
			for k := range schema {
				known = append(known, k)
			}
			sort.Strings(known)
			return fmt.Sprintf("unknown hyperparameter %q (known: %s)", name, strings.Join(known, ", "))
		}
		v, ok := hp[name].(float64)
		if !ok {
			return fmt.Sprintf("hyperparameters.%s must be a number", name)
		}
		if rule.Type == "integer" && v != math.Trunc(v) {
			return fmt.Sprintf("hyperparameters.%s must be an integer", name)
		}
		if rule.Minimum != nil && v < *rule.Minimum {
			return fmt.Sprintf("hyperparameters.%s must be at least %g", name, *rule.Minimum)
		}
		if rule.ExclusiveMinimum != nil && v <= *rule.ExclusiveMinimum {
			return fmt.Sprintf("hyperparameters.%s must be greater than %g", name, *rule.ExclusiveMinimum)
		}
		if rule.Maximum != nil && v > *rule.Maximum {
			return fmt.Sprintf("hyperparameters.%s must be at most %g", name, *rule.Maximum)
		}
	}
	return ""
}
