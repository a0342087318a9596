package tokenizer

import (
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

type span struct{ start, end int }

func spans(t testing.TB, m matcher, s string) []span {
	var out []span
	if err := m.find(s, func(a, b int) { out = append(out, span{a, b}) }); err != nil {
		t.Fatal(err)
	}
	return out
}

// FuzzSplitMatchesRegexp2 checks the hand-written splitters against the
// same patterns run by regexp2.
func FuzzSplitMatchesRegexp2(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Add(mixedText(4096))
	f.Add("a  \n\n  b\t\t'RE 123456 ?!\r\n  \u00a0x")
	type pair struct {
		hand matcher
		re   *regexMatcher
	}
	var pairs []pair
	for _, c := range []struct {
		pat  string
		hand matcher
	}{{patternGPT4Digits1, gpt4Matcher{1}}, {patternGPT4Digits3, gpt4Matcher{3}}, {patternGPT2, gpt2Matcher{}}} {
		re, err := newRegexMatcher(c.pat)
		if err != nil {
			f.Fatal(err)
		}
		pairs = append(pairs, pair{c.hand, re})
	}
	f.Fuzz(func(t *testing.T, s string) {
		// regexp2's (?i) does not fold U+017F to s as Oniguruma does.
		if !utf8.ValidString(s) || strings.ContainsRune(s, 'ſ') {
			return
		}
		for i, p := range pairs {
			got, want := spans(t, p.hand, s), spans(t, p.re, s)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("pattern %d on %q:\n hand %v\nregex %v", i, s, got, want)
			}
		}
	})
}
