// Package chattemplate renders Hugging Face chat templates (Jinja) the way
// transformers' apply_chat_template does: trim_blocks and lstrip_blocks on,
// loop controls, raise_exception and strftime_now globals, the
// {% generation %} tag, and a tojson filter identical to Python's
// json.dumps(ensure_ascii=False) with ", " and ": " separators.
//
// The engine is github.com/nikolalohinski/gonja/v2; this package adds what it
// lacks for chat templates (Python's tojson, ordered dicts, the globals).
package chattemplate

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nikolalohinski/gonja/v2/builtins"
	"github.com/nikolalohinski/gonja/v2/config"
	"github.com/nikolalohinski/gonja/v2/exec"
	"github.com/nikolalohinski/gonja/v2/loaders"
	"github.com/nikolalohinski/gonja/v2/nodes"
	"github.com/nikolalohinski/gonja/v2/parser"
	"github.com/nikolalohinski/gonja/v2/tokens"
)

var (
	// ErrTemplate wraps template syntax errors.
	ErrTemplate = errors.New("chattemplate: invalid template")
	// ErrRender wraps errors while rendering, raise_exception included.
	ErrRender = errors.New("chattemplate: render failed")
)

// Template is a compiled chat template; safe for concurrent Render calls.
type Template struct {
	tpl *exec.Template
	// Now gives strftime_now its time (tests pin it); nil means time.Now.
	Now func() time.Time
}

const rootName = "/chat_template"

// Compile parses a chat template.
func Compile(src string) (t *Template, err error) {
	defer func() {
		if r := recover(); r != nil {
			t, err = nil, fmt.Errorf("%w: %v", ErrTemplate, r)
		}
	}()
	cfg := config.New()
	cfg.TrimBlocks = true
	// lstrip_blocks is applied by lstripBlocks (gonja's differs from Jinja).
	cfg.LeftStripBlocks = false
	cfg.KeepTrailingNewline = false
	loader, err := loaders.NewMemoryLoader(map[string]string{rootName: lstripBlocks(src)})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTemplate, err)
	}
	t = &Template{}
	tpl, err := exec.NewTemplate(rootName, cfg, loader, t.environment())
	if err != nil {
		msg := err.Error()
		// gonja quotes the whole source in its message; keep the cause.
		if i := strings.LastIndex(msg, "': "); i >= 0 && len(msg) > 400 {
			msg = msg[i+3:]
		}
		return nil, fmt.Errorf("%w: %s", ErrTemplate, msg)
	}
	t.tpl = tpl
	return t, nil
}

// RaiseError is the template's own raise_exception: its message is written
// for users ("Conversation roles must alternate ..."), unlike the renderer's
// errors, which quote template internals. Render wraps it with ErrRender.
type RaiseError struct{ Message string }

func (r *RaiseError) Error() string { return r.Message }

func (t *Template) environment() *exec.Environment {
	filters := exec.NewFilterSet(map[string]exec.FilterFunction{})
	filters.Update(builtins.Filters)
	_ = filters.Replace("tojson", filterToJSON)

	ctl := exec.NewControlStructureSet(map[string]parser.ControlStructureParser{})
	ctl.Update(builtins.ControlStructures)
	_ = ctl.Register("generation", generationParser)

	globals := exec.EmptyContext().Update(builtins.GlobalFunctions).Update(builtins.GlobalVariables)
	globals.Set("raise_exception", func(msg string) (string, error) {
		return "", &RaiseError{msg}
	})
	globals.Set("strftime_now", func(format string) string {
		now := time.Now
		if t.Now != nil {
			now = t.Now
		}
		return strftime(now(), format)
	})

	m := builtins.Methods
	return &exec.Environment{
		Context:           globals,
		Filters:           filters,
		Tests:             builtins.Tests,
		ControlStructures: ctl,
		Methods: exec.Methods{
			Bool:  m.Bool,
			Int:   m.Int,
			Float: m.Float,
			Str:   strMethods(m.Str),
			List:  m.List,
			Dict:  orderedDictMethods(m.Dict),
		},
	}
}

// Render renders the template with the given variables (messages,
// add_generation_prompt, tools, bos_token, ...). Values are converted with
// Value: json.RawMessage keeps its key order.
func (t *Template) Render(vars map[string]any) (out string, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("%w: %v", ErrRender, r)
		}
	}()
	data := make(map[string]any, len(vars))
	for k, v := range vars {
		cv, err := Value(v)
		if err != nil {
			return "", fmt.Errorf("%w: %s: %v", ErrRender, k, err)
		}
		data[k] = cv
	}
	// The renderer keeps only the text of a function's error, so this
	// render's raise_exception records what it raised.
	var raised *RaiseError
	data["raise_exception"] = func(msg string) (string, error) {
		raised = &RaiseError{msg}
		return "", raised
	}
	out, err = t.tpl.ExecuteToString(exec.NewContext(data))
	if err != nil {
		if raised != nil {
			return "", fmt.Errorf("%w: %w", ErrRender, raised)
		}
		return "", fmt.Errorf("%w: %v", ErrRender, err)
	}
	return out, nil
}

// Value converts Go data for the template: json.RawMessage is decoded with
// its key order kept; maps become dicts with sorted keys (Go maps have no
// order); slices become lists.
func Value(v any) (any, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		return decodeOrdered(x)
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		d := &exec.Dict{Pairs: make([]*exec.Pair, 0, len(x))}
		for _, k := range keys {
			cv, err := Value(x[k])
			if err != nil {
				return nil, err
			}
			d.Pairs = append(d.Pairs, &exec.Pair{Key: exec.AsValue(k), Value: exec.AsValue(cv)})
		}
		return d, nil
	case []map[string]any:
		out := make([]any, len(x))
		for i, e := range x {
			cv, err := Value(e)
			if err != nil {
				return nil, err
			}
			out[i] = cv
		}
		return out, nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			cv, err := Value(e)
			if err != nil {
				return nil, err
			}
			out[i] = cv
		}
		return out, nil
	case json.Number:
		return numberValue(x)
	}
	return v, nil
}

// ----------------------------------------------------------- {% generation %}

// generationCS is transformers' AssistantTracker tag: it only marks
// assistant text for masks, so rendering just outputs its body.
type generationCS struct {
	location *tokens.Token
	wrapper  *nodes.Wrapper
}

func (g *generationCS) Position() *tokens.Token { return g.location }

func (g *generationCS) String() string { return "GenerationControlStructure" }

func (g *generationCS) Execute(r *exec.Renderer, _ *nodes.ControlStructureBlock) error {
	return r.ExecuteWrapper(g.wrapper)
}

func generationParser(p *parser.Parser, args *parser.Parser) (nodes.ControlStructure, error) {
	wrapper, endargs, err := p.WrapUntil("endgeneration")
	if err != nil {
		return nil, err
	}
	if !args.End() || !endargs.End() {
		return nil, errors.New("generation takes no arguments")
	}
	return &generationCS{location: p.Current(), wrapper: wrapper}, nil
}
