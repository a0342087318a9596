package server

import (
	"math"
	"reflect"
	"testing"

	"github.com/llmserve/llmserve/toolparse"
)

// recorder is a processor that forbids token 0 and records what it accepts.
type recorder struct{ accepted []int }

func (r *recorder) Process(l []float32) { l[0] = float32(math.Inf(-1)) }
func (r *recorder) Accept(tok int)      { r.accepted = append(r.accepted, tok) }

func TestThinkGate(t *testing.T) {
	inf := float32(math.Inf(-1))
	step := func(g *thinkGate, tok int) []float32 {
		l := make([]float32, 8)
		g.Process(l)
		g.Accept(tok)
		return l
	}
	// Maybe: the opening token (0, forbidden by the grammar) stays allowed
	// at the first step; taking it defers the grammar to the end tokens.
	r := &recorder{}
	g := &thinkGate{inner: r, start: 0, end: []int{5, 6}, state: gateMaybe}
	if l := step(g, 0); l[0] == inf {
		t.Fatal("opening token masked")
	}
	for _, tok := range []int{5, 3, 5, 6} {
		if l := step(g, tok); l[0] == inf {
			t.Fatal("masked while reasoning")
		}
	}
	if l := step(g, 2); l[0] != inf || !reflect.DeepEqual(r.accepted, []int{2}) {
		t.Fatalf("after the end: %v %v", l, r.accepted)
	}
	// Maybe, but the first token is the answer: the grammar has it.
	r = &recorder{}
	g = &thinkGate{inner: r, start: 7, end: []int{5}, state: gateMaybe}
	step(g, 1)
	if l := step(g, 7); l[0] != inf || !reflect.DeepEqual(r.accepted, []int{1, 7}) {
		t.Fatalf("answer first: %v", r.accepted)
	}
	// Starting inside reasoning.
	r = &recorder{}
	g = &thinkGate{inner: r, start: -1, end: []int{5}, state: gateReasoning}
	step(g, 1)
	step(g, 5)
	if l := step(g, 3); l[0] != inf || !reflect.DeepEqual(r.accepted, []int{3}) {
		t.Fatalf("start in reasoning: %v", r.accepted)
	}
}

func TestStreamCalls(t *testing.T) {
	in := []toolparse.ToolCallDelta{
		{Index: 0, ID: "a", Type: "function", Name: "f", Arguments: `{"x"`},
		{Index: 0, Arguments: `: 1`},
		{Index: 0, Arguments: `}`},
		{Index: 1, ID: "b", Type: "function", Name: "g"},
		{Index: 1, Arguments: `{}`},
	}
	want := []toolparse.ToolCallDelta{
		{Index: 0, ID: "a", Type: "function", Name: "f"},
		{Index: 0, Arguments: `{"x": 1}`},
		{Index: 1, ID: "b", Type: "function", Name: "g"},
		{Index: 1, Arguments: `{}`},
	}
	if got := streamCalls(nil, in); !reflect.DeepEqual(got, want) {
		t.Fatalf("streamCalls\n got %+v\nwant %+v", got, want)
	}
	full := []toolparse.ToolCallDelta{
		{Index: 0, ID: "a", Type: "function", Name: "f", Arguments: `{"x": 1}`},
		{Index: 1, ID: "b", Type: "function", Name: "g", Arguments: `{}`},
	}
	if got := fullCalls(in); !reflect.DeepEqual(got, full) {
		t.Fatalf("fullCalls %+v", got)
	}
}
