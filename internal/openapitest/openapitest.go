package openapitest

import (
	"bytes"
	"fmt"
	"mime"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// docURL is the name the document's schemas are compiled under; their $refs resolve
// against it.
const docURL = "mem:///openapi.json"

// Doc is a loaded OpenAPI document. It is safe for concurrent use.
type Doc struct {
	raw   map[string]any
	paths []pathTemplate

	mu       sync.Mutex
	compiler *jsonschema.Compiler
	schemas  map[string]*jsonschema.Schema
}

type pathTemplate struct {
	template string
	segments []string
}

// Load parses an OpenAPI 3.1 document.
func Load(doc []byte) (*Doc, error) {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return nil, fmt.Errorf("parse openapi document: %w", err)
	}
	raw, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("parse openapi document: not a JSON object")
	}
	if ver, _ := raw["openapi"].(string); !strings.HasPrefix(ver, "3.1.") {
		return nil, fmt.Errorf("parse openapi document: version %q is not 3.1", ver)
	}
	c := jsonschema.NewCompiler()
	// OpenAPI 3.1's schemas are JSON Schema 2020-12; the document's root is no schema, so
	// it is read as one that only holds the others.
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource(docURL, raw); err != nil {
		return nil, fmt.Errorf("load openapi document: %w", err)
	}
	d := &Doc{raw: raw, compiler: c, schemas: map[string]*jsonschema.Schema{}}
	paths, _ := raw["paths"].(map[string]any)
	for p := range paths {
		d.paths = append(d.paths, pathTemplate{template: p, segments: strings.Split(p, "/")})
	}
	// Literal segments win over parameters: /a/b before /a/{x}.
	sort.Slice(d.paths, func(i, j int) bool {
		return strings.Count(d.paths[i].template, "{") < strings.Count(d.paths[j].template, "{")
	})
	return d, nil
}

// Paths returns each documented path template with its methods, upper case.
func (d *Doc) Paths() map[string][]string {
	out := map[string][]string{}
	paths, _ := d.raw["paths"].(map[string]any)
	for p, item := range paths {
		ops, _ := item.(map[string]any)
		for m := range ops {
			switch m {
			case "get", "put", "post", "delete", "options", "head", "patch", "trace":
				out[p] = append(out[p], strings.ToUpper(m))
			}
		}
		sort.Strings(out[p])
	}
	return out
}

// Documented reports whether the document has an operation for method on path (which
// may carry a query). Responses to requests it lacks (an unknown path, a wrong method)
// come from the router, not from an operation.
func (d *Doc) Documented(method, path string) bool {
	_, _, err := d.operation(method, path)
	return err == nil
}

// operation returns the path template that path (which may carry a query) matches and the
// document's operation for method there.
func (d *Doc) operation(method, path string) (string, map[string]any, error) {
	if u, err := url.Parse(path); err == nil {
		path = u.Path
	}
	segs := strings.Split(path, "/")
	for _, pt := range d.paths {
		if !matches(pt.segments, segs) {
			continue
		}
		item := d.raw["paths"].(map[string]any)[pt.template].(map[string]any)
		op, ok := item[strings.ToLower(method)].(map[string]any)
		if !ok {
			return pt.template, nil, fmt.Errorf("%s %s: the document has no %s operation on %s", method, path, method, pt.template)
		}
		return pt.template, op, nil
	}
	return "", nil, fmt.Errorf("%s %s: no path of the document matches", method, path)
}

func matches(template, segs []string) bool {
	if len(template) != len(segs) {
		return false
	}
	for i, t := range template {
		if strings.HasPrefix(t, "{") && strings.HasSuffix(t, "}") {
			if segs[i] == "" {
				return false
			}
			continue
		}
		if t != segs[i] {
			return false
		}
	}
	return true
}

