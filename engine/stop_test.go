package engine

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// holdBack is the naive reference of stopMatcher.holdBack: how many
// trailing bytes of text could be the start of one of the stop strings.
func holdBack(text string, stops []string) int {
	h := 0
	for _, st := range stops {
		for k := min(len(st)-1, len(text)); k > h; k-- {
			if strings.HasSuffix(text, st[:k]) {
				h = k
				break
			}
		}
	}
	return h
}

// findStop is the naive reference of stopMatcher.scan: the earliest
// position in text of any stop string that ends after from, and which one
// (ties: the first in the list).
func findStop(text string, from int, stops []string) (int, string) {
	pos, which := -1, ""
	for _, st := range stops {
		start := max(0, from-len(st)+1)
		if i := strings.Index(text[start:], st); i >= 0 && (pos < 0 || start+i < pos) {
			pos, which = start+i, st
		}
	}
	return pos, which
}

// feed runs text through m in the given chunks as emit does, returning per
// chunk the match (pos, stop string) and the hold-back of the unsent text.
type stopStep struct {
	pos   int
	which string
	hold  int
}

func feed(m *stopMatcher, chunks []string) []stopStep {
	var out []stopStep
	var state int32
	text, emitted := "", 0
	for _, c := range chunks {
		from := len(text)
		text += c
		var pos, which int
		state, pos, which = m.scan(state, text, from)
		st := stopStep{pos: pos}
		if pos >= 0 {
			st.which = m.stops[which] // the sequence finishes: nothing held
		} else {
			st.hold = m.holdBack(state, len(text)-emitted)
		}
		emitted = len(text) - st.hold
		out = append(out, st)
	}
	return out
}

func TestStopMatcherTable(t *testing.T) {
	cases := []struct {
		stops  []string
		chunks []string
		want   []stopStep // per chunk
	}{
		{[]string{"world", "xyz"}, []string{"hello wor", "ld!"}, []stopStep{{-1, "", 3}, {6, "world", 0}}},
		{[]string{"zz"}, []string{"abc"}, []stopStep{{-1, "", 0}}},
		{[]string{"abab"}, []string{"aab"}, []stopStep{{-1, "", 2}}},
		// Earliest start wins over earliest end, ties by list order.
		{[]string{"cx", "abc"}, []string{"xxabcxx"}, []stopStep{{2, "abc", 0}}},
		{[]string{"cd", "abcdef"}, []string{"abcdef"}, []stopStep{{0, "abcdef", 0}}},
		{[]string{"ab", "abc"}, []string{"abc"}, []stopStep{{0, "ab", 0}}},
		{[]string{"abc", "ab"}, []string{"abc"}, []stopStep{{0, "abc", 0}}},
		{[]string{"b", "b"}, []string{"ab"}, []stopStep{{1, "b", 0}}},
		// Old matches are not found again; a match across chunks is.
		{[]string{"abc"}, []string{"abc", "xx"}, []stopStep{{0, "abc", 0}, {-1, "", 0}}},
		{[]string{"abc"}, []string{"a", "b", "c"}, []stopStep{{-1, "", 1}, {-1, "", 2}, {0, "abc", 0}}},
		// Hold-back is limited to what was not sent, and follows the
		// failure chain to a shorter prefix when the longer one was sent.
		{[]string{"aaab"}, []string{"a", "a", "a", "a"}, []stopStep{{-1, "", 1}, {-1, "", 2}, {-1, "", 3}, {-1, "", 3}}},
		// A full stop string that is also a prefix of another.
		{[]string{"ab", "abcd"}, []string{"xa", "b"}, []stopStep{{-1, "", 1}, {1, "ab", 0}}},
		// UTF-8: bytes, not runes.
		{[]string{"é!"}, []string{"caf\xc3", "\xa9!"}, []stopStep{{-1, "", 1}, {3, "é!", 0}}},
	}
	for i, c := range cases {
		for _, budget := range []int{denseBudget, 0} {
			m := buildStopMatcher(c.stops, budget)
			if (m.delta != nil) != (budget > 0) {
				t.Fatalf("case %d: budget %d, dense %v", i, budget, m.delta != nil)
			}
			if got := feed(m, c.chunks); fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("case %d %q %q (budget %d): got %v, want %v", i, c.stops, c.chunks, budget, got, c.want)
			}
		}
	}
}

// TestHoldBack keeps the naive references honest.
func TestHoldBack(t *testing.T) {
	if h := holdBack("hello wor", []string{"world", "xyz"}); h != 3 {
		t.Errorf("holdBack %d", h)
	}
	if h := holdBack("aab", []string{"abab"}); h != 2 {
		t.Errorf("holdBack %d", h)
	}
	if pos, w := findStop("xxabcxx", 4, []string{"abc", "cx"}); pos != 2 || w != "abc" {
		t.Errorf("findStop %d %q", pos, w)
	}
	if pos, _ := findStop("abcxx", 4, []string{"abc"}); pos != -1 {
		t.Errorf("findStop found an old match at %d", pos)
	}
}

