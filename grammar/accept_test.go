package grammar

import (
	"errors"
	"testing"
)

// fullMatch reports whether the grammar accepts s as a complete output.
func fullMatch(t *testing.T, g *Grammar, s string) bool {
	t.Helper()
	m := g.NewMatcher()
	if err := m.AcceptString(s); err != nil {
		if !errors.Is(err, ErrRejected) {
			t.Fatalf("AcceptString: %v", err)
		}
		return false
	}
	return m.CanEnd()
}

type acceptCase struct {
	name   string
	spec   Spec
	accept []string
	reject []string
}

func runAcceptCases(t *testing.T, cases []acceptCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g, err := Compile(c.spec, nil, Limits{})
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			for _, s := range c.accept {
				if !fullMatch(t, g, s) {
					t.Errorf("rejected %q", s)
				}
			}
			for _, s := range c.reject {
				if fullMatch(t, g, s) {
					t.Errorf("accepted %q", s)
				}
			}
		})
	}
}

func TestRegexAccept(t *testing.T) {
	runAcceptCases(t, []acceptCase{
		{"literal", Spec{Regex: "abc"}, []string{"abc"}, []string{"", "ab", "abcd", "xabc"}},
		{"anchors", Spec{Regex: "^a+$"}, []string{"a", "aaa"}, []string{"", "b", "a$"}},
		{"classes", Spec{Regex: `\d{3}-\w+\s?`}, []string{"123-ab_9", "000-x "}, []string{"12-ab", "123-", "123-a  ", "１２３-a"}},
		{"negated class", Spec{Regex: `[^a-c]+`}, []string{"xyz", "日本", "d"}, []string{"", "a", "xa"}},
		{"counted", Spec{Regex: `(ab){2,3}`}, []string{"abab", "ababab"}, []string{"ab", "abababab", "aba"}},
		{"open count", Spec{Regex: `x{2,}`}, []string{"xx", "xxxxxxx"}, []string{"x"}},
		{"alternation", Spec{Regex: `cat|dog|(bird)s?`}, []string{"cat", "dog", "bird", "birds"}, []string{"cats", "do", ""}},
		{"optional star plus", Spec{Regex: `a?b*c+`}, []string{"c", "abbc", "bcc"}, []string{"ab", "aac"}},
		{"escapes", Spec{Regex: `\.\*\(\)\[\]\\`}, []string{`.*()[]\`}, []string{`a*()[]\`}},
		{"unicode", Spec{Regex: `\p{Greek}+ é.`}, []string{"αβγ éx", "Ω é日"}, []string{"abc éx", "α é\n"}},
		{"case fold", Spec{Regex: `(?i)hello`}, []string{"hello", "HeLLo"}, []string{"helo"}},
		{"dot", Spec{Regex: `a.c`}, []string{"abc", "a€c"}, []string{"a\nc", "ac"}},
		{"empty", Spec{Regex: `(a|)`}, []string{"", "a"}, []string{"aa"}},
	})
}

func TestFrameAccept(t *testing.T) {
	runAcceptCases(t, []acceptCase{
		{"one or more", Spec{Choice: []string{"a", "bb"}, Frame: &Frame{Begin: "<", End: ">", Sep: ",", Min: 1, Max: -1}},
			[]string{"<a>", "<a>,<bb>,<a>"}, []string{"", "<a>,", "a", "<a><a>", "<c>"}},
		{"at most two", Spec{Regex: "[0-9]", Frame: &Frame{Begin: "(", End: ")", Min: 0, Max: 2}},
			[]string{"", "(1)", "(1)(2)"}, []string{"(1)(2)(3)", "()"}},
		{"json framed", Spec{JSONSchema: `{"type":"integer"}`, Frame: &Frame{Begin: "<n>", End: "</n>", Min: 1, Max: 1}},
			[]string{"<n>5</n>", "<n> -12</n>"}, []string{"<n>5</n><n>5</n>", "<n>x</n>"}},
	})
}

func TestChoiceAccept(t *testing.T) {
	runAcceptCases(t, []acceptCase{
		{"choice", Spec{Choice: []string{"yes", "no", "yesterday"}}, []string{"yes", "no", "yesterday"}, []string{"", "ye", "yess", "No"}},
	})
}

func TestGBNFAccept(t *testing.T) {
	runAcceptCases(t, []acceptCase{
		{"simple", Spec{GBNF: `root ::= "a" b
b ::= [0-9]+ | "x"`}, []string{"a1", "a123", "ax"}, []string{"a", "ax1", "b1"}},
		{"recursive parens", Spec{GBNF: `root ::= "(" root ")" | ""`}, []string{"", "()", "((()))"}, []string{"(", "())", ")("}},
		{"arith", Spec{GBNF: `
# arithmetic, right-recursive
root ::= expr
expr ::= term (("+" | "-") term)*
term ::= factor (("*" | "/") factor)*
factor ::= num | "(" expr ")"
num ::= [0-9]+`}, []string{"1", "1+2*3", "(1+2)*3", "((4))"}, []string{"", "1+", "(1", "1++2"}},
		{"escapes and classes", Spec{GBNF: `root ::= "\x41\u00e9\n" [^"\\\n]* "\""`}, []string{"Aé\nabc\"", "Aé\n\""}, []string{"Aé\na\nb\""}},
		{"repetition", Spec{GBNF: `root ::= [a-z]{2,3} "-" [0-9]{2} "-" "x"{1,}`}, []string{"ab-12-x", "abc-00-xxx"}, []string{"a-12-x", "abcd-12-x", "ab-1-x", "ab-12-"}},
		{"any char", Spec{GBNF: `root ::= . .`}, []string{"ab", "日本", "\n\n"}, []string{"a", "abc"}},
		{"multi-line alternates", Spec{GBNF: `root ::= "a"
  | "b"
other ::= "c"
`}, []string{"a", "b"}, []string{"c"}},
		{"nullable middle", Spec{GBNF: `root ::= x* "z"
x ::= "a"?`}, []string{"z", "aaz"}, []string{"", "za"}},
		{"json", Spec{GBNF: jsonGBNF}, []string{`{"a": [1, 2.5e3, true, null, "x\"y"]}`, `[]`, `"s"`}, []string{`{"a" 1}`, `[1,]`}},
	})
}

// jsonGBNF is llama.cpp's grammars/json.gbnf (any JSON value).
const jsonGBNF = `root   ::= object | array | string
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
`

func TestCompileErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		spec Spec
		want error
	}{
		{"none", Spec{}, ErrSyntax},
		{"two", Spec{Regex: "a", Choice: []string{"b"}}, ErrSyntax},
		{"bad regex", Spec{Regex: "a("}, ErrSyntax},
		{"word boundary", Spec{Regex: `\bx`}, ErrUnsupported},
		{"lookahead", Spec{Regex: `a(?=b)`}, ErrUnsupported},
		{"regex repeat size", Spec{Regex: `a{2000}`}, ErrLimit},
		{"empty choice", Spec{Choice: []string{}}, ErrSyntax},
		{"gbnf undefined", Spec{GBNF: `root ::= x`}, ErrSyntax},
		{"gbnf no root", Spec{GBNF: `a ::= "x"`}, ErrSyntax},
		{"gbnf twice", Spec{GBNF: "root ::= \"a\"\nroot ::= \"b\""}, ErrSyntax},
		{"gbnf left recursion", Spec{GBNF: `root ::= root "a" | "b"`}, ErrLeftRecursion},
		{"gbnf indirect left recursion", Spec{GBNF: "root ::= x \"a\" | \"b\"\nx ::= \"\" | root"}, ErrLeftRecursion},
		{"gbnf empty language", Spec{GBNF: `root ::= "a" root`}, ErrEmpty},
		{"gbnf token ref", Spec{GBNF: `root ::= <think>`}, ErrUnsupported},
		{"regex too many states", Spec{Regex: `(a|b)*a(a|b){18}`}, ErrLimit},
		{"repeat limit", Spec{GBNF: `root ::= "a"{5000}`}, ErrLimit},
		{"schema syntax", Spec{JSONSchema: `{"type": }`}, ErrSyntax},
		{"schema not", Spec{JSONSchema: `{"not": {"type": "string"}}`}, ErrUnsupported},
		{"schema enum beside minLength", Spec{JSONSchema: `{"enum": ["a", "bbb"], "minLength": 2}`}, ErrUnsupported},
		{"schema const beside maximum", Spec{JSONSchema: `{"type": "object", "properties": {"n": {"const": 7, "maximum": 5}}}`}, ErrUnsupported},
		{"schema remote ref", Spec{JSONSchema: `{"$ref": "http://x/y.json"}`}, ErrUnsupported},
		{"schema bad ref", Spec{JSONSchema: `{"$ref": "#/$defs/nope"}`}, ErrSyntax},
		{"schema false", Spec{JSONSchema: `false`}, ErrEmpty},
		{"schema empty range", Spec{JSONSchema: `{"type": "integer", "minimum": 5, "maximum": 4}`}, ErrEmpty},
		{"schema size", Spec{JSONSchema: `{"type": "string", "description": "` + string(make([]byte, 2<<20)) + `"}`}, ErrLimit},
		{"schema depth", Spec{JSONSchema: deepSchema(100)}, ErrLimit},
		{"schema huge bound", Spec{JSONSchema: `{"type":"integer","maximum":1e999999999}`}, ErrLimit},
		{"schema max properties", Spec{JSONSchema: `{"type":"object","maxProperties":2}`}, ErrUnsupported},
		{"schema multipleOf huge", Spec{JSONSchema: `{"type":"number","multipleOf":123456789}`}, ErrUnsupported},
	} {
		t.Run(c.name, func(t *testing.T) {
			lim := Limits{MaxStates: 20000}
			_, err := Compile(c.spec, nil, lim)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func deepSchema(n int) string {
	s := `{"type": "string"}`
	for i := 0; i < n; i++ {
		s = `{"type": "array", "items": ` + s + `}`
	}
	return s
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

// TestAlternativesAccept: a union of specs, each with its own prefix
// frame, repeated by an outer frame, as Mistral's newer tool-call syntax
// writes calls: [TOOL_CALLS]name[ARGS]{arguments}.
func TestAlternativesAccept(t *testing.T) {
	spec := Spec{
		Alternatives: []Spec{
			{JSONSchema: `{"type":"object","properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false}`,
				Frame: &Frame{Begin: "[TOOL_CALLS]weather[ARGS]", Min: 1, Max: 1}},
			{JSONSchema: `{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"],"additionalProperties":false}`,
				Frame: &Frame{Begin: "[TOOL_CALLS]count[ARGS]", Min: 1, Max: 1}},
		},
		Frame: &Frame{Min: 1, Max: 2},
	}
	runAcceptCases(t, []acceptCase{{"two functions", spec,
		[]string{
			`[TOOL_CALLS]weather[ARGS]{"city":"Oslo"}`,
			`[TOOL_CALLS]count[ARGS]{"n":3}`,
			`[TOOL_CALLS]count[ARGS]{"n":3}[TOOL_CALLS]weather[ARGS]{"city":"x"}`,
		},
		[]string{
			`[TOOL_CALLS]weather[ARGS]{"n":3}`, // the other function's arguments
			`[TOOL_CALLS]other[ARGS]{"n":3}`,
			`{"city":"Oslo"}`,
			`[TOOL_CALLS]count[ARGS]{"n":1}[TOOL_CALLS]count[ARGS]{"n":2}[TOOL_CALLS]count[ARGS]{"n":3}`, // over Max
		}}})
	if _, err := Compile(Spec{Alternatives: []Spec{}}, nil, Limits{}); !errors.Is(err, ErrSyntax) {
		t.Errorf("empty alternatives: %v, want a syntax error", err)
	}
	if _, err := Compile(Spec{Alternatives: []Spec{{Regex: "("}}}, nil, Limits{}); err == nil {
		t.Error("a bad alternative compiles")
	}
}