// ValidateResponse checks one response to method path (the request's path; a query is
// ignored): its status must be documented for the operation, contentType must be one of
// the media types documented for that status, and a JSON body must match its schema.
func (d *Doc) ValidateResponse(method, path string, status int, contentType string, body []byte) error {
	template, op, err := d.operation(method, path)
	if err != nil {
		return err
	}
	where := fmt.Sprintf("%s %s (%s) %d", method, path, template, status)
	responses, _ := op["responses"].(map[string]any)
	key := strconv.Itoa(status)
	resp, ok := responses[key]
	if !ok {
		key = fmt.Sprintf("%dXX", status/100)
		if resp, ok = responses[key]; !ok {
			key = "default"
			if resp, ok = responses[key]; !ok {
				return fmt.Errorf("%s: status not documented", where)
			}
		}
	}
	pointer := "/paths/" + escape(template) + "/" + strings.ToLower(method) + "/responses/" + escape(key)
	respObj, _ := resp.(map[string]any)
	if ref, ok := respObj["$ref"].(string); ok {
		pointer = strings.TrimPrefix(ref, "#")
		respObj, err = d.resolve(pointer)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	content, _ := respObj["content"].(map[string]any)
	if len(content) == 0 {
		if len(bytes.TrimSpace(body)) > 0 {
			return fmt.Errorf("%s: the document gives no body, the response has %d bytes", where, len(body))
		}
		return nil
	}
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return fmt.Errorf("%s: content type %q: %w", where, contentType, err)
	}
	media, ok := content[mt].(map[string]any)
	if !ok {
		return fmt.Errorf("%s: content type %s not documented", where, mt)
	}
	if mt != "application/json" && !strings.HasSuffix(mt, "+json") {
		return nil
	}
	if _, ok := media["schema"]; !ok {
		return nil
	}
	schema, err := d.compile(pointer + "/content/" + escape(mt) + "/schema")
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s: the body is not JSON: %w: %.200q", where, err, body)
	}
	if err := schema.Validate(v); err != nil {
		return fmt.Errorf("%s: the body does not match the document: %v\nbody: %.2000s", where, err, body)
	}
	return nil
}

// Check compiles every schema the document's responses and request bodies give, which
// checks each against the JSON Schema 2020-12 meta-schema and resolves every $ref.
func (d *Doc) Check() error {
	var errs []string
	paths, _ := d.raw["paths"].(map[string]any)
	for p, item := range paths {
		ops, _ := item.(map[string]any)
		for m, op := range ops {
			o, ok := op.(map[string]any)
			if !ok || m == "parameters" {
				continue
			}
			base := "/paths/" + escape(p) + "/" + m
			if rb, ok := o["requestBody"].(map[string]any); ok {
				for mt := range mapOf(rb["content"]) {
					if _, err := d.compile(base + "/requestBody/content/" + escape(mt) + "/schema"); err != nil {
						errs = append(errs, err.Error())
					}
				}
			}
			for code, r := range mapOf(o["responses"]) {
				ptr := base + "/responses/" + escape(code)
				ro := mapOf(r)
				if ref, ok := ro["$ref"].(string); ok {
					ptr = strings.TrimPrefix(ref, "#")
					var err error
					if ro, err = d.resolve(ptr); err != nil {
						errs = append(errs, err.Error())
						continue
					}
				}
				for mt, media := range mapOf(ro["content"]) {
					if _, ok := mapOf(media)["schema"]; !ok {
						continue
					}
					if _, err := d.compile(ptr + "/content/" + escape(mt) + "/schema"); err != nil {
						errs = append(errs, err.Error())
					}
				}
			}
		}
	}
	if len(errs) > 0 {
		sort.Strings(errs)
		return fmt.Errorf("openapi document: %s", strings.Join(errs, "; "))
	}
	return nil
}

func mapOf(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func (d *Doc) resolve(pointer string) (map[string]any, error) {
	var cur any = d.raw
	for _, tok := range strings.Split(strings.TrimPrefix(pointer, "/"), "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("no %s in the document", pointer)
		}
		if cur, ok = m[tok]; !ok {
			return nil, fmt.Errorf("no %s in the document", pointer)
		}
	}
	m, ok := cur.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s is not an object", pointer)
	}
	return m, nil
}

func (d *Doc) compile(pointer string) (*jsonschema.Schema, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, ok := d.schemas[pointer]; ok {
		return s, nil
	}
	s, err := d.compiler.Compile(docURL + "#" + pointer)
	if err != nil {
		return nil, fmt.Errorf("compile schema %s: %w", pointer, err)
	}
	d.schemas[pointer] = s
	return s, nil
}

// escape is a JSON pointer's escaping of one token, made safe for a URL fragment.
func escape(tok string) string {
	tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~", "~0"), "/", "~1")
	return strings.NewReplacer("{", "%7B", "}", "%7D").Replace(tok)
}
