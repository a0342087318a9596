package tokenizer

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// The split patterns tokenizers files use. The first two are the GPT-4
// (cl100k) style used by Qwen2/3 (single digits) and Llama-3 (up to 3 digits);
// the third is GPT-2's, used by ByteLevel with use_regex. Go's regexp lacks
// the (?!\S) lookahead, so these are matched by hand; anything else goes to
// regexp2 (a .NET-style backtracking engine).
const (
	patternGPT4Digits1 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	patternGPT4Digits3 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	patternGPT2        = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
)

// matcher finds the non-overlapping matches of a pattern, left to right.
type matcher interface {
	// find calls fn for each match [start, end) of s in order.
	find(s string, fn func(start, end int)) error
}

// Character classes of the patterns above.
const (
	clsL  = 1 << iota // \p{L}
	clsN              // \p{N}
	clsS              // \s
	clsNL             // [\r\n]
)

var asciiClass = func() (t [128]uint8) {
	for c := 0; c < 128; c++ {
		r := rune(c)
		switch {
		case unicode.IsLetter(r):
			t[c] = clsL
		case unicode.IsNumber(r):
			t[c] = clsN
		case unicode.IsSpace(r):
			t[c] = clsS
		}
	}
	t['\r'] |= clsNL
	t['\n'] |= clsNL
	return t
}()

// classAt returns the class bits and size of the character at s[i].
func classAt(s string, i int) (uint8, int) {
	c := s[i]
	if c < utf8.RuneSelf {
		return asciiClass[c], 1
	}
	r, size := utf8.DecodeRuneInString(s[i:])
	switch {
	case unicode.IsLetter(r):
		return clsL, size
	case unicode.IsNumber(r):
		return clsN, size
	case unicode.IsSpace(r):
		return clsS, size
	}
	return 0, size
}

// gpt4Matcher hand-matches patternGPT4Digits1/3.
type gpt4Matcher struct{ maxDigits int }

func (g gpt4Matcher) find(s string, fn func(start, end int)) error {
	for i := 0; i < len(s); {
		end := g.next(s, i)
		fn(i, end)
		i = end
	}
	return nil
}

// contraction returns the end of (?i:'s|'t|'re|'ve|'m|'ll|'d) at s[i] (a
// quote), or -1. caseFold also accepts upper case and U+017F (long s, which
// folds to s).
func contraction(s string, i int, caseFold bool) int {
	j := i + 1
	if j >= len(s) {
		return -1
	}
	lower := func(c byte) byte {
		if caseFold && c >= 'A' && c <= 'Z' {
			return c + 32
		}
		return c
	}
	switch lower(s[j]) {
	case 's', 't', 'm', 'd':
		return j + 1
	case 'r', 'v':
		if j+1 < len(s) && lower(s[j+1]) == 'e' {
			return j + 2
		}
	case 'l':
		if j+1 < len(s) && lower(s[j+1]) == 'l' {
			return j + 2
		}
	case 0xC5:
		if caseFold && j+1 < len(s) && s[j+1] == 0xBF { // ſ
			return j + 2
		}
	}
	return -1
}

func letters(s string, i int) int {
	for i < len(s) {
		c, size := classAt(s, i)
		if c&clsL == 0 {
			break
		}
		i += size
	}
	return i
}

// isOther is [^\s\p{L}\p{N}].
func isOther(c uint8) bool { return c&(clsL|clsN|clsS) == 0 }

func (g gpt4Matcher) next(s string, i int) int {
	if s[i] == '\'' {
		if e := contraction(s, i, true); e > 0 {
			return e
		}
	}
	c0, n0 := classAt(s, i)
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if c0&(clsL|clsN|clsNL) == 0 && i+n0 < len(s) {
		if c1, _ := classAt(s, i+n0); c1&clsL != 0 {
			return letters(s, i+n0)
		}
	}
	if c0&clsL != 0 {
		return letters(s, i)
	}
	// \p{N}{1,maxDigits}
	if c0&clsN != 0 {
		j := i + n0
		for k := 1; k < g.maxDigits && j < len(s); k++ {
			c, size := classAt(s, j)
			if c&clsN == 0 {
				break
			}
			j += size
		}
		return j
	}
	// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
	j := i
	if s[i] == ' ' && i+1 < len(s) {
		if c1, _ := classAt(s, i+1); isOther(c1) {
			j = i + 1
		}
	}
	if c, _ := classAt(s, j); isOther(c) {
		for j < len(s) {
			c, size := classAt(s, j)
			if !isOther(c) {
				break
			}
			j += size
		}
		for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
			j++
		}
		return j
	}
	// Whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+ (c0 is \s here).
	j = i
	lastNL, lastStart, count := -1, i, 0
	for j < len(s) {
		c, size := classAt(s, j)
		if c&clsS == 0 {
			break
		}
		if c&clsNL != 0 {
			lastNL = j + 1
		}
		lastStart = j
		j += size
		count++
	}
	if lastNL > 0 {
		return lastNL
	}
	if j < len(s) && count >= 2 {
		return lastStart
	}
	return j
}

