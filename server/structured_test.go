package server_test

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmserve/llmserve/engine"
	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/server"
	"github.com/llmserve/llmserve/server/servertest"
	"github.com/llmserve/llmserve/tokenizer/chattemplate"
)

// scriptEngine "generates" a fixed script of text pieces for each of a
// request's sequences, one output per piece, finishing with "stop".
type scriptEngine struct {
	servertest.Engine
	pieces []string
	mu     sync.Mutex
	reqs   []*engine.Request
}

func (e *scriptEngine) Submit(ctx context.Context, req *engine.Request) (<-chan engine.Output, error) {
	e.mu.Lock()
	e.reqs = append(e.reqs, req)
	e.mu.Unlock()
	n := max(req.Params.N, 1)
	ch := make(chan engine.Output)
	go func() {
		defer close(ch)
		for k, p := range e.pieces {
			for j := range n {
				o := engine.Output{RequestID: req.ID, Index: j, Text: p, TokenIDs: []int{0},
					PromptTokens: len(req.PromptIDs), CompletionTokens: k + 1, Time: time.Now()}
				if k == len(e.pieces)-1 {
					o.FinishReason = engine.FinishStop
				}
				select {
				case ch <- o:
				case <-ctx.Done():
					return
				}
			}
			time.Sleep(100 * time.Microsecond) // let the server send pieces apart (not relied on)
		}
	}()
	return ch, nil
}

func (e *scriptEngine) submitted() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.reqs)
}

// bytesOf splits s into one piece per byte: the hardest split for the
// streaming parsers.
func bytesOf(s string) []string {
	out := make([]string, len(s))
	for i := range s {
		out[i] = s[i : i+1]
	}
	return out
}

