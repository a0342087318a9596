package tokenizer

import (
	"encoding/json"
	"github.com/llmserve/llmserve/internal/shareddata"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

var loaded sync.Map // "name/mode" -> *Tokenizer

func loadTok(t testing.TB, name string, mode Mode) *Tokenizer {
	t.Helper()
	key := name + "/" + string(rune('0'+mode))
	if v, ok := loaded.Load(key); ok {
		return v.(*Tokenizer)
	}
	tok, err := LoadDirOptions(filepath.Join(shareddata.Dir(t), "tokenizers", name), Options{Mode: mode})
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	loaded.Store(key, tok)
	return tok
}

type golden struct {
	EncodeNoSpecial []struct {
		Text    string `json:"text"`
		IDs     []int  `json:"ids"`
		Decoded string `json:"decoded"`
	} `json:"encode_no_special"`
	WithSpecial []struct {
		Text string `json:"text"`
		IDs  []int  `json:"ids"`
	} `json:"with_special"`
	ChatTemplate []struct {
		Messages            []map[string]any `json:"messages"`
		AddGenerationPrompt bool             `json:"add_generation_prompt"`
		EnableThinking      *bool            `json:"enable_thinking"`
		Text                string           `json:"text"`
	} `json:"chat_template"`
}

func readGolden(t *testing.T, name string) *golden {
	b, err := os.ReadFile(filepath.Join(shareddata.Dir(t), "golden", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var g golden
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	return &g
}

// The goldens' encode_no_special come from the tokenizers library
// (Tokenizer.from_file) and with_special from transformers' AutoTokenizer,
// which for the Mistral (LlamaTokenizer) files rebuilds the pipeline; so each
// is checked against the matching mode, and the default mode
// (ModeTransformers) is checked against with_special.
func TestGolden(t *testing.T) {
	for _, name := range []string{"qwen3", "mistral-sp"} {
		t.Run(name, func(t *testing.T) {
			g := readGolden(t, name)
			lib := loadTok(t, name, ModeTokenizers)
			tf := loadTok(t, name, ModeTransformers)
			for _, c := range g.EncodeNoSpecial {
				if got := lib.Encode(c.Text, false); !equalIDs(got, c.IDs) {
					t.Errorf("encode_no_special %q:\n got %v\nwant %v", c.Text, got, c.IDs)
				}
				for _, tok := range []*Tokenizer{lib, tf} {
					if got := tok.Decode(c.IDs, false); got != c.Decoded {
						t.Errorf("decode %v: got %q want %q", c.IDs, got, c.Decoded)
					}
				}
			}
			for _, c := range g.WithSpecial {
				if got := tf.Encode(c.Text, true); !equalIDs(got, c.IDs) {
					t.Errorf("with_special %q:\n got %v\nwant %v", c.Text, got, c.IDs)
				}
			}
			for i, c := range g.ChatTemplate {
				extra := map[string]any{}
				if c.EnableThinking != nil {
					extra["enable_thinking"] = *c.EnableThinking
				}
				for _, tok := range []*Tokenizer{lib, tf} {
					got, err := tok.ApplyChatTemplate(c.Messages, c.AddGenerationPrompt, extra)
					if err != nil {
						t.Fatalf("chat %d: %v", i, err)
					}
					if got != c.Text {
						t.Errorf("chat %d:\n got %q\nwant %q", i, got, c.Text)
					}
				}
			}
		})
	}
}

func equalIDs(a, b []int) bool {
	if len(a) == 0 && len(b) == 0 {
		return true
	}
	return reflect.DeepEqual(a, b)
}

// The two modes differ only where transformers' Metaspace skips the
// prepended "▁" because the text already starts with a space.
func TestMistralModes(t *testing.T) {
	lib := loadTok(t, "mistral-sp", ModeTokenizers)
	tf := loadTok(t, "mistral-sp", ModeTransformers)
	for _, c := range []struct {
		text    string
		lib, tf []string
	}{
		{"   leading", []string{"▁▁▁", "▁leading"}, []string{"▁▁", "▁leading"}},
		{"Hello", []string{"▁Hello"}, []string{"▁Hello"}},
		{"<s>Hi", []string{"<s>", "▁Hi"}, []string{"<s>", "▁Hi"}},
		{"</s> [INST]", []string{"</s>▁▁[INST]"}, []string{"</s>▁[INST]"}},
	} {
		for _, x := range []struct {
			tok  *Tokenizer
			want []string
		}{{lib, c.lib}, {tf, c.tf}} {
			var got []string
			for _, id := range x.tok.Encode(c.text, false) {
				s, _ := x.tok.IDToToken(id)
				got = append(got, s)
			}
			if len(x.want) == 1 {
				got = []string{strings.Join(got, "")}
			}
			if !reflect.DeepEqual(got, x.want) {
				t.Errorf("%q: got %q want %q", c.text, got, x.want)
			}
		}
	}
}