// gpt2Matcher hand-matches patternGPT2.
type gpt2Matcher struct{}

func (gpt2Matcher) find(s string, fn func(start, end int)) error {
	for i := 0; i < len(s); {
		end := gpt2Next(s, i)
		fn(i, end)
		i = end
	}
	return nil
}

func gpt2Next(s string, i int) int {
	if s[i] == '\'' {
		if e := contraction(s, i, false); e > 0 {
			return e
		}
	}
	// ` ?\p{L}+` | ` ?\p{N}+` | ` ?[^\s\p{L}\p{N}]+`: the optional space is
	// taken whenever the class that follows it is one of the three.
	start := i
	c, _ := classAt(s, i)
	if s[i] == ' ' && i+1 < len(s) {
		if c1, _ := classAt(s, i+1); c1&clsS == 0 {
			start, c = i+1, c1
		}
	}
	if c&clsS == 0 {
		want := c & (clsL | clsN)
		k := start
		for k < len(s) {
			ck, size := classAt(s, k)
			if ck&(clsL|clsN|clsS) != want {
				break
			}
			k += size
		}
		return k
	}
	// \s+(?!\S) | \s+
	j := i
	lastStart, count := i, 0
	for j < len(s) {
		c, size := classAt(s, j)
		if c&clsS == 0 {
			break
		}
		lastStart = j
		j += size
		count++
	}
	if j < len(s) && count >= 2 {
		return lastStart
	}
	return j
}

// regexMatcher runs any pattern through regexp2.
type regexMatcher struct{ re *regexp2.Regexp }

func newRegexMatcher(pattern string) (*regexMatcher, error) {
	re, err := regexp2.Compile(pattern, regexp2.None)
	if err != nil {
		return nil, err
	}
	return &regexMatcher{re: re}, nil
}

func (m *regexMatcher) find(s string, fn func(start, end int)) error {
	if s == "" {
		return nil
	}
	runes := []rune(s)
	// offs[k] is the byte offset of rune k.
	offs := make([]int, len(runes)+1)
	b := 0
	for k, r := range runes {
		offs[k] = b
		b += utf8.RuneLen(r)
	}
	offs[len(runes)] = b
	match, err := m.re.FindRunesMatch(runes)
	for err == nil && match != nil {
		fn(offs[match.Index], offs[match.Index+match.Length])
		match, err = m.re.FindNextMatch(match)
	}
	return err
}

// literalMatcher finds a plain string.
type literalMatcher struct{ lit string }

func (m literalMatcher) find(s string, fn func(start, end int)) error {
	if m.lit == "" {
		return nil
	}
	for i := 0; ; {
		k := strings.Index(s[i:], m.lit)
		if k < 0 {
			return nil
		}
		fn(i+k, i+k+len(m.lit))
		i += k + len(m.lit)
	}
}

func newMatcher(pattern string, isRegex bool) (matcher, error) {
	if !isRegex {
		return literalMatcher{pattern}, nil
	}
	switch pattern {
	case patternGPT4Digits1:
		return gpt4Matcher{maxDigits: 1}, nil
	case patternGPT4Digits3:
		return gpt4Matcher{maxDigits: 3}, nil
	case patternGPT2:
		return gpt2Matcher{}, nil
	}
	m, err := newRegexMatcher(pattern)
	if err != nil {
		return nil, fmt.Errorf("%w: regex %q: %v", ErrUnsupported, pattern, err)
	}
	return m, nil
}
