package bench

import (
	"strings"
	"testing"
)

func TestParseRange(t *testing.T) {
	for in, want := range map[string]Range{"128": {128, 128}, "100:200": {100, 200}, " 5 : 5 ": {5, 5}} {
		got, err := ParseRange(in)
		if err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "0", "10:5", "a:b", "-3"} {
		if _, err := ParseRange(bad); err == nil {
			t.Errorf("%q: want error", bad)
		}
	}
}

func TestRandomWorkload(t *testing.T) {
	w := Random{InputLen: Range{100, 200}, OutputLen: Range{8, 16}, Seed: 1}
	seen := map[string]bool{}
	for i := range 50 {
		it := w.Item(i)
		n := len(strings.Fields(it.Prompt))
		if n < 100 || n > 200 || it.PromptTokens != n {
			t.Fatalf("item %d: %d words, estimate %d", i, n, it.PromptTokens)
		}
		if it.MaxTokens < 8 || it.MaxTokens > 16 {
			t.Fatalf("item %d: max tokens %d", i, it.MaxTokens)
		}
		if w.Item(i) != it {
			t.Fatal("not deterministic in i")
		}
		seen[it.Prompt] = true
	}
	if len(seen) < 50 {
		t.Errorf("only %d distinct prompts of 50", len(seen))
	}
	if (Random{InputLen: Range{10, 10}, OutputLen: Range{1, 1}, Seed: 2}).Item(0) == (Random{InputLen: Range{10, 10}, OutputLen: Range{1, 1}, Seed: 3}).Item(0) {
		t.Error("seed has no effect")
	}
}

func TestReadWorkload(t *testing.T) {
	jsonl := `{"prompt": "hello there", "max_tokens": 7}

{"prompt": "no max"}
`
	l, err := ReadWorkload(strings.NewReader(jsonl), 32)
	if err != nil {
		t.Fatal(err)
	}
	if len(l) != 2 || l[0].MaxTokens != 7 || l[1].MaxTokens != 32 || l.Item(3).Prompt != "no max" {
		t.Fatalf("%+v", l)
	}
	sharegpt := `[
 {"id": "a", "conversations": [{"from": "human", "value": "What is Go?"}, {"from": "gpt", "value": "` + strings.Repeat("abcd", 25) + `"}]},
 {"id": "b", "conversations": [{"from": "gpt", "value": "orphan answer"}]},
 {"id": "c", "conversations": [{"from": "human", "value": "Only a question"}]}
]`
	l, err = ReadWorkload(strings.NewReader(sharegpt), 16)
	if err != nil {
		t.Fatal(err)
	}
	if len(l) != 2 || l[0].Prompt != "What is Go?" || l[0].MaxTokens != 25 || l[1].MaxTokens != 16 {
		t.Fatalf("%+v", l)
	}
	for _, bad := range []string{"", "{not json", `[{"conversations": []}]`} {
		if _, err := ReadWorkload(strings.NewReader(bad), 1); err == nil {
			t.Errorf("%q: want error", bad)
		}
	}
}
