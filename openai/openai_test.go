package openai

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/llmserve/llmserve/engine"
)

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	cases := []string{"", "plain", `q"b\s`, "tab\tnl\ncr\r\x00\x1f", "héllo 世界 🙂", "\u2028\u2029", "bad\xffutf8\xc3", "<&>"}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, rng.IntN(12))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		cases = append(cases, string(b))
	}
	for _, s := range cases {
		got := AppendString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%q -> invalid JSON %s: %v", s, got, err)
		}
		want := strings.ToValidUTF8(s, "\uFFFD")
		// encoding/json replaces each invalid byte; ToValidUTF8 merges runs.
		var std string
		j, _ := json.Marshal(s)
		_ = json.Unmarshal(j, &std)
		if back != std {
			t.Fatalf("%q: got %q, encoding/json %q (%q)", s, back, std, want)
		}
		if string(AppendString(nil, []byte(s))) != string(got) {
			t.Fatalf("%q: []byte and string encodings differ", s)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	f.Add("a\"b")
	f.Add("\xe2\x80\xa8")
	f.Fuzz(func(t *testing.T, s string) {
		var back string
		if err := json.Unmarshal(AppendString(nil, s), &back); err != nil {
			t.Fatal(err)
		}
		if utf8.ValidString(s) && back != s {
			t.Fatalf("%q round-tripped to %q", s, back)
		}
	})
}

