package tokenizer

import (
	"errors"
	"github.com/llmserve/llmserve/internal/shareddata"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestStreamDeltas(t *testing.T) {
	qwen := loadTok(t, "qwen3", ModeTransformers)
	mistral := loadTok(t, "mistral-sp", ModeTransformers)
	for _, c := range []struct {
		name string
		tok  *Tokenizer
		text string
	}{
		{"qwen emoji", qwen, "emoji 👩\u200d👩\u200d👧\u200d👦 🚀🔥 ✅ done"},
		{"qwen cjk", qwen, "日本語のテキストと中文文本"},
		{"mistral byte fallback", mistral, "emoji 👩\u200d👩\u200d👧 🚀 ok"},
		{"mistral leading spaces", mistral, "Hello  world"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ids := c.tok.Encode(c.text, false)
			s := c.tok.NewStream(nil, false)
			var deltas []string
			for _, id := range ids {
				d := s.Add(id)
				if strings.Contains(d, "\uFFFD") {
					t.Errorf("delta %q holds a replacement character", d)
				}
				deltas = append(deltas, d)
			}
			if f := s.Flush(); f != "" {
				t.Errorf("flush returned %q for complete text", f)
			}
			if got, want := strings.Join(deltas, ""), c.tok.Decode(ids, false); got != want {
				t.Errorf("stream %q, decode %q", got, want)
			}
		})
	}
}

// With the prompt as context, a SentencePiece continuation keeps the space
// that a stand-alone decode would strip (as vLLM's detokenizer does).
func TestStreamPromptContext(t *testing.T) {
	tok := loadTok(t, "mistral-sp", ModeTransformers)
	prompt := tok.Encode("Say hi:", true)
	gen := tok.Encode("Hello there", false)
	s := tok.NewTextStream(prompt, true)
	var sb strings.Builder
	for _, id := range gen {
		sb.WriteString(s.Add(id))
	}
	if got := sb.String(); got != " Hello there" {
		t.Errorf("got %q", got)
	}
}

// A byte-fallback run that later turns invalid must not have been emitted.
func TestStreamByteFallbackHeld(t *testing.T) {
	tok := loadTok(t, "mistral-sp", ModeTransformers)
	b := func(x string) int {
		id, ok := tok.TokenToID(x)
		if !ok {
			t.Fatalf("no token %s", x)
		}
		return id
	}
	// "é" as bytes, then a stray continuation byte: HF decodes the run
	// C3 A9 80 as three U+FFFD.
	ids := []int{b("<0xC3>"), b("<0xA9>"), b("<0x80>"), b("▁ok")}
	want := tok.Decode(ids, false)
	if want != "\uFFFD\uFFFD\uFFFD ok" {
		t.Fatalf("decode = %q", want)
	}
	if got := streamConcat(tok, ids, false); got != want {
		t.Errorf("stream %q want %q", got, want)
	}
}

func TestTokenText(t *testing.T) {
	qwen := loadTok(t, "qwen3", ModeTransformers)
	ids := qwen.Encode("emoji 👩 hi", false) // " 👩" is two tokens
	if got := qwen.TokenText(ids[1]); got != " \uFFFD" {
		t.Errorf("partial emoji token text %q", got)
	}
	if got := qwen.TokenText(ids[len(ids)-1]); got != " hi" {
		t.Errorf("token text %q", got)
	}
}

