package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// End to end on the tiny checkpoint with random weights: whatever the
// model "wants", every output that completes under a constraint is in its
// language. Random weights make this a strong test: nothing but the mask
// keeps the output valid.

var (
	toolTokOnce sync.Once
	toolTokDir  string
	toolTokErr  error
)

// Ids of the tokens tinyToolTokenizer adds, as Qwen3 has them (added,
// not special).
const (
	tokThink     = 503
	tokThinkEnd  = 504
	tokToolCall  = 505
	tokToolClose = 506
)

// tinyToolTokenizer is tinyTokenizer plus <think>, </think>, <tool_call>
// and </tool_call> as single tokens (ids 503-506).
func tinyToolTokenizer(t *testing.T) string {
	t.Helper()
	base := tinyTokenizer(t)
	toolTokOnce.Do(func() {
		dir := filepath.Join(base, "tools") // removed with the base by TestMain
		var tj map[string]any
		b, err := os.ReadFile(filepath.Join(base, "tokenizer.json"))
		if err == nil {
			err = json.Unmarshal(b, &tj)
		}
		if err != nil {
			toolTokErr = err
			return
		}
		added := tj["added_tokens"].([]any)
		for i, content := range []string{"<think>", "</think>", "<tool_call>", "</tool_call>"} {
			added = append(added, map[string]any{"id": tokThink + i, "content": content, "single_word": false,
				"lstrip": false, "rstrip": false, "normalized": false, "special": false})
		}
		tj["added_tokens"] = added
		if err := os.MkdirAll(dir, 0o755); err != nil {
			toolTokErr = err
			return
		}
		out, _ := json.Marshal(tj)
		cfg, err := os.ReadFile(filepath.Join(base, "tokenizer_config.json"))
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "tokenizer.json"), out, 0o644)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), cfg, 0o644)
		}
		toolTokDir, toolTokErr = dir, err
	})
	if toolTokErr != nil {
		t.Fatal(toolTokErr)
	}
	return toolTokDir
}

func mustSchema(t *testing.T, schema string) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(schema))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("s.json", doc); err != nil {
		t.Fatal(err)
	}
	return c.MustCompile("s.json")
}

func validateJSON(s *jsonschema.Schema, text string) error {
	inst, err := jsonschema.UnmarshalJSON(strings.NewReader(text))
	if err != nil {
		return err
	}
	return s.Validate(inst)
}

// liveChoice is one choice of a chat or completion response (or one
// reassembled from a stream).
type liveChoice struct {
	Text      string
	Content   *string
	Reasoning *string
	ToolCalls []liveCall
	Finish    string
}

type liveCall struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