func TestPromptShapes(t *testing.T) {
	for in, want := range map[string]Prompt{
		`"hi"`:        {Texts: []string{"hi"}},
		`["a","b"]`:   {Texts: []string{"a", "b"}},
		`[1,2,3]`:     {IDs: [][]int{{1, 2, 3}}},
		`[[1],[2,3]]`: {IDs: [][]int{{1}, {2, 3}}},
		`null`:        {},
		`[]`:          {},
	} {
		var p Prompt
		if err := json.Unmarshal([]byte(in), &p); err != nil || !reflect.DeepEqual(p, want) {
			t.Errorf("%s: %+v %v", in, p, err)
		}
	}
	for _, bad := range []string{`{"a":1}`, `["a",1]`, `[1,"a"]`, `[[1],["x"]]`, `true`, `[1.5]`,
		// A null among token ids is not token 0.
		`[1,null]`, `[null]`, `[null,1]`, `[[1],null]`, `[[1,null]]`, `[null,[1]]`, `["a",null]`,
		`[1e2]`, `[1,2.0]`, `[99999999999999999999]`, `[[1],2]`, `[1,[2]]`, `[1,true]`, `[1,{}]`} {
		var r CompletionRequest
		err := json.Unmarshal([]byte(`{"prompt":`+bad+`}`), &r)
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) || te.Field != "prompt" {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

func TestTokenIDs(t *testing.T) {
	for in, want := range map[string]TokenIDs{`null`: nil, `[]`: {}, ` [ 1 , 2 ,-3 ] `: {1, 2, -3}, `[0]`: {0}} {
		var r CompletionRequest
		if err := json.Unmarshal([]byte(`{"stop_token_ids":`+in+`}`), &r); err != nil || !reflect.DeepEqual(r.StopTokenIDs, want) {
			t.Errorf("%s: %#v %v", in, r.StopTokenIDs, err)
		}
	}
	for _, bad := range []string{`[1,null]`, `[null]`, `[1.5]`, `["1"]`, `[[1]]`, `1`, `{}`, `[1e0]`, `[18446744073709551616]`} {
		var r CompletionRequest
		err := json.Unmarshal([]byte(`{"stop_token_ids":`+bad+`}`), &r)
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) || !strings.HasSuffix(te.Field, "stop_token_ids") {
			t.Errorf("%s: %v", bad, err)
		}
		var d DetokenizeRequest
		if err := json.Unmarshal([]byte(`{"tokens":`+bad+`}`), &d); !errors.As(err, &te) || te.Field != "tokens" {
			t.Errorf("tokens %s: %v", bad, err)
		}
	}
	// Called directly, on anything: an error, never a panic.
	for _, junk := range []string{``, `[`, `]`, `[1,]`, `[,1]`, `[1 2]`, `[-]`, `[--1]`, `[1,,2]`, "[1\x00]"} {
		if _, err := parseIDs([]byte(junk)); err == nil {
			t.Errorf("%q parsed", junk)
		}
	}
}

func TestLogitBiasNull(t *testing.T) {
	var r CompletionRequest
	if err := json.Unmarshal([]byte(`{"logit_bias":{"5":1,"6":-2.5}}`), &r); err != nil || r.LogitBias["6"] != -2.5 {
		t.Fatal(r.LogitBias, err)
	}
	err := json.Unmarshal([]byte(`{"logit_bias":{"5":null}}`), &r)
	var te *json.UnmarshalTypeError
	if !errors.As(err, &te) || !strings.HasSuffix(te.Field, "logit_bias") {
		t.Fatalf("null bias: %v", err)
	}
	if err := json.Unmarshal([]byte(`{"logit_bias":null}`), &r); err != nil || r.LogitBias != nil {
		t.Fatal(r.LogitBias, err)
	}
}

func TestStringList(t *testing.T) {
	var r CompletionRequest
	if err := json.Unmarshal([]byte(`{"stop":"x"}`), &r); err != nil || len(r.Stop) != 1 {
		t.Fatal(r.Stop, err)
	}
	if err := json.Unmarshal([]byte(`{"stop":["x","y"]}`), &r); err != nil || len(r.Stop) != 2 {
		t.Fatal(r.Stop, err)
	}
}

func ptr[T any](v T) *T { return &v }

func TestParamsValidation(t *testing.T) {
	lim := Limits{VocabSize: 100}
	bad := map[string]Sampling{
		"n":                  {N: ptr(0)},
		"max_tokens":         {MaxTokens: ptr(0)},
		"temperature":        {Temperature: ptr(math.NaN())},
		"top_p":              {TopP: ptr(1.01)},
		"top_k":              {TopK: ptr(-5)},
		"min_p":              {MinP: ptr(-0.1)},
		"presence_penalty":   {PresencePenalty: ptr(2.5)},
		"frequency_penalty":  {FrequencyPenalty: ptr(-2.5)},
		"repetition_penalty": {RepetitionPenalty: ptr(-1.0)},
		"min_tokens":         {MinTokens: ptr(-1)},
		"stop":               {Stop: StringList{""}},
		"stop_token_ids":     {StopTokenIDs: []int{100}},
		"logit_bias":         {LogitBias: map[string]float64{"5": 101}},
		"stream_options":     {StreamOptions: &StreamOptions{}},
	}
	many := func(n int, f func(i int) string) StringList {
		l := make(StringList, n)
		for i := range l {
			l[i] = f(i)
		}
		return l
	}
	// The sampler's bounds, and the limits on list sizes.
	for param, cases := range map[string][]Sampling{
		"temperature":        {{Temperature: ptr(101.0)}, {Temperature: ptr(math.Inf(1))}},
		"repetition_penalty": {{RepetitionPenalty: ptr(0.001)}, {RepetitionPenalty: ptr(101.0)}, {RepetitionPenalty: ptr(math.NaN())}},
		"presence_penalty":   {{PresencePenalty: ptr(math.NaN())}},
		"stop": {
			{Stop: many(MaxStop+1, func(i int) string { return strings.Repeat("x", i+1) })},
			{Stop: StringList{strings.Repeat("x", MaxStopBytes+1)}},
		},
		"stop_token_ids": {{StopTokenIDs: make(TokenIDs, MaxStopTokenIDs+1)}, {StopTokenIDs: TokenIDs{-1}}},
		"logit_bias":     {{LogitBias: LogitBias{"-1": 1}}, {LogitBias: LogitBias{"1": math.NaN()}}},
		"n":              {{N: ptr(MaxN + 1)}},
	} {
		for _, s := range cases {
			_, err := s.Params(lim)
			var pe *ParamError
			if !errors.As(err, &pe) || pe.Param != param {
				t.Errorf("%s %+v: %v", param, s, err)
			}
		}
	}
	big := LogitBias{}
	for i := range MaxLogitBias + 1 {
		big[strconv.Itoa(i)] = 1
	}
	if _, err := (&Sampling{LogitBias: big}).Params(Limits{}); err == nil || err.(*ParamError).Param != "logit_bias" {
		t.Errorf("%d logit_bias entries: %v", len(big), err)
	}
	// n above --max-num-seqs says why.
	_, err := (&Sampling{N: ptr(9)}).Params(Limits{MaxNumSeqs: 8})
	if pe, ok := err.(*ParamError); !ok || pe.Param != "n" || !strings.Contains(pe.Message, "at most 8 sequences") {
		t.Errorf("n=9 with max-num-seqs 8: %v", err)
	}
	// Within every bound: vLLM's repetition_penalty 3, the limits exactly.
	ok := Sampling{RepetitionPenalty: ptr(3.0), Temperature: ptr(100.0), N: ptr(8),
		Stop:         many(MaxStop, func(i int) string { return strings.Repeat("y", MaxStopBytes-i) }),
		StopTokenIDs: make(TokenIDs, MaxStopTokenIDs)}
	if _, err := ok.Params(Limits{VocabSize: 100, MaxNumSeqs: 8}); err != nil {
		t.Errorf("at the limits: %v", err)
	}
	for param, s := range bad {
		_, err := s.Params(lim)
		var pe *ParamError
		if !errors.As(err, &pe) || pe.Param != param || !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: %v", param, err)
		}
	}
	s := Sampling{N: ptr(3), TopK: ptr(-1), Seed: ptr(int64(9)), LogitBias: map[string]float64{"5": -3}, SkipSpecialTokens: ptr(false)}
	p, err := s.Params(lim)
	if err != nil || p.N != 3 || p.TopK != -1 || *p.Seed != 9 || p.LogitBias[5] != -3 || p.SkipSpecialTokens || p.MaxTokens != 0 || p.Logprobs != -1 {
		t.Fatalf("%+v %v", p, err)
	}
	c := ChatCompletionRequest{Messages: []map[string]any{{"role": "user"}}, Logprobs: true}
	if p, err := c.Params(lim); err != nil || p.Logprobs != 0 {
		t.Fatalf("chat logprobs without top_logprobs: %+v %v", p, err)
	}
}

