package tokenizer

import (
	"strings"
	"testing"
)

// The bytes of a text's tokens, concatenated, are the text itself (with the
// SentencePiece prefix space that a whole-text decode strips).
func TestTokenBytes(t *testing.T) {
	for _, c := range []struct {
		name, text, want string
		mode             Mode
	}{
		{"qwen3", "emoji 👩\u200d👩 ✅ {\"a\": 1}\n<tool_call>x</tool_call>", "", ModeTransformers},
		{"mistral-sp", "emoji 👩\u200d👩 🚀 ok  two", " ", ModeTransformers},
	} {
		t.Run(c.name, func(t *testing.T) {
			tok := loadTok(t, c.name, c.mode)
			var sb strings.Builder
			for _, id := range tok.Encode(c.text, false) {
				b, ok := tok.TokenBytes(id)
				if !ok {
					t.Fatalf("id %d: no bytes", id)
				}
				sb.Write(b)
			}
			if got, want := sb.String(), c.want+c.text; got != want {
				t.Errorf("got %q, want %q", got, want)
			}
			if _, ok := tok.TokenBytes(-1); ok {
				t.Error("TokenBytes(-1) ok")
			}
		})
	}
}
