package grammar

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
)

// larkJSON is the JSON grammar of Lark's tutorial.
const larkJSON = `
?start: value

?value: object
      | array
      | string
      | SIGNED_NUMBER      -> number
      | "true"             -> true
      | "false"            -> false
      | "null"             -> null

array  : "[" [value ("," value)*] "]"
object : "{" [pair ("," pair)*] "}"
pair   : string ":" value

string : ESCAPED_STRING

%import common.ESCAPED_STRING
%import common.SIGNED_NUMBER
%import common.WS
%ignore WS
`

func TestLarkAccept(t *testing.T) {
	runAcceptCases(t, []acceptCase{
		{"json", Spec{Lark: larkJSON}, []string{`{"a": [1, -2.5e3, true, null, "x\"y"]}`, ` [ ] `, `"s"`, "{\n\"k\" :\t1}"},
			[]string{`{"a" 1}`, `[1,]`, `tru`, `{'a': 1}`}},
		{"arith", Spec{Lark: `
start: sum
sum: product (("+" | "-") product)*
product: atom (("*" | "/") atom)*
atom: NUMBER | "(" sum ")" | NAME
NAME: /[a-z_][a-z_0-9]*/
%import common.NUMBER
%ignore " "
`}, []string{"1+2", "a * (b - 3.5)", " x ", "((1))"}, []string{"1+", "A", "1 2"}},
		{"terminals and ranges", Spec{Lark: `
start: GREETING "," WHO "!"?
GREETING: "hello"i | "hi"
WHO: LETTER+ ("-" LETTER+)~0..2
LETTER: "a".."z"
`}, []string{"HeLLo,bob", "hi,jean-luc!", "hello,a-b-c"}, []string{"HI,bob", "hello,a-b-c-d", "hello,Bob"}},
		{"optional and repeat", Spec{Lark: `start: "a" ["b"] "c"~2 ("d" | "e")* // comment
`}, []string{"acc", "abccdede"}, []string{"ac", "abbcc"}},
		{"regex flags", Spec{Lark: `start: /ab+c/i /x.y/s`}, []string{"ABbcx\ny"}, []string{"ac"}},
		{"common import list", Spec{Lark: "start: INT \"-\" WORD\n%import common (INT, WORD)"}, []string{"12-ab"}, []string{"-ab"}},
		{"multiline parens", Spec{Lark: "start: (\"a\"\n  | \"b\")\n  | \"c\""}, []string{"a", "b", "c"}, []string{"ab"}},
	})
}

func TestLarkErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		src  string
		want error
	}{
		{"no start", `x: "a"`, ErrSyntax},
		{"undefined rule", `start: x`, ErrSyntax},
		{"undefined terminal", `start: X`, ErrSyntax},
		{"recursive terminal", "start: A\nA: \"a\" A?", ErrSyntax},
		{"terminal uses rule", "start: A\nA: b\nb: \"x\"", ErrSyntax},
		{"unknown import", "start: FOO\n%import common.FOO", ErrUnsupported},
		{"other module", "start: X\n%import mygrammar.X", ErrUnsupported},
		{"declare", "start: \"a\"\n%declare X", ErrUnsupported},
		{"left recursion", "start: start \"a\" | \"b\"", ErrLeftRecursion},
		{"bad literal", `start: "a`, ErrSyntax},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Compile(Spec{Lark: c.src}, nil, Limits{})
			if !errorsIs(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestRandomWalkLark(t *testing.T) {
	v, _ := testVocab(t, "qwen3")
	g, err := Compile(Spec{Lark: larkJSON}, v, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	mask := make([]uint64, v.MaskWords())
	rng := rand.New(rand.NewPCG(4, 4))
	done := 0
	for r := 0; r < 30; r++ {
		res := randomWalk(t, g, rng, 100, mask)
		if !res.complete {
			continue
		}
		done++
		// Lark's ESCAPED_STRING takes any backslash escape, which JSON
		// does not: only outputs without one must be JSON.
		var x any
		if err := json.Unmarshal(res.out, &x); err != nil && !bytes.Contains(res.out, []byte(`\`)) {
			t.Fatalf("%q: %v", res.out, err)
		}
	}
	if done == 0 {
		t.Fatal("no walk completed")
	}
}