func TestNormalizeMessages(t *testing.T) {
	in := []map[string]any{{"role": "user", "content": []any{
		map[string]any{"type": "text", "text": "a"}, map[string]any{"type": "text", "text": "b"}}, "name": "x"}}
	out, err := NormalizeMessages("messages", in)
	if err != nil || out[0]["content"] != "a\nb" || out[0]["name"] != "x" {
		t.Fatal(out, err)
	}
	if _, ok := in[0]["content"].([]any); !ok {
		t.Fatal("input modified")
	}
}

func TestEncoderShapes(t *testing.T) {
	lps := []engine.TokenLogprob{{TokenID: 1, Logprob: -0.5, Top: []engine.TopLogprob{{TokenID: 1, Logprob: -0.5}, {TokenID: 2, Logprob: float32(math.Inf(-1))}}}}
	names := map[int]string{1: "ab", 2: "c"}
	enc := NewEncoder(KindCompletionChunk, "cmpl-1", 7, "m\"x")
	enc.TokenText = func(id int) string { return names[id] }
	ch := []Choice{{Index: 2, Text: []byte("ab"), WantLogprobs: true, Logprobs: lps, TextOffset: 5, FinishReason: "stop", StopReason: 42}}
	var got map[string]any
	b := enc.Append(nil, ch, &Usage{PromptTokens: 1, CompletionTokens: 2, TotalTokens: 3})
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	want := `{"choices":[{"finish_reason":"stop","index":2,"logprobs":{"text_offset":[5],"token_logprobs":[-0.5],"tokens":["ab"],"top_logprobs":[{"ab":-0.5,"c":-9999}]},"stop_reason":42,"text":"ab"}],"created":7,"id":"cmpl-1","model":"m\"x","object":"text_completion","usage":{"completion_tokens":2,"prompt_tokens":1,"total_tokens":3}}`
	if j, _ := json.Marshal(got); string(j) != want {
		t.Fatalf("got  %s\nwant %s", j, want)
	}
	if ch[0].TextOffset != 7 {
		t.Fatalf("text offset advanced to %d", ch[0].TextOffset)
	}

	enc = NewEncoder(KindChatChunk, "c", 1, "m")
	enc.AsTokenIDs = true
	b = enc.Append(nil, []Choice{{Role: "assistant"}}, nil)
	if string(b) != `{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null,"stop_reason":null}]}` {
		t.Fatalf("%s", b)
	}
	b = enc.Append(nil, []Choice{{FinishReason: "length", WantLogprobs: true, Logprobs: lps[:1]}}, nil)
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if !strings.Contains(string(b), `"delta":{}`) || !strings.Contains(string(b), `"token":"token_id:1","logprob":-0.5,"bytes":[116,111`) {
		t.Fatalf("%s", b)
	}
	enc = NewEncoder(KindChat, "c", 1, "m")
	b = enc.Append(nil, []Choice{{Role: "assistant", Text: []byte("hi")}}, nil)
	if !strings.Contains(string(b), `"object":"chat.completion"`) || !strings.Contains(string(b), `"message":{"role":"assistant","content":"hi"}`) {
		t.Fatalf("%s", b)
	}
}

func BenchmarkEncodeChunk(b *testing.B) {
	enc := NewEncoder(KindChatChunk, "chatcmpl-0123456789", 1700000000, "Qwen/Qwen2.5-1.5B")
	ch := []Choice{{Text: []byte(" token")}}
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = enc.Append(buf[:0], ch, nil)
	}
}
