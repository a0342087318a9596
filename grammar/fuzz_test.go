package grammar

import (
	"errors"
	"regexp"
	"testing"
	"unicode/utf8"
)

var fuzzLimits = Limits{MaxStates: 3000, MaxNFAStates: 20000, MaxRepeat: 50, MaxRules: 200}

func checkCompileError(t *testing.T, err error) {
	t.Helper()
	for _, e := range []error{ErrSyntax, ErrUnsupported, ErrLimit, ErrEmpty, ErrLeftRecursion} {
		if errors.Is(err, e) {
			return
		}
	}
	t.Fatalf("untyped compile error: %v", err)
}

// FuzzRegex checks the regex automaton against Go's regexp on full
// matches of valid UTF-8 text.
func FuzzRegex(f *testing.F) {
	for _, s := range [][2]string{
		{`a+b?`, "aab"}, {`\d{2,3}-\w`, "12-x"}, {`(?i)abc|d.f`, "ABC"}, {`[^a-c]*`, "xyz"},
		{`(x|xy)(z|yz)`, "xyz"}, {`\p{Greek}+`, "αβ"}, {`a{0}b`, "b"}, {`(a*)*`, ""},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, re, input string) {
		if !utf8.ValidString(input) || len(re) > 64 {
			return
		}
		want, err := regexp.Compile(`^(?:` + re + `)$`)
		if err != nil {
			return
		}
		g, err := Compile(Spec{Regex: re}, nil, fuzzLimits)
		if err != nil {
			checkCompileError(t, err)
			return
		}
		m := g.NewMatcher()
		got := m.AcceptString(input) == nil && m.CanEnd()
		if got != want.MatchString(input) {
			t.Fatalf("regex %q on %q: grammar %v, regexp %v", re, input, got, !got)
		}
	})
}

// FuzzGBNF and FuzzSchema: any text compiles or fails with a typed error,
// and a compiled grammar takes any input without panicking.
func FuzzGBNF(f *testing.F) {
	f.Add(jsonGBNF, `{"a": [1]}`)
	f.Add(`root ::= "(" root ")" | [a-z]{1,3}`, "((ab))")
	f.Fuzz(func(t *testing.T, src, input string) {
		g, err := Compile(Spec{GBNF: src}, nil, fuzzLimits)
		if err != nil {
			checkCompileError(t, err)
			return
		}
		m := g.NewMatcher()
		_ = m.AcceptString(input)
		_ = m.CanEnd()
	})
}

func FuzzSchema(f *testing.F) {
	for _, s := range randomSchemas {
		f.Add(s, `{"a": 1}`)
	}
	f.Fuzz(func(t *testing.T, src, input string) {
		if len(src) > 2048 {
			return
		}
		g, err := Compile(Spec{JSONSchema: src}, nil, fuzzLimits)
		if err != nil {
			checkCompileError(t, err)
			return
		}
		m := g.NewMatcher()
		_ = m.AcceptString(input)
	})
}

func FuzzLark(f *testing.F) {
	f.Add(larkJSON, `{"a": [1]}`)
	f.Add("start: A+ B?\nA: \"a\"..\"c\"\nB: /x+/i\n%ignore \" \"", "ab X")
	f.Fuzz(func(t *testing.T, src, input string) {
		g, err := Compile(Spec{Lark: src}, nil, fuzzLimits)
		if err != nil {
			checkCompileError(t, err)
			return
		}
		m := g.NewMatcher()
		_ = m.AcceptString(input)
	})
}
