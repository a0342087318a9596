package tokenizer

import (
	"github.com/llmserve/llmserve/internal/shareddata"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dlclark/regexp2"
)

// mixedText deterministically builds about n bytes of prose, code, CJK and
// emoji, the mix a server sees.
func mixedText(n int) string {
	rng := rand.New(rand.NewPCG(1, 2))
	words := strings.Fields(`the of and to in is was that for it with as his on be at by had are
		but from or have an they which one you were her all she there would their we him been has
		when who will more no if out so said what up its about into than them can only other new
		Tokenization throughput matters because every request is encoded before scheduling`)
	code := []string{
		"func (s *Server) handle(w http.ResponseWriter, r *http.Request) {\n\tif err := r.ParseForm(); err != nil {\n\t\treturn\n\t}\n}\n",
		"for i in range(10):\n    print(f\"{i:03d}\", end=' ')\n",
		"const x = arr.map((v, i) => v * 2 + i).filter(Boolean);\n",
		"SELECT id, name FROM users WHERE created_at > '2024-01-01' ORDER BY id DESC;\n",
	}
	cjk := []string{"日本語のテキストと中文文本。", "机器学习模型的推理速度很重要，", "東京は日本の首都です。", "한국어 문장도 조금 있습니다. "}
	emoji := []string{"🚀", "🔥", "✅", "👩‍👩‍👧‍👦", "😀", "🎉 ", "👍🏽"}
	var sb strings.Builder
	for sb.Len() < n {
		switch k := rng.IntN(10); {
		case k < 6:
			for range 8 + rng.IntN(20) {
				sb.WriteString(words[rng.IntN(len(words))])
				sb.WriteByte(' ')
			}
			sb.WriteString(". ")
			if rng.IntN(4) == 0 {
				sb.WriteString("\n\n")
			}
		case k < 8:
			sb.WriteString(code[rng.IntN(len(code))])
		case k < 9:
			sb.WriteString(cjk[rng.IntN(len(cjk))])
		default:
			sb.WriteString(emoji[rng.IntN(len(emoji))])
			sb.WriteString(fmtInt(rng.IntN(100000)))
			sb.WriteByte(' ')
		}
	}
	return sb.String()
}

func fmtInt(v int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

func BenchmarkEncodeQwen(b *testing.B) {
	tok := loadTok(b, "qwen3", ModeTransformers)
	text := mixedText(1 << 20)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	withCPU(b, func() { tok.Encode(text, false) })
}

// BenchmarkEncodeQwenNoCache clears the word cache before every call: the
// cost of text whose words were never seen.
func BenchmarkEncodeQwenNoCache(b *testing.B) {
	tok := loadTok(b, "qwen3", ModeTransformers)
	text := mixedText(1 << 20)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	withCPU(b, func() {
		ws := tok.getWS()
		clear(ws.cache)
		ws.arena = ws.arena[:0]
		tok.pool.Put(ws)
		tok.Encode(text, false)
	})
}

func BenchmarkLoadQwen(b *testing.B) {
	dir := filepath.Join(shareddata.Dir(b), "tokenizers", "qwen3")
	withCPU(b, func() {
		if _, err := LoadDir(dir); err != nil {
			b.Fatal(err)
		}
	})
}

func BenchmarkDecodeQwen(b *testing.B) {
	tok := loadTok(b, "qwen3", ModeTransformers)
	text := mixedText(1 << 16)
	ids := tok.Encode(text, false)
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		tok.Decode(ids, false)
	}
}

func BenchmarkStreamQwen(b *testing.B) {
	tok := loadTok(b, "qwen3", ModeTransformers)
	text := mixedText(1 << 16)
	ids := tok.Encode(text, false)
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		s := tok.NewTextStream(nil, false)
		for _, id := range ids {
			s.Add(id)
		}
	}
}

// The split pattern by hand versus regexp2 (the only Go engine here with
// the lookahead it needs).
func BenchmarkSplitGPT4(b *testing.B) {
	text := mixedText(1 << 20)
	b.Run("hand", func(b *testing.B) {
		m := gpt4Matcher{maxDigits: 1}
		b.SetBytes(int64(len(text)))
		withCPU(b, func() {
			n := 0
			_ = m.find(text, func(int, int) { n++ })
		})
	})
	b.Run("regexp2", func(b *testing.B) {
		m, err := newRegexMatcher(patternGPT4Digits1)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(text)))
		withCPU(b, func() {
			n := 0
			if err := m.find(text, func(int, int) { n++ }); err != nil {
				b.Fatal(err)
			}
		})
	})
	_ = regexp2.None
}

// cpuTime is the process's user+system CPU time. The machine is shared, so
// benchmarks also report cpu-ns/op, which contention inflates far less than
// wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// withCPU runs the benchmark loop body and reports CPU time per op.
func withCPU(b *testing.B, body func()) {
	start := cpuTime()
	for b.Loop() {
		body()
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}