// TestStopMatcherRandom compares the automaton (with and without its
// complete transition table) with the naive search on random stop lists and
// texts over a small alphabet (so that prefixes, overlaps and repeats are
// common), fed in random chunks.
func TestStopMatcherRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 4))
	word := func(alpha string, n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = alpha[rng.IntN(len(alpha))]
		}
		return string(b)
	}
	for iter := range 3000 {
		alpha := "abc"[:1+rng.IntN(3)]
		if iter%10 == 0 {
			alpha = "ab\xc3\xa9"
		}
		stops := make([]string, 1+rng.IntN(8))
		for i := range stops {
			stops[i] = word(alpha, 1+rng.IntN(6))
		}
		// Both ways of stepping: the complete table and failure links.
		m := buildStopMatcher(stops, []int{denseBudget, 0}[iter%2])
		var state int32
		text, emitted := "", 0
		for range 1 + rng.IntN(12) {
			from := len(text)
			text += word(alpha, rng.IntN(5))
			var pos, which int
			state, pos, which = m.scan(state, text, from)
			wantPos, wantWhich := findStop(text, from, stops)
			got := ""
			if pos >= 0 {
				got = stops[which]
			}
			if pos != wantPos || got != wantWhich {
				t.Fatalf("stops %q text %q from %d: got (%d, %q), want (%d, %q)", stops, text, from, pos, got, wantPos, wantWhich)
			}
			if pos >= 0 {
				break // the sequence stops here
			}
			// Any amount of unsent text, not only what the engine leaves.
			if rng.IntN(3) == 0 {
				emitted = rng.IntN(len(text) + 1)
			}
			h := m.holdBack(state, len(text)-emitted)
			if want := holdBack(text[emitted:], stops); h != want {
				t.Fatalf("stops %q text %q emitted %d: hold %d, want %d", stops, text, emitted, h, want)
			}
			emitted = len(text) - h
		}
	}
}

// benchStops makes n distinct stop strings of 4 to 24 lowercase letters and
// a final '#' (long: of 255 random bytes and a final '#', the longest the API
// allows), and two texts that contain none of them: "prose", random words
// as a model would write them, and "adversarial", pieces of the stop
// strings, so that the automaton keeps going deep into its trie.
func benchStops(n int, long bool) (stops []string, prose, adversarial string) {
	rng := rand.New(rand.NewPCG(uint64(n), 1))
	seen := map[string]bool{}
	for len(stops) < n {
		b := make([]byte, 4+rng.IntN(21))
		for i := range b {
			b[i] = byte('a' + rng.IntN(26))
		}
		if long {
			b = make([]byte, 255)
			for i := range b {
				b[i] = byte(rng.IntN(256))
				for b[i] == '#' {
					b[i] = byte(rng.IntN(256))
				}
			}
		}
		s := string(b) + "#"
		if !seen[s] {
			seen[s] = true
			stops = append(stops, s)
		}
	}
	var p, a strings.Builder
	for p.Len() < 1<<16 {
		for range 1 + rng.IntN(9) {
			p.WriteByte(byte('a' + rng.IntN(26)))
		}
		p.WriteByte(' ')
	}
	for a.Len() < 1<<16 {
		s := stops[rng.IntN(len(stops))]
		a.WriteString(s[:rng.IntN(len(s))])
	}
	return stops, p.String(), a.String()
}

// BenchmarkStopMatch is the per-token cost of stop checking (the scan of a
// 4-byte token and the hold-back query) against the number of stop strings:
// the automaton does O(1) work per byte whatever their number, the naive
// search it replaced O(number x length). KiB is the automaton's size: past
// the caches, its steps cost memory latency.
//
//	go test ./engine -run '^$' -bench StopMatch -benchtime 200000x
func BenchmarkStopMatch(b *testing.B) {
	const tok = 4
	for _, set := range []struct {
		n    int
		long bool
	}{{1, false}, {4, false}, {64, false}, {64, true}, {1024, false}, {16384, false}, {500000, false}} {
		n := set.n
		stops, prose, adversarial := benchStops(n, set.long)
		name := fmt.Sprintf("stops=%d", n)
		if set.long {
			name += "x256B"
		}
		for _, tx := range []struct{ name, text string }{{"prose", prose}, {"adversarial", adversarial}} {
			text := tx.text
			b.Run(fmt.Sprintf("automaton/%s/%s", tx.name, name), func(b *testing.B) {
				m := newStopMatcher(stops)
				var state int32
				from, emitted := 0, 0
				b.ResetTimer()
				for range b.N {
					if from+tok > len(text) {
						state, from, emitted = 0, 0, 0
					}
					var pos int
					state, pos, _ = m.scan(state, text[:from+tok], from)
					if pos >= 0 {
						b.Fatal("unexpected match")
					}
					from += tok
					emitted = from - m.holdBack(state, from-emitted)
				}
				b.ReportMetric(float64(m.size())/1024, "KiB")
			})
			if n > 1024 {
				continue // the naive search takes milliseconds per token there
			}
			b.Run(fmt.Sprintf("naive/%s/%s", tx.name, name), func(b *testing.B) {
				from, emitted := 0, 0
				for range b.N {
					if from+tok > len(text) {
						from, emitted = 0, 0
					}
					if pos, _ := findStop(text[:from+tok], from, stops); pos >= 0 {
						b.Fatal("unexpected match")
					}
					from += tok
					emitted = from - holdBack(text[emitted:from], stops)
				}
			})
		}
	}
}