func TestSpecials(t *testing.T) {
	qwen := loadTok(t, "qwen3", ModeTransformers)
	if qwen.VocabSize() != 151669 {
		t.Errorf("qwen vocab size %d", qwen.VocabSize())
	}
	if _, ok := qwen.BOSTokenID(); ok {
		t.Error("qwen has no bos")
	}
	if got := qwen.EOSTokenIDs(); !reflect.DeepEqual(got, []int{151645}) {
		t.Errorf("qwen eos %v", got)
	}
	if !qwen.IsSpecial(151644) || qwen.IsSpecial(151667) || qwen.IsSpecial(100) {
		t.Error("IsSpecial wrong")
	}
	if id, ok := qwen.TokenToID("<think>"); !ok || id != 151667 {
		t.Errorf("<think> = %d %v", id, ok)
	}
	if s, ok := qwen.IDToToken(9707); !ok || s != "Hello" {
		t.Errorf("IDToToken(9707) = %q", s)
	}
	if got := qwen.Decode(qwen.Encode("<|im_start|>a<think>b", false), true); got != "a<think>b" {
		t.Errorf("skip special: %q", got)
	}
	m := loadTok(t, "mistral-sp", ModeTransformers)
	if id, ok := m.BOSTokenID(); !ok || id != 1 {
		t.Errorf("mistral bos %d %v", id, ok)
	}
	if got := m.EOSTokenIDs(); !reflect.DeepEqual(got, []int{2}) {
		t.Errorf("mistral eos %v", got)
	}
	if m.HasChatTemplate() {
		t.Error("mistral-sp has no chat template")
	}
	if _, err := m.ApplyChatTemplate(nil, true, nil); !errors.Is(err, ErrNoChatTemplate) {
		t.Errorf("err %v", err)
	}
}

func TestGenerationConfigEOS(t *testing.T) {
	src := filepath.Join(shareddata.Dir(t), "tokenizers", "qwen3")
	dir := t.TempDir()
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		gen  string
		want []int
	}{
		{`{"eos_token_id": [151645, 151643]}`, []int{151645, 151643}},
		{`{"eos_token_id": 151643}`, []int{151645, 151643}},
		{`{"bos_token_id": 1}`, []int{151645}},
	} {
		if err := os.WriteFile(filepath.Join(dir, "generation_config.json"), []byte(c.gen), 0o644); err != nil {
			t.Fatal(err)
		}
		tok, err := LoadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if got := tok.EOSTokenIDs(); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: eos %v want %v", c.gen, got, c.want)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "generation_config.json"), []byte(`{"eos_token_id": "x"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadDir(dir); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "eos_token_id") {
		t.Errorf("bad eos_token_id: %v", err)
	}
}

// A small synthetic tokenizer exercising the less common features.
const tinyJSON = `{
  "added_tokens": [
    {"id": 10, "content": "<sw>", "single_word": true, "lstrip": false, "rstrip": false, "normalized": false, "special": false},
    {"id": 11, "content": "<ls>", "single_word": false, "lstrip": true, "rstrip": true, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext", "invert": false},
  "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<ls>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {"<ls>": {"id": "<ls>", "ids": [11], "tokens": ["<ls>"]}}},
  "decoder": {"type": "Fuse"},
  "model": {"type": "BPE", "unk_token": "?", "fuse_unk": true, "byte_fallback": false,
    "vocab": {"?": 0, "a": 1, "b": 2, " ": 3, "ab": 4, " a": 5, "<": 6, "s": 7, "w": 8, ">": 9, "\u00e9": 12},
    "merges": ["a b", [" ", "a"]]}
}`

func TestTinyFeatures(t *testing.T) {
	tok, err := New([]byte(tinyJSON), nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		text string
		want []int
	}{
		{"ab", []int{4}},
		{"ab ab", []int{4, 3, 4}}, // in " ab", "a b" (rank 0) beats " a" (rank 1)
		{" a", []int{5}},
		{"xyz", []int{0}},                   // fused unk
		{"a<sw>b", []int{1, 6, 7, 8, 9, 2}}, // single_word: not alone, so text
		{"a <sw> b", []int{1, 3, 10, 3, 2}},
		{"a  <ls>  b", []int{1, 11, 2}}, // lstrip/rstrip eat the spaces
		{"é", []int{12}},
	} {
		if got := tok.Encode(c.text, false); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: got %v want %v", c.text, got, c.want)
		}
	}
	if got := tok.Encode("ab", true); !reflect.DeepEqual(got, []int{11, 4}) {
		t.Errorf("post-processor: %v", got)
	}
}

