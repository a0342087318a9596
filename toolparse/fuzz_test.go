package toolparse

import (
	"reflect"
	"testing"
)

// FuzzStreamSplits: for every parser, any text cut at two fuzzed points
// streams into exactly what Parse returns.
func FuzzStreamSplits(f *testing.F) {
	for _, s := range []string{
		"hi <tool_call>{\"name\": \"f\", \"arguments\": {\"a\": [1]}}</tool_call>\n",
		`<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": 1}`,
		`x [TOOL_CALLS][{"name": "f", "arguments": {}}] [TOOL_CALLS]g[ARGS]{"q": "}"}`,
	} {
		f.Add(s, uint16(3), uint16(9))
	}
	f.Fuzz(func(t *testing.T, text string, a, b uint16) {
		i, j := int(a)%(len(text)+1), int(b)%(len(text)+1)
		if i > j {
			i, j = j, i
		}
		for _, name := range Names() {
			p, _ := New(name, Options{NewID: counterIDs()})
			wc, wcalls := p.Parse(text)
			p, _ = New(name, Options{NewID: counterIDs()})
			s := p.NewStream()
			ds := []Delta{s.Add(text[:i]), s.Add(text[i:j]), s.Add(text[j:]), s.Finish()}
			c, calls := Collect(ds)
			if c != wc || !reflect.DeepEqual(calls, wcalls) {
				t.Fatalf("%s %q at %d,%d: stream %q %+v, parse %q %+v", name, text, i, j, c, calls, wc, wcalls)
			}
		}
	})
}
