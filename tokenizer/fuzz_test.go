package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

var fuzzSeeds = []string{
	"Hello, world!  How are you?",
	"def add(a, b):\n    return a + b\n",
	"   leading spaces and trailing   ",
	"tabs\tand\nnewlines\n\n\nthree",
	"don't I'll we've they're she's IT'S 'ſ",
	"naïve café résumé Ünïcödé",
	"日本語のテキストと中文文本",
	"emoji 👩\u200d👩\u200d👧\u200d👦 🚀🔥 ✅",
	"<|im_start|>user\nhi<|im_end|><think></think>",
	"x\r\ny \u00a0\u3000 z\u2028",
	"\x00\x01\x7f",
	"1234567890 3.14159 -42",
	"",
}

// FuzzByteLevelRoundTrip: for the byte-level (Qwen) tokenizer,
// decode(encode(s)) == s for any valid UTF-8 s, up to the NFC normalizer.
func FuzzByteLevelRoundTrip(f *testing.F) {
	tok := loadTok(f, "qwen3", ModeTransformers)
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return
		}
		want := norm.NFC.String(s)
		if want != s {
			// NFC is applied per segment between added tokens; test the
			// normalized text, whose segments are already NFC.
			s = want
		}
		ids := tok.Encode(s, false)
		if got := tok.Decode(ids, false); got != want {
			t.Fatalf("round trip of %q:\n got %q\nids %v", s, got, ids)
		}
	})
}

// streamConcat feeds ids one by one and returns the concatenated output.
func streamConcat(tok *Tokenizer, ids []int, skip bool) string {
	s := tok.NewStream(nil, skip)
	var sb strings.Builder
	for _, id := range ids {
		sb.WriteString(s.Add(id))
	}
	sb.WriteString(s.Flush())
	return sb.String()
}

// idsFromBytes turns fuzz bytes into arbitrary ids (in range, including
// added and byte-fallback tokens, weighted towards interesting ones).
func idsFromBytes(tok *Tokenizer, b []byte) []int {
	var special []int
	for _, a := range tok.added {
		special = append(special, a.id)
	}
	var ids []int
	for i := 0; i+1 < len(b); i += 2 {
		v := int(b[i])<<8 | int(b[i+1])
		switch b[i] % 4 {
		case 0:
			// Low ids: single bytes/characters and (for SentencePiece)
			// the <0xNN> byte tokens.
			ids = append(ids, v%512)
		case 1:
			if len(special) > 0 {
				ids = append(ids, special[v%len(special)])
				continue
			}
			fallthrough
		default:
			ids = append(ids, (v*37)%tok.VocabSize())
		}
	}
	return ids
}

// FuzzStream: the incremental detokenizer's output, concatenated, equals
// the one-shot decode, for both tokenizers, with and without special tokens.
func FuzzStream(f *testing.F) {
	toks := []*Tokenizer{loadTok(f, "qwen3", ModeTransformers), loadTok(f, "mistral-sp", ModeTransformers), loadTok(f, "mistral-sp", ModeTokenizers)}
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), s)
	}
	f.Add([]byte{0, 3, 0, 200, 1, 7, 0, 0, 0, 255, 2, 2}, "")
	f.Fuzz(func(t *testing.T, raw []byte, text string) {
		for _, tok := range toks {
			// Arbitrary ids and the ids of real text (multi-token characters).
			for _, ids := range [][]int{idsFromBytes(tok, raw), tok.Encode(text, false)} {
				for _, skip := range []bool{false, true} {
					want := tok.Decode(ids, skip)
					if got := streamConcat(tok, ids, skip); got != want {
						t.Fatalf("skip=%v ids %v:\nstream %q\ndecode %q", skip, ids, got, want)
					}
				}
			}
		}
	})
}

// FuzzEncodeNoPanic: any input, valid UTF-8 or not, encodes without panic
// in both families, and ids stay in range.
func FuzzEncodeNoPanic(f *testing.F) {
	toks := []*Tokenizer{loadTok(f, "qwen3", ModeTransformers), loadTok(f, "mistral-sp", ModeTransformers), loadTok(f, "mistral-sp", ModeTokenizers)}
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Add("\xff\xfe<s>\xe2\x82")
	f.Fuzz(func(t *testing.T, s string) {
		for _, tok := range toks {
			for _, id := range tok.Encode(s, true) {
				if id < 0 || id >= tok.VocabSize() {
					t.Fatalf("id %d out of range", id)
				}
			}
		}
	})
}