func TestMalformed(t *testing.T) {
	base := tinyJSON
	for _, c := range []struct {
		name, old, new, field string
		unsupported           bool
	}{
		{"not json", base, `{"model": `, "tokenizer.json", false},
		{"not object", base, `[1,2]`, "tokenizer.json", false},
		{"model missing", `"model": {"type": "BPE"`, `"x": {"type": "BPE"`, "model", false},
		{"vocab not object", `"vocab": {"?"`, `"vocab": ["?"`, "model.vocab", false},
		{"vocab id string", `"a": 1,`, `"a": "1",`, "model.vocab", false},
		{"merge unknown", `"a b"`, `"a q"`, "model.merges", false},
		{"merge bad form", `"a b"`, `"a b c"`, "model.merges", false},
		{"merge not pair", `[" ", "a"]`, `[" "]`, "model.merges", false},
		{"unk missing", `"unk_token": "?"`, `"unk_token": "??"`, "unk_token", false},
		{"wordpiece", `"type": "BPE"`, `"type": "WordPiece"`, "model.type", true},
		{"added id", `"id": 10,`, `"id": -3,`, "added_tokens[0].id", false},
		{"added content", `"content": "<sw>"`, `"content": ""`, "added_tokens[0].content", false},
		{"split behavior", `"MergedWithNext"`, `"Sideways"`, "pre_tokenizer.behavior", false},
		{"pre-tokenizer type", `"type": "Split"`, `"type": "BertPreTokenizer"`, "pre_tokenizer.type", true},
		{"decoder type", `{"type": "Fuse"}`, `{"type": "WordPiece"}`, "decoder.type", true},
		{"decoder no type", `{"type": "Fuse"}`, `{}`, "decoder.type", false},
		{"template token", `"ids": [11]`, `"idz": [11]`, "", false},
		{"template unknown", `{"SpecialToken": {"id": "<ls>"`, `{"SpecialToken": {"id": "<zz>"`, "post_processor.single[0]", false},
		{"bad regex", `{"String": " "}`, `{"Regex": "(("}`, "pre_tokenizer.pattern", true},
		{"truncated", base, base[:len(base)/2], "tokenizer.json", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := strings.Replace(base, c.old, c.new, 1)
			if src == base {
				t.Fatalf("replacement %q not applied", c.old)
			}
			tok, err := New([]byte(src), nil, Options{})
			if c.name == "template token" {
				// A special token with no ids adds nothing; not an error.
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error (tokenizer %v)", tok != nil)
			}
			want := ErrMalformed
			if c.unsupported {
				want = ErrUnsupported
			}
			if !errors.Is(err, want) {
				t.Errorf("error %v is not %v", err, want)
			}
			if !strings.Contains(err.Error(), c.field) {
				t.Errorf("error %q does not name %q", err, c.field)
			}
		})
	}
	for _, cfg := range []struct{ json, field string }{
		{`{"bos_token": 3}`, "bos_token"},
		{`{"chat_template": 3}`, "chat_template"},
		{`{"additional_special_tokens": "x"}`, "additional_special_tokens"},
		{`{"add_bos_token": "yes"}`, "tokenizer_config.json"},
	} {
		_, err := New([]byte(base), []byte(cfg.json), Options{})
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), cfg.field) {
			t.Errorf("%s: %v", cfg.json, err)
		}
	}
	if _, err := LoadDir(t.TempDir()); err == nil || !strings.Contains(err.Error(), "tokenizer.json") {
		t.Errorf("missing dir: %v", err)
	}
}

// FuzzLoad: arbitrary tokenizer.json / tokenizer_config.json bytes give an
// error or a tokenizer, never a panic.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(tinyJSON), []byte(`{"bos_token": {"content": "<ls>"}, "chat_template": "{{ messages[0].content }}"}`))
	f.Add([]byte(`{"model": {"type": "BPE", "vocab": {}, "merges": []}}`), []byte(`{}`))
	f.Add([]byte(`{"model": {"vocab": {"a": 99999999999}}}`), []byte(`null`))
	f.Fuzz(func(t *testing.T, tj, cfg []byte) {
		tok, err := New(tj, cfg, Options{})
		if err != nil {
			return
		}
		ids := tok.Encode("a b <ls> é xyz", true)
		_ = tok.Decode(ids, false)
		_, _ = tok.ApplyChatTemplate([]map[string]any{{"role": "user", "content": "x"}}, true, nil)
	})
}