// qwen3Template is the real Qwen3 chat template over the fake byte
// tokenizer: the prompt's token ids are its bytes.
func qwen3Template(t *testing.T) templateTokenizer {
	t.Helper()
	b, err := os.ReadFile(shareddata.Path(t, "tokenizers", "qwen3", "tokenizer_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ChatTemplate string `json:"chat_template"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	tpl, err := chattemplate.Compile(cfg.ChatTemplate)
	if err != nil {
		t.Fatal(err)
	}
	return templateTokenizer{tpl: tpl}
}

const weatherTool = `{"type":"function","function":{"name":"get_weather","description":"Get the weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}`

// Every field the server cannot honour, and every grammar that does not
// compile, is a 400 naming the client's field; none reaches the engine.
func TestStructuredOutputErrors(t *testing.T) {
	eng := &scriptEngine{pieces: []string{"x"}}
	e := newEnv(t, nil, func(o *server.Options) { o.Engine = eng })
	msgs := `"messages":[{"role":"user","content":"hi"}],"max_tokens":4`
	tools := `"tools":[` + weatherTool + `]`
	for _, c := range []struct {
		path, body, param string
		parts             []string
	}{
		{"/v1/chat/completions", `{` + msgs + `,"response_format":{"type":"xml"}}`, "response_format", []string{`"xml"`}},
		{"/v1/chat/completions", `{` + msgs + `,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"nope"}}}}`, "response_format", []string{"response_format:"}},
		{"/v1/chat/completions", `{` + msgs + `,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"string","maxLength":100000}}}}`, "response_format", []string{"limit"}},
		{"/v1/chat/completions", `{` + msgs + `,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"oneOf":[{"type":"integer"},{"type":"number"}]}}}}`, "response_format", []string{"oneOf", "exclusivity"}},
		{"/v1/chat/completions", `{` + msgs + `,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"array","items":{"type":"string"},"uniqueItems":true}}}}`, "response_format", []string{"uniqueItems"}},
		{"/v1/chat/completions", `{` + msgs + `,"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"tags":{"type":"array","items":{"type":"string"},"uniqueItems":true}}}}}],"tool_choice":"required"}`, "tools", []string{"uniqueItems"}},
		{"/v1/chat/completions", `{` + msgs + `,"structured_outputs":{"regex":"("}}`, "structured_outputs", nil},
		{"/v1/chat/completions", `{` + msgs + `,"structured_outputs":{"regex":"(?=a)b"}}`, "structured_outputs", nil},
		{"/v1/chat/completions", `{` + msgs + `,"structured_outputs":{"grammar":"root ::= root \"a\""}}`, "structured_outputs", nil},
		{"/v1/chat/completions", `{` + msgs + `,"structured_outputs":{"grammar":"root ::= ("}}`, "structured_outputs", nil},
		{"/v1/chat/completions", `{` + msgs + `,"guided_json":"{not json"}`, "guided_json", nil},
		{"/v1/chat/completions", `{` + msgs + `,"guided_regex":"a{5000}"}`, "guided_regex", []string{"limit"}},
		{"/v1/chat/completions", `{` + msgs + `,` + tools + `}`, "tool_choice", []string{"--enable-auto-tool-choice", "--tool-call-parser"}},
		{"/v1/chat/completions", `{` + msgs + `,` + tools + `,"tool_choice":"auto"}`, "tool_choice", []string{"--enable-auto-tool-choice"}},
		{"/v1/chat/completions", `{` + msgs + `,` + tools + `,"tool_choice":"required","response_format":{"type":"json_object"}}`, "response_format", []string{"tool_choice"}},
		{"/v1/chat/completions", `{` + msgs + `,` + tools + `,"tool_choice":{"type":"function","function":{"name":"nope"}}}`, "tool_choice", []string{`"nope"`}},
		{"/v1/chat/completions", `{` + msgs + `,"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"nope"}}}}}],"tool_choice":"required"}`, "tools", nil},
		{"/v1/chat/completions", `{` + msgs + `,"tools":[{"type":"function","function":{"name":"f","parameters":"x"}}],"tool_choice":"none"}`, "tools", []string{"parameters"}},
		{"/v1/completions", `{"prompt":"a","response_format":{"type":"json_schema","json_schema":{"schema":{"$ref":"#/nowhere"}}}}`, "response_format", nil},
		{"/v1/completions", `{"prompt":"a","structured_outputs":{"choice":[]}}`, "structured_outputs", []string{"must not be empty"}},
		{"/v1/completions", `{"prompt":"a","structured_outputs":{"choice":["a"]},"ignore_eos":true}`, "ignore_eos", []string{"structured_outputs"}},
		{"/v1/chat/completions", `{` + msgs + `,` + tools + `,"tool_choice":"required","min_tokens":2}`, "min_tokens", []string{"tools"}},
		{"/v1/completions", `{"prompt":"a","guided_choice":["a"],"guided_regex":"a"}`, "guided_choice", []string{"only one"}},
	} {
		code, b := e.post(c.path, c.body)
		wantError(t, c.body, code, b, c.param, c.parts...)
	}
	if n := eng.submitted(); n != 0 {
		t.Fatalf("%d refused requests reached the engine", n)
	}

	// Without a tokenizer there is no vocabulary to build a grammar over.
	bare := newEnv(t, nil, func(o *server.Options) { o.Engine = eng; o.Tokenizer = nil })
	code, b := bare.post("/v1/completions", `{"prompt":[1,2],"guided_regex":"a+"}`)
	wantError(t, "no tokenizer", code, b, "guided_regex", "tokenizer")
}

// A constrained request reaches the engine with one processor per
// sequence, masking what the grammar forbids; EOS only once it is complete.
func TestStructuredOutputProcessors(t *testing.T) {
	eng := &servertest.Engine{}
	e := newEnv(t, eng, nil)
	code, b := e.post("/v1/completions", `{"prompt":"a","n":2,"max_tokens":2,"structured_outputs":{"choice":["ab","b"]}}`)
	if code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	code, b = e.post("/v1/completions", `{"prompt":"a","max_tokens":2}`)
	if code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	reqs := eng.Requests()
	if reqs[1].Params.Processors != nil {
		t.Fatal("unconstrained request has processors")
	}
	p := reqs[0].Params
	if p.Processors == nil {
		t.Fatal("no processors")
	}
	allowed := func(pr interface{ Process([]float32) }) string {
		logits := make([]float32, servertest.VocabSize)
		pr.Process(logits)
		var s []string
		for id, l := range logits {
			if !math.IsInf(float64(l), -1) {
				if id == servertest.EOS {
					s = append(s, "EOS")
				} else {
					s = append(s, string(rune(id)))
				}
			}
		}
		return strings.Join(s, " ")
	}
	one, two := p.Processors()[0], p.Processors()[0]
	if got := allowed(one); got != "a b" {
		t.Fatalf("first step allows %q", got)
	}
	one.Accept('b')
	if got := allowed(one); got != "EOS" {
		t.Fatalf("after b: %q", got)
	}
	if got := allowed(two); got != "a b" {
		t.Fatalf("second sequence shares state: %q", got)
	}
}

type chunk struct {
	Choices []struct {
		Index int `json:"index"`
		Delta struct {
			Role             *string `json:"role"`
			Content          *string `json:"content"`
			ReasoningContent *string `json:"reasoning_content"`
			ToolCalls        []struct {
				Index    int     `json:"index"`
				ID       *string `json:"id"`
				Type     *string `json:"type"`
				Function struct {
					Name      *string `json:"name"`
					Arguments *string `json:"arguments"`
				} `json:"function"`
			} `json:"tool_calls"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
}

type toolCall struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type chatResp struct {
	Choices []struct {
		Index   int `json:"index"`
		Message struct {
			Content          *string    `json:"content"`
			ReasoningContent *string    `json:"reasoning_content"`
			ToolCalls        []toolCall `json:"tool_calls"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
}

// streamed is one choice reassembled from chunks, with the checks of
// OpenAI's streaming shape applied on the way.
type streamed struct {
	content, reasoning string
	calls              []toolCall
	finish             string
}

func collectStream(t *testing.T, body []byte) map[int]*streamed {
	t.Helper()
	out := map[int]*streamed{}
	for _, ev := range sseEvents(t, body) {
		var ch chunk
		if err := json.Unmarshal([]byte(ev), &ch); err != nil {
			t.Fatalf("%s: %v", ev, err)
		}
		for _, c := range ch.Choices {
			s := out[c.Index]
			if s == nil {
				s = &streamed{}
				out[c.Index] = s
			}
			if s.finish != "" {
				t.Fatalf("chunk after the finish: %s", ev)
			}
			d := c.Delta
			if d.Content != nil {
				s.content += *d.Content
			}
			if d.ReasoningContent != nil {
				s.reasoning += *d.ReasoningContent
			}
			if len(d.ToolCalls) > 1 {
				t.Fatalf("several tool call deltas in one chunk: %s", ev)
			}
			for _, tc := range d.ToolCalls {
				if tc.ID != nil {
					// A call's first delta: index, id, type, name, "".
					if tc.Index != len(s.calls) || tc.Type == nil || *tc.Type != "function" || tc.Function.Name == nil ||
						tc.Function.Arguments == nil || *tc.Function.Arguments != "" || d.Content != nil {
						t.Fatalf("first delta of a call: %s", ev)
					}
					s.calls = append(s.calls, toolCall{ID: *tc.ID, Type: "function"})
					s.calls[tc.Index].Function.Name = *tc.Function.Name
					continue
				}
				if tc.Index >= len(s.calls) || tc.Type != nil || tc.Function.Name != nil || tc.Function.Arguments == nil {
					t.Fatalf("argument delta: %s", ev)
				}
				s.calls[tc.Index].Function.Arguments += *tc.Function.Arguments
			}
			if c.FinishReason != nil {
				s.finish = *c.FinishReason
			}
		}
	}
	return out
}

// Tool calls parsed from what the model writes (tool_choice auto), through
// the HTTP layer: content before a call streams as content, the call as
// deltas (never as content), finish_reason "tool_calls"; the full response
// agrees.
func TestToolCallsAuto(t *testing.T) {
	text := "Let me check.\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"
	eng := &scriptEngine{pieces: bytesOf(text)}
	e := newEnv(t, nil, func(o *server.Options) {
		o.Engine, o.EnableAutoToolChoice, o.ToolCallParser = eng, true, "hermes"
	})
	body := `{"messages":[{"role":"user","content":"Weather?"}],"n":2,"tools":[` + weatherTool + `]`
	for _, parallel := range []bool{true, false} {
		b := body
		want := []string{`{"city": "Paris"}`, `{"city": "Oslo"}`}
		if !parallel {
			b += `,"parallel_tool_calls":false`
			want = want[:1]
		}
		code, resp := e.post("/v1/chat/completions", b+`,"stream":true}`)
		if code != 200 {
			t.Fatalf("%d %s", code, resp)
		}
		got := collectStream(t, resp)
		for i := range 2 {
			s := got[i]
			if s == nil || s.content != "Let me check." || s.finish != "tool_calls" || len(s.calls) != len(want) {
				t.Fatalf("choice %d: %+v\n%s", i, s, resp)
			}
			for k, c := range s.calls {
				if c.Function.Name != "get_weather" || c.Function.Arguments != want[k] || !strings.HasPrefix(c.ID, "call_") {
					t.Errorf("call %d: %+v", k, c)
				}
			}
		}
		if strings.Contains(string(resp), "tool_call>") {
			t.Error("a call leaked as content")
		}

		code, resp = e.post("/v1/chat/completions", b+`}`)
		if code != 200 {
			t.Fatalf("%d %s", code, resp)
		}
		r := decode[chatResp](t, resp)
		for _, ch := range r.Choices {
			m := ch.Message
			if m.Content == nil || *m.Content != "Let me check." || ch.FinishReason != "tool_calls" || len(m.ToolCalls) != len(want) {
				t.Fatalf("%s", resp)
			}
			for k, c := range m.ToolCalls {
				if c.Type != "function" || c.Function.Name != "get_weather" || c.Function.Arguments != want[k] || c.ID == "" {
					t.Errorf("call %d: %+v", k, c)
				}
			}
			if m.ReasoningContent != nil {
				t.Errorf("reasoning_content without a reasoning parser: %s", resp)
			}
		}
	}
	// tool_choice none: the tools are shown to the model, nothing is parsed.
	code, resp := e.post("/v1/chat/completions", body+`,"tool_choice":"none"}`)
	r := decode[chatResp](t, resp)
	if code != 200 || *r.Choices[0].Message.Content != text || r.Choices[0].FinishReason != "stop" || len(r.Choices[0].Message.ToolCalls) != 0 {
		t.Fatalf("none: %d %s", code, resp)
	}
	// Content only: no tool_calls, finish "stop".
	plain := &scriptEngine{pieces: bytesOf("Hello <tool")}
	e2 := newEnv(t, nil, func(o *server.Options) {
		o.Engine, o.EnableAutoToolChoice, o.ToolCallParser = plain, true, "hermes"
	})
	code, resp = e2.post("/v1/chat/completions", body+`,"stream":true}`)
	if got := collectStream(t, resp)[0]; code != 200 || got.content != "Hello <tool" || got.finish != "stop" || len(got.calls) != 0 {
		t.Fatalf("%d %+v", code, got)
	}
}

// A reasoning parser splits <think>...</think> into reasoning_content,
// streamed and whole, and tool calls are parsed from the content after it.
func TestReasoningSplit(t *testing.T) {
	text := "<think>\nThe user wants weather.\n</think>\n\nChecking.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>"
	eng := &scriptEngine{pieces: bytesOf(text)}
	e := newEnv(t, nil, func(o *server.Options) {
		o.Engine, o.ReasoningParser, o.EnableAutoToolChoice, o.ToolCallParser = eng, "qwen3", true, "hermes"
	})
	body := `{"messages":[{"role":"user","content":"Weather?"}],"tools":[` + weatherTool + `]`
	code, resp := e.post("/v1/chat/completions", body+`,"stream":true}`)
	if code != 200 {
		t.Fatalf("%d %s", code, resp)
	}
	s := collectStream(t, resp)[0]
	if s.reasoning != "\nThe user wants weather.\n" || s.content != "Checking." || len(s.calls) != 1 ||
		s.calls[0].Function.Arguments != `{"city": "Rome"}` || s.finish != "tool_calls" {
		t.Fatalf("%+v\n%s", s, resp)
	}
	code, resp = e.post("/v1/chat/completions", body+`}`)
	r := decode[chatResp](t, resp)
	m := r.Choices[0].Message
	if code != 200 || m.ReasoningContent == nil || *m.ReasoningContent != s.reasoning || *m.Content != "Checking." || len(m.ToolCalls) != 1 {
		t.Fatalf("%d %s", code, resp)
	}
	// Without tools: reasoning and content only; reasoning_content is null
	// when the model did not reason.
	plain := &scriptEngine{pieces: bytesOf("Just an answer.")}
	e2 := newEnv(t, nil, func(o *server.Options) { o.Engine, o.ReasoningParser = plain, "qwen3" })
	code, resp = e2.post("/v1/chat/completions", `{"messages":[{"role":"user","content":"Hi"}]}`)
	if code != 200 || !strings.Contains(string(resp), `"content":"Just an answer.","reasoning_content":null`) {
		t.Fatalf("%d %s", code, resp)
	}
}

// The Qwen3 chat template renders tools, an assistant's tool calls and the
// tool results as transformers does with what vLLM hands it (arguments as
// a JSON value, key order kept; tools as pydantic dumps them).
func TestToolHistoryRendering(t *testing.T) {
	eng := &servertest.Engine{}
	e := newEnv(t, eng, func(o *server.Options) { o.Tokenizer = qwen3Template(t); o.MaxModelLen = 4096 })
	code, resp := e.post("/v1/chat/completions", `{"max_tokens":1,"tool_choice":"none","tools":[`+weatherTool+`],"messages":[
		{"role":"system","content":"S"},
		{"role":"user","content":"Weather in Paris?"},
		{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"unit\":\"c\"}"}}]},
		{"role":"tool","tool_call_id":"call_1","content":"22"},
		{"role":"tool","tool_call_id":"call_1","content":"sunny"}]}`)
	if code != 200 {
		t.Fatalf("%d %s", code, resp)
	}
	var got strings.Builder
	for _, id := range eng.Requests()[0].PromptIDs {
		got.WriteByte(byte(id))
	}
	want := "<|im_start|>system\nS\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" +
		"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" +
		`{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}` +
		"\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n" +
		"<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" +
		"<|im_start|>user\nWeather in Paris?<|im_end|>\n" +
		"<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call><|im_end|>\n" +
		"<|im_start|>user\n<tool_response>\n22\n</tool_response>\n<tool_response>\nsunny\n</tool_response><|im_end|>\n" +
		"<|im_start|>assistant\n"
	if got.String() != want {
		t.Fatalf("rendered\n%q\nwant\n%q", got.String(), want)
	}
}

// Forced calls use the --tool-call-parser's format: the grammar the
// sequences get accepts a call in that format (and EOS after it), and the
// output is read back with that parser.
func TestForcedToolCallFormats(t *testing.T) {
	for format, text := range map[string]string{
		"hermes":      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
		"llama3_json": `{"name": "get_weather", "parameters": {"city": "Oslo"}}`,
		"mistral":     `[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}]`,
	} {
		eng := &scriptEngine{pieces: bytesOf(text)}
		e := newEnv(t, nil, func(o *server.Options) { o.Engine, o.ToolCallParser = eng, format })
		code, resp := e.post("/v1/chat/completions", `{"messages":[{"role":"user","content":"Weather?"}],"tools":[`+weatherTool+`],"tool_choice":"required","n":2}`)
		if code != 200 {
			t.Fatalf("%s: %d %s", format, code, resp)
		}
		r := decode[chatResp](t, resp)
		for _, ch := range r.Choices {
			if ch.FinishReason != "tool_calls" || len(ch.Message.ToolCalls) != 1 || ch.Message.ToolCalls[0].Function.Arguments != `{"city": "Oslo"}` {
				t.Fatalf("%s: %s", format, resp)
			}
		}
		eng.mu.Lock()
		p := eng.reqs[0].Params
		eng.mu.Unlock()
		if p.SkipSpecialTokens {
			t.Errorf("%s: special tokens skipped: a format's markers may be special tokens", format)
		}
		pr := p.Processors()[0]
		logits := make([]float32, servertest.VocabSize)
		for i := 0; i < len(text); i++ {
			clear(logits)
			pr.Process(logits)
			if math.IsInf(float64(logits[text[i]]), -1) {
				t.Fatalf("%s: the grammar refuses %q after %q", format, text[i], text[:i])
			}
			if !math.IsInf(float64(logits[servertest.EOS]), -1) {
				t.Fatalf("%s: EOS allowed after %q", format, text[:i])
			}
			pr.Accept(int(text[i]))
		}
		clear(logits)
		pr.Process(logits)
		if math.IsInf(float64(logits[servertest.EOS]), -1) {
			t.Fatalf("%s: EOS refused after the call", format)
		}
	}
}

// /tokenize renders messages with tools (and chat_template_kwargs,
// add_generation_prompt) exactly as /v1/chat/completions would, so its
// count is the chat request's prompt length.
func TestTokenizeChatWithTools(t *testing.T) {
	eng := &servertest.Engine{}
	e := newEnv(t, eng, func(o *server.Options) { o.Tokenizer = qwen3Template(t); o.MaxModelLen = 4096 })
	msgs := `"messages":[{"role":"user","content":"Weather in Paris?"}]`
	tokenize := func(fields string) []int {
		t.Helper()
		code, b := e.post("/tokenize", `{`+msgs+fields+`}`)
		var r struct {
			Tokens []int `json:"tokens"`
		}
		if code != 200 || json.Unmarshal(b, &r) != nil {
			t.Fatalf("/tokenize %s: %d %s", fields, code, b)
		}
		return r.Tokens
	}
	text := func(ids []int) string {
		var sb strings.Builder
		for _, id := range ids {
			sb.WriteByte(byte(id))
		}
		return sb.String()
	}
	for _, fields := range []string{
		`,"tools":[` + weatherTool + `]`,
		`,"tools":[` + weatherTool + `],"chat_template_kwargs":{"enable_thinking":false}`,
		`,"chat_template_kwargs":{"enable_thinking":false}`,
	} {
		got := tokenize(fields)
		if code, b := e.post("/v1/chat/completions", `{"max_tokens":1,"tool_choice":"none",`+msgs+fields+`}`); code != 200 {
			t.Fatalf("chat %s: %d %s", fields, code, b)
		}
		reqs := eng.Requests()
		if want := reqs[len(reqs)-1].PromptIDs; text(got) != text(want) {
			t.Fatalf("%s: /tokenize rendered\n%q\nchat rendered\n%q", fields, text(got), text(want))
		}
		if strings.Contains(fields, "tools") != strings.Contains(text(got), "<tools>") {
			t.Fatalf("%s: tools not rendered as asked:\n%q", fields, text(got))
		}
	}
	if s := text(tokenize(`,"add_generation_prompt":false`)); strings.HasSuffix(s, "<|im_start|>assistant\n") {
		t.Fatalf("add_generation_prompt false still adds it: %q", s)
	}
}

// /tokenize refuses what it cannot honour, naming the field.
func TestTokenizeRefusals(t *testing.T) {
	e := newEnv(t, nil, func(o *server.Options) { o.Tokenizer = qwen3Template(t) })
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	for _, c := range []struct {
		body, param string
		parts       []string
	}{
		{`{` + msgs + `,"tools":[{"type":"function","function":{"parameters":{}}}]}`, "tools", []string{"tools[0]"}},
		{`{` + msgs + `,"tools":[{"type":"function","function":{"name":"f","parameters":"x"}}]}`, "tools", []string{"parameters"}},
		{`{` + msgs + `,"chat_template":"{{ messages }}"}`, "chat_template", []string{"--chat-template"}},
		{`{` + msgs + `,"mm_processor_kwargs":{"num_crops":4}}`, "mm_processor_kwargs", []string{"text only"}},
		{`{` + msgs + `,"add_generation_prompt":true,"continue_final_message":true}`, "continue_final_message", nil},
		{`{"prompt":"hi","tools":[` + weatherTool + `]}`, "tools", []string{"messages"}},
		{`{"prompt":"hi","chat_template_kwargs":{"enable_thinking":false}}`, "chat_template_kwargs", []string{"messages"}},
		{`{"prompt":"hi","add_generation_prompt":true}`, "add_generation_prompt", []string{"messages"}},
		{`{"prompt":"hi",` + msgs + `}`, "prompt", []string{"not both"}},
	} {
		code, b := e.post("/tokenize", c.body)
		wantError(t, c.body, code, b, c.param, c.parts...)
	}
	// An empty mm_processor_kwargs asks for nothing.
	if code, b := e.post("/tokenize", `{`+msgs+`,"mm_processor_kwargs":{}}`); code != 200 {
		t.Fatalf("%d %s", code, b)
	}
}