// generate posts body and returns its choices, reassembling streams.
func (l *live) generate(t *testing.T, path, body string) []liveChoice {
	t.Helper()
	code, b := l.post(t, path, body)
	if code != 200 {
		t.Fatalf("%s %s: %d %s", path, body, code, b)
	}
	var out []liveChoice
	at := func(i int) *liveChoice {
		for len(out) <= i {
			out = append(out, liveChoice{})
		}
		return &out[i]
	}
	if !strings.Contains(body, `"stream":true`) {
		var r struct {
			Choices []struct {
				Index   int    `json:"index"`
				Text    string `json:"text"`
				Message struct {
					Content          *string    `json:"content"`
					ReasoningContent *string    `json:"reasoning_content"`
					ToolCalls        []liveCall `json:"tool_calls"`
				} `json:"message"`
				FinishReason string `json:"finish_reason"`
			} `json:"choices"`
		}
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		for _, c := range r.Choices {
			*at(c.Index) = liveChoice{Text: c.Text, Content: c.Message.Content, Reasoning: c.Message.ReasoningContent,
				ToolCalls: c.Message.ToolCalls, Finish: c.FinishReason}
		}
		return out
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var ch struct {
			Choices []struct {
				Index int    `json:"index"`
				Text  string `json:"text"`
				Delta struct {
					Content          *string `json:"content"`
					ReasoningContent *string `json:"reasoning_content"`
					ToolCalls        []struct {
						Index    int     `json:"index"`
						ID       *string `json:"id"`
						Function struct {
							Name      *string `json:"name"`
							Arguments string  `json:"arguments"`
						} `json:"function"`
					} `json:"tool_calls"`
				} `json:"delta"`
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &ch); err != nil {
			t.Fatalf("%s: %v", data, err)
		}
		for _, c := range ch.Choices {
			lc := at(c.Index)
			lc.Text += c.Text
			if d := c.Delta.Content; d != nil {
				lc.Content = ptr(deref(lc.Content) + *d)
			}
			if d := c.Delta.ReasoningContent; d != nil {
				lc.Reasoning = ptr(deref(lc.Reasoning) + *d)
			}
			for _, tc := range c.Delta.ToolCalls {
				if tc.ID != nil {
					if tc.Index != len(lc.ToolCalls) || tc.Function.Name == nil || tc.Function.Arguments != "" {
						t.Fatalf("first delta of a call: %s", data)
					}
					call := liveCall{ID: *tc.ID, Type: "function"}
					call.Function.Name = *tc.Function.Name
					lc.ToolCalls = append(lc.ToolCalls, call)
					continue
				}
				lc.ToolCalls[tc.Index].Function.Arguments += tc.Function.Arguments
			}
			if c.FinishReason != nil {
				lc.Finish = *c.FinishReason
			}
		}
	}
	return out
}

func ptr(s string) *string { return &s }

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// Random-weights generations under every kind of constraint, on both
// endpoints, streamed and not, greedy and sampled, n > 1: every completed
// output is valid.
func TestLiveStructuredOutputs(t *testing.T) {
	l := startLive(t)
	person := `{"type":"object","properties":{
		"name":{"type":"string","maxLength":8},
		"age":{"type":"integer","minimum":0,"maximum":120},
		"tags":{"type":"array","items":{"enum":["a","b","c"]},"maxItems":3},
		"address":{"$ref":"#/$defs/addr"}},
		"required":["name","age","tags","address"],"additionalProperties":false,
		"$defs":{"addr":{"type":"object","properties":{"city":{"type":"string","maxLength":6},"zip":{"type":"string","pattern":"^[0-9]{5}$"}},"required":["city","zip"],"additionalProperties":false}}}`
	list := `{"type":"array","items":{"type":"object","properties":{"id":{"type":"integer"},"ok":{"type":"boolean"}},"required":["id","ok"]},"minItems":1,"maxItems":3}`
	enum := `{"enum":["red","green",1,null,{"k":[true]}]}`
	word := regexp.MustCompile(`^[A-Z][a-z]{1,8}( [A-Z][a-z]{1,8}){0,2}$`)
	pairs := regexp.MustCompile(`^\[[a-c]{1,2}(,[a-c]{1,2})*\]$`)
	larkRe := regexp.MustCompile(`^y*x$`)
	isObject := func(s string) error {
		var v map[string]any
		return json.Unmarshal([]byte(s), &v)
	}
	balanced := func(s string) error {
		depth := 0
		for i, c := range s {
			switch {
			case c == '(':
				depth++
			case c == ')' && depth > 0:
				depth--
			default:
				return fmt.Errorf("byte %d", i)
			}
			if depth == 0 && i != len(s)-1 {
				return fmt.Errorf("closed early at %d", i)
			}
		}
		if depth != 0 || s == "" {
			return fmt.Errorf("unbalanced")
		}
		return nil
	}
	schemaCheck := func(schema string) func(string) error {
		s := mustSchema(t, schema)
		return func(text string) error { return validateJSON(s, text) }
	}
	matches := func(re *regexp.Regexp) func(string) error {
		return func(s string) error {
			if !re.MatchString(s) {
				return fmt.Errorf("no match")
			}
			return nil
		}
	}
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	cases := []struct {
		name, field string
		check       func(string) error
	}{
		{"json_schema nested $ref", `"response_format":{"type":"json_schema","json_schema":{"name":"person","strict":true,"schema":` + person + `}}`, schemaCheck(person)},
		{"json_schema array", `"response_format":{"type":"json_schema","json_schema":{"name":"list","schema":` + list + `}}`, schemaCheck(list)},
		{"json_schema enum", `"structured_outputs":{"json":` + enum + `}`, schemaCheck(enum)},
		{"guided_json", `"guided_json":` + q(list), schemaCheck(list)},
		{"json_object", `"response_format":{"type":"json_object"}`, isObject},
		{"regex", `"structured_outputs":{"regex":"[A-Z][a-z]{1,8}( [A-Z][a-z]{1,8}){0,2}"}`, matches(word)},
		{"choice", `"structured_outputs":{"choice":["yes","no","maybe so"]}`, func(s string) error {
			if s != "yes" && s != "no" && s != "maybe so" {
				return fmt.Errorf("not a choice")
			}
			return nil
		}},
		{"gbnf", `"structured_outputs":{"grammar":` + q("root ::= \"[\" item (\",\" item)* \"]\"\nitem ::= [a-c] [a-c]?") + `}`, matches(pairs)},
		{"gbnf recursive", `"guided_grammar":` + q(`root ::= "(" root* ")"`), balanced},
		{"lark", `"structured_outputs":{"grammar":` + q("start: \"x\" | \"y\" start") + `}`, matches(larkRe)},
	}
	completed, total := 0, 0
	for ci, c := range cases {
		done := 0
		for run, temp := range []float64{0, 0.8, 1.5} {
			for _, ep := range []string{"/v1/chat/completions", "/v1/completions"} {
				stream := (ci+run)%2 == 1
				prompt := `"messages":[{"role":"user","content":"Answer."}],"logprobs":true,"top_logprobs":2`
				if ep == "/v1/completions" {
					prompt = `"prompt":"Answer: ","logprobs":2`
				}
				body := fmt.Sprintf(`{"model":"tiny",%s,%s,"max_tokens":300,"temperature":%v,"seed":%d,"n":3,"stream":%v}`,
					prompt, c.field, temp, 7*ci+run, stream)
				for i, ch := range l.generate(t, ep, body) {
					total++
					text := ch.Text
					if ep == "/v1/chat/completions" {
						text = deref(ch.Content)
					}
					switch ch.Finish {
					case "stop":
					case "length":
						continue
					default:
						t.Fatalf("%s: choice %d finished %q", c.name, i, ch.Finish)
					}
					done++
					if err := c.check(text); err != nil {
						t.Errorf("%s (%s, temperature %v, stream %v): %q: %v", c.name, ep, temp, stream, text, err)
					}
				}
			}
		}
		t.Logf("%-24s %2d of 18 outputs completed", c.name, done)
		if done == 0 {
			t.Errorf("%s: no output completed: the test checked nothing", c.name)
		}
		completed += done
	}
	t.Logf("%d of %d outputs completed and validated", completed, total)
}

// tools for the forced-call tests.
const liveTools = `[
	{"type":"function","function":{"name":"get_weather","description":"Weather of a city","parameters":{"type":"object",
		"properties":{"city":{"type":"string","maxLength":6},"unit":{"$ref":"#/$defs/unit"}},"required":["city","unit"],
		"additionalProperties":false,"$defs":{"unit":{"enum":["c","f"]}}}}},
	{"type":"function","function":{"name":"add","parameters":{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer","minimum":0,"maximum":9}},"required":["a","b"]}}},
	{"type":"function","function":{"name":"now"}}]`

// toolValidators checks a call's arguments against its tool's parameters.
func toolValidators(t *testing.T) map[string]*jsonschema.Schema {
	var tools []struct {
		Function struct {
			Name       string          `json:"name"`
			Parameters json.RawMessage `json:"parameters"`
		} `json:"function"`
	}
	if err := json.Unmarshal([]byte(liveTools), &tools); err != nil {
		t.Fatal(err)
	}
	out := map[string]*jsonschema.Schema{}
	for _, tl := range tools {
		p := string(tl.Function.Parameters)
		if p == "" {
			p = `{"type":"object","maxProperties":0}`
		}
		out[tl.Function.Name] = mustSchema(t, p)
	}
	return out
}

// Forced tool calls (tool_choice required, with and without parallel
// calls, and a named function): every completed choice is a list of calls
// of known tools with valid arguments, finish_reason "tool_calls", no
// content; through the engine, streamed and not, with and without a
// reasoning parser, in the model's format (hermes, read from the chat
// template, with no --tool-call-parser).
func TestLiveForcedToolCalls(t *testing.T) {
	for _, flags := range [][]string{nil, {"--tokenizer", "", "--reasoning-parser", "qwen3"}} {
		if flags != nil {
			flags[1] = tinyToolTokenizer(t)
		}
		l := startLive(t, flags...)
		val := toolValidators(t)
		done := 0
		for run, choice := range []string{`"required"`, `"required"`, `{"type":"function","function":{"name":"get_weather"}}`, `{"type":"function","function":{"name":"add"}}`} {
			for _, temp := range []float64{0, 1} {
				parallel := run != 1
				body := fmt.Sprintf(`{"model":"tiny","messages":[{"role":"user","content":"Call a tool."}],"tools":%s,"tool_choice":%s,"parallel_tool_calls":%v,"max_tokens":300,"temperature":%v,"seed":%d,"n":3,"stream":%v,"chat_template_kwargs":{"enable_thinking":false}}`,
					liveTools, choice, parallel, temp, run, run%2 == 0)
				for i, ch := range l.generate(t, "/v1/chat/completions", body) {
					if ch.Finish == "length" {
						continue
					}
					done++
					if ch.Finish != "tool_calls" || len(ch.ToolCalls) == 0 || deref(ch.Content) != "" {
						t.Fatalf("%s choice %d: %+v", body, i, ch)
					}
					if !parallel && len(ch.ToolCalls) != 1 {
						t.Errorf("parallel_tool_calls false: %d calls", len(ch.ToolCalls))
					}
					for _, c := range ch.ToolCalls {
						if strings.HasPrefix(choice, "{") && !strings.Contains(choice, `"`+c.Function.Name+`"`) {
							t.Errorf("tool_choice %s: called %q", choice, c.Function.Name)
						}
						v := val[c.Function.Name]
						if v == nil || c.Type != "function" || !strings.HasPrefix(c.ID, "call_") {
							t.Fatalf("call %+v", c)
						}
						if err := validateJSON(v, c.Function.Arguments); err != nil {
							t.Errorf("%s(%s): %v", c.Function.Name, c.Function.Arguments, err)
						}
					}
				}
			}
		}
		t.Logf("flags %q: %d of 24 choices completed with valid calls", flags, done)
		if done == 0 {
			t.Error("no choice completed")
		}
	}
}

// With a reasoning parser, the grammar waits for </think>: the model may
// open a reasoning block at its first step (here a logit bias makes it, and
// makes it close the block soon), reason unconstrained, then answer in
// the grammar; with enable_thinking false (the prompt closes the block)
// the grammar holds from the first token.
func TestLiveReasoningThenStructured(t *testing.T) {
	l := startLive(t, "--tokenizer", tinyToolTokenizer(t), "--reasoning-parser", "qwen3")
	bias := fmt.Sprintf(`"logit_bias":{"%d":100,"%d":100}`, tokThink, tokThinkEnd)
	reasoned := 0
	for _, stream := range []bool{false, true} {
		for _, thinking := range []bool{true, false} {
			body := fmt.Sprintf(`{"model":"tiny","messages":[{"role":"user","content":"Yes or no?"}],"structured_outputs":{"choice":["yes","no"]},%s,"max_tokens":40,"temperature":1,"seed":3,"n":4,"stream":%v,"chat_template_kwargs":{"enable_thinking":%v}}`,
				bias, stream, thinking)
			for i, ch := range l.generate(t, "/v1/chat/completions", body) {
				if ch.Finish != "stop" {
					t.Fatalf("thinking %v choice %d: %+v", thinking, i, ch)
				}
				if c := deref(ch.Content); c != "yes" && c != "no" {
					t.Errorf("thinking %v choice %d: content %q", thinking, i, c)
				}
				if ch.Reasoning != nil {
					reasoned++
					if !thinking {
						t.Errorf("thinking off, choice %d: reasoning_content %q", i, *ch.Reasoning)
					}
				}
			}
		}
	}
	if reasoned == 0 {
		t.Error("no choice reasoned before answering")
	}
}

// The OpenAI Go SDK as a client: structured outputs through
// response_format json_schema, and tool calls through tool_choice
// required, parsed into typed results.
func TestLiveSDKStructured(t *testing.T) {
	l := startLive(t)
	c := oai.NewClient(option.WithBaseURL(l.url+"/v1/"), option.WithAPIKey("x"), option.WithMaxRetries(0))
	ctx := context.Background()
	type answer struct {
		Color string `json:"color"`
		Count int    `json:"count"`
	}
	schema := map[string]any{"type": "object", "properties": map[string]any{
		"color": map[string]any{"enum": []string{"red", "blue"}},
		"count": map[string]any{"type": "integer", "minimum": 0, "maximum": 99},
	}, "required": []string{"color", "count"}, "additionalProperties": false}
	parsed := 0
	for seed := range 4 {
		resp, err := c.Chat.Completions.New(ctx, oai.ChatCompletionNewParams{
			Model:     "tiny",
			Messages:  []oai.ChatCompletionMessageParamUnion{oai.UserMessage("Pick a color.")},
			MaxTokens: oai.Int(60), Seed: oai.Int(int64(seed)), Temperature: oai.Float(1),
			ResponseFormat: oai.ChatCompletionNewParamsResponseFormatUnion{OfJSONSchema: &shared.ResponseFormatJSONSchemaParam{
				JSONSchema: shared.ResponseFormatJSONSchemaJSONSchemaParam{Name: "answer", Strict: oai.Bool(true), Schema: schema}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		ch := resp.Choices[0]
		if ch.FinishReason != "stop" {
			continue
		}
		var a answer
		if err := json.Unmarshal([]byte(ch.Message.Content), &a); err != nil || (a.Color != "red" && a.Color != "blue") || a.Count > 99 {
			t.Fatalf("%q: %+v %v", ch.Message.Content, a, err)
		}
		parsed++
	}
	if parsed == 0 {
		t.Fatal("no structured answer completed")
	}

	toolParams := oai.ChatCompletionNewParams{
		Model:     "tiny",
		Messages:  []oai.ChatCompletionMessageParamUnion{oai.UserMessage("Add 2 and 3.")},
		MaxTokens: oai.Int(300), N: oai.Int(4), Temperature: oai.Float(0.5), Seed: oai.Int(1),
		Tools: []oai.ChatCompletionToolUnionParam{oai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
			Name: "add", Description: oai.String("Adds two digits"), Strict: oai.Bool(true),
			Parameters: shared.FunctionParameters{"type": "object", "properties": map[string]any{
				"a": map[string]any{"type": "integer", "minimum": 0, "maximum": 9},
				"b": map[string]any{"type": "integer", "minimum": 0, "maximum": 9}},
				"required": []string{"a", "b"}, "additionalProperties": false},
		})},
		ToolChoice: oai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: oai.String("required")},
	}
	resp, err := c.Chat.Completions.New(ctx, toolParams)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	for _, ch := range resp.Choices {
		if ch.FinishReason != "tool_calls" {
			continue
		}
		for _, tc := range ch.Message.ToolCalls {
			var args struct{ A, B *int }
			if tc.Function.Name != "add" || json.Unmarshal([]byte(tc.Function.Arguments), &args) != nil ||
				args.A == nil || args.B == nil || *args.A > 9 || *args.B > 9 {
				t.Fatalf("call %+v", tc)
			}
			calls++
		}
	}
	if calls == 0 {
		t.Fatal("no call completed")
	}

	// Streamed, the SDK's accumulator rebuilds the same calls from the
	// deltas (same seed: the same generation).
	stream := c.Chat.Completions.NewStreaming(ctx, toolParams)
	var acc oai.ChatCompletionAccumulator
	finished := 0
	for stream.Next() {
		if !acc.AddChunk(stream.Current()) {
			t.Fatalf("the accumulator refused a chunk: %+v", stream.Current())
		}
		if _, ok := acc.JustFinishedToolCall(); ok {
			finished++
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	for i, ch := range acc.Choices {
		want := resp.Choices[i].Message.ToolCalls
		got := ch.Message.ToolCalls
		if string(ch.FinishReason) != string(resp.Choices[i].FinishReason) || len(got) != len(want) {
			t.Fatalf("choice %d: streamed %q %d calls, whole %q %d", i, ch.FinishReason, len(got), resp.Choices[i].FinishReason, len(want))
		}
		for k := range got {
			if got[k].Function.Name != want[k].Function.Name || got[k].Function.Arguments != want[k].Function.Arguments || got[k].ID == "" {
				t.Errorf("choice %d call %d: streamed %+v, whole %+v", i, k, got[k].Function, want[k].Function)
			}
		}
	}
	if finished == 0 {
		t.Error("the accumulator saw no finished tool call")
	}
}
