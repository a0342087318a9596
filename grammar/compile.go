package grammar

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
)

// Spec says what output to force. Exactly one of JSONSchema, JSONObject,
// Regex, GBNF, Lark and Choice is set.
type Spec struct {
	// JSONSchema is a JSON Schema document: the output is one JSON value
	// that validates against it (see schema.go for the supported subset).
	JSONSchema string
	// JSONObject forces any JSON object (response_format json_object).
	JSONObject bool
	// Regex forces a full match of a regular expression (RE2 syntax as Go's
	// regexp accepts it; the whole output must match).
	Regex string
	// GBNF is a grammar in llama.cpp's GBNF; generation starts at "root".
	GBNF string
	// Lark is a grammar in Lark's EBNF (see lark.go for the subset);
	// generation starts at "start".
	Lark string
	// Choice forces exactly one of these strings.
	Choice []string
	// Alternatives forces the output of any one of these specs (each with
	// its own Frame, say a literal prefix before a JSON Schema): a tool
	// call whose syntax names the function outside the JSON.
	Alternatives []Spec

	// Strict applies OpenAI's strict structured-output semantics to a JSON
	// Schema: objects never take properties beyond those listed.
	Strict bool
	// CompactJSON allows no whitespace at all between JSON tokens. By
	// default a bounded amount is allowed (see jsonWS).
	CompactJSON bool

	// Frame, if set, wraps the language: the output is Frame.Min to
	// Frame.Max repetitions of Begin, a string of the language, End,
	// separated by Sep (used to force tool calls in a model's own format).
	Frame *Frame
}

// Frame wraps a grammar's language; see Spec.Frame.
type Frame struct {
	Begin, End, Sep string
	Min, Max        int // Max < 0: unbounded
}

// Key is a digest of the spec, for caching compiled grammars.
func (s Spec) Key() string {
	b, _ := json.Marshal(s)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// Grammar is a compiled spec bound to a vocabulary. It is immutable apart
// from its token-mask cache, which fills as matchers visit states, and safe
// for concurrent use; share it between requests with the same spec.
type Grammar struct {
	vocab *Vocab

	root      int32   // start state of the root rule
	stRule    []int32 // rule of each state
	flags     []uint8
	stClass   []int32 // per state: index into classMaps (one per rule)
	classMaps [][256]uint8
	stTrans   []int32 // per state: offset of its row in trans
	trans     []int32 // next state per byte class, -1: none
	callOff   []int32 // per state: its calls are calls[callOff[s]:callOff[s+1]]
	calls     []call

	masks      []atomic.Pointer[stateMask] // per state, computed on first use
	maskBytes  atomic.Int64                // memory the kept masks take
	maxMask    int64                       // Limits.MaxMaskCacheBytes
	rootCalled bool                        // some rule calls the root rule
}

const (
	fFinal uint8 = 1 << iota // the state's rule may end here
	fBytes                   // the state has byte moves
	fCalls                   // the state calls rules
)

// call is a call move: the callee starts at start and the caller continues
// at ret; tail calls (ret final with no moves) push no return frame.
type call struct {
	start, ret int32
	tail       bool
}

// NumStates is the number of automaton states, a measure of grammar size.
func (g *Grammar) NumStates() int { return len(g.flags) }

// step returns the state after byte b from state s, or -1.
func (g *Grammar) step(s int32, b byte) int32 {
	return g.trans[g.stTrans[s]+int32(g.classMaps[g.stClass[s]][b])]
}

// Compile compiles a spec for a vocabulary (which may be nil for a grammar
// only driven by AcceptString, as in tests). Errors wrap ErrSyntax,
// ErrUnsupported, ErrLimit, ErrEmpty or ErrLeftRecursion.
func Compile(spec Spec, vocab *Vocab, lim Limits) (*Grammar, error) {
	lim = lim.withDefaults()
	b := newBudget(lim)
	rs, err := frontEnd(spec, b)
	if err != nil {
		return nil, err
	}
	if len(rs.bodies) > lim.MaxRules {
		return nil, errorf(ErrLimit, "%d rules, over %d", len(rs.bodies), lim.MaxRules)
	}
	g, err := assemble(rs, b, true)
	if errors.Is(err, ErrLimit) && !errors.Is(err, errTimeout) {
		// Inlining can make one rule's automaton blow up where calls
		// would not; try again keeping every rule separate.
		g, err = assemble(rs, b, false)
	}
	if err != nil {
		return nil, err
	}
	g.vocab = vocab
	g.maxMask = lim.MaxMaskCacheBytes
	return g, nil
}

var errTimeout = errors.New("timeout")

func frontEnd(spec Spec, b *budget) (*ruleSet, error) {
	n := 0
	size := 0
	if spec.JSONSchema != "" {
		n++
		size = len(spec.JSONSchema)
	}
	if spec.JSONObject {
		n++
	}
	if spec.Regex != "" {
		n++
		size = len(spec.Regex)
	}
	if spec.GBNF != "" {
		n++
		size = len(spec.GBNF)
	}
	if spec.Lark != "" {
		n++
		size = len(spec.Lark)
	}
	if spec.Choice != nil {
		n++
		for _, c := range spec.Choice {
			size += len(c)
		}
	}
	if spec.Alternatives != nil {
		n++
	}
	if n != 1 {
		return nil, errorf(ErrSyntax, "exactly one of json schema, json object, regex, grammar, choice and alternatives must be given (%d given)", n)
	}
	if size > b.lim.MaxSpecBytes {
		return nil, errorf(ErrLimit, "spec of %d bytes, over %d", size, b.lim.MaxSpecBytes)
	}
	rs := &ruleSet{}
	var err error
	switch {
	case spec.JSONSchema != "":
		err = fromSchema(rs, []byte(spec.JSONSchema), spec, b)
	case spec.JSONObject:
		fromJSONObject(rs, spec)
	case spec.Regex != "":
		var e expr
		if e, err = parseRegex(spec.Regex, b.lim); err == nil {
			rs.add("root", e)
		}
	case spec.GBNF != "":
		err = parseGBNF(rs, spec.GBNF, b.lim)
	case spec.Lark != "":
		err = parseLark(rs, spec.Lark, b.lim)
	case spec.Alternatives != nil:
		err = alternatives(rs, spec.Alternatives, b)
	default:
		if len(spec.Choice) == 0 {
			return nil, errorf(ErrSyntax, "choice: empty list")
		}
		alts := make(eAlt, len(spec.Choice))
		for i, c := range spec.Choice {
			alts[i] = eLit(c)
		}
		rs.add("root", alts)
	}
	if err != nil {
		return nil, err
	}
	if f := spec.Frame; f != nil {
		wrapFrame(rs, f)
	}
	return rs, nil
}

// alternatives makes rs's root the union of the specs' languages: each is
// compiled on its own (under the budget b they share) and its rules are
// appended, renumbered, after the ones already in rs.
func alternatives(rs *ruleSet, specs []Spec, b *budget) error {
	if len(specs) == 0 {
		return errorf(ErrSyntax, "alternatives: empty list")
	}
	rs.add("root", nil)
	alts := make(eAlt, 0, len(specs))
	for i, sub := range specs {
		srs, err := frontEnd(sub, b)
		if err != nil {
			return fmt.Errorf("alternative %d: %w", i, err)
		}
		off := len(rs.bodies)
		shift := func(r eRef) expr { return eRef(int(r) + off) }
		for j, body := range srs.bodies {
			rs.add(srs.names[j], mapRefs(body, shift))
		}
		alts = append(alts, eRef(off))
	}
	rs.bodies[0] = alts
	return nil
}

// wrapFrame makes the root Frame.Min..Max repetitions of Begin root End.
func wrapFrame(rs *ruleSet, f *Frame) {
	inner := rs.add("framed", rs.bodies[0])
	item := seq(eLit(f.Begin), eRef(inner), eLit(f.End))
	var body expr
	switch {
	case f.Max == 0:
		body = eEmpty
	case f.Min == 0:
		body = opt(seq(item, eRep{seq(eLit(f.Sep), item), 0, max(f.Max-1, -1)}))
	default:
		rest := -1
		if f.Max > 0 {
			rest = f.Max - 1
		}
		body = seq(item, eRep{seq(eLit(f.Sep), item), f.Min - 1, rest})
	}
	rs.bodies[0] = body
}

// assemble compiles every rule reachable from the root into one Grammar.
func assemble(rs *ruleSet, b *budget, inline bool) (*Grammar, error) {
	bodies := slices.Clone(rs.bodies)
	if inline {
		bodies = inlineRules(bodies)
	}
	// Rules reachable from the root, numbered densely.
	num := make([]int32, len(bodies))
	for i := range num {
		num[i] = -1
	}
	order := []int{0}
	num[0] = 0
	for k := 0; k < len(order); k++ {
		walkRefs(bodies[order[k]], func(r int) {
			if num[r] < 0 {
				num[r] = int32(len(order))
				order = append(order, r)
			}
		})
	}
	dfas := make([]*dfa, len(order))
	total := 0
	for k, r := range order {
		n := &nfa{b: b}
		s, f, err := n.build(renumber(bodies[r], num))
		if err != nil {
			return nil, err
		}
		d, err := n.determinize(s, f)
		if err != nil {
			return nil, err
		}
		total += len(d.st)
		if total > b.lim.MaxStates {
			return nil, errorf(ErrLimit, "more than %d automaton states", b.lim.MaxStates)
		}
		dfas[k] = d
	}
	// Which rules can match anything at all (least fixpoint).
	productive := make([]bool, len(dfas))
	for changed := true; changed; {
		changed = false
		for k, d := range dfas {
			if !productive[k] && reachesFinal(d, func(r int32) bool { return productive[r] }, false) {
				productive[k] = true
				changed = true
			}
		}
	}
	if !productive[0] {
		return nil, errorf(ErrEmpty, "the grammar matches no string")
	}
	for k, d := range dfas {
		if productive[k] {
			d.trim(func(r int32) bool { return productive[r] })
			dfas[k] = d.minimize()
		}
	}
	if err := checkLeftRecursion(dfas, rs.names, order); err != nil {
		return nil, err
	}
	return flatten(dfas, productive), nil
}

// reachesFinal reports whether d's start reaches a final state through byte
// moves (unless noBytes) and calls of rules ok accepts.
func reachesFinal(d *dfa, ok func(int32) bool, noBytes bool) bool {
	seen := make([]bool, len(d.st))
	stack := []int32{0}
	seen[0] = true
	for len(stack) > 0 {
		s := &d.st[stack[len(stack)-1]]
		stack = stack[:len(stack)-1]
		if s.final {
			return true
		}
		next := func(t int32) {
			if !seen[t] {
				seen[t] = true
				stack = append(stack, t)
			}
		}
		if !noBytes {
			for _, r := range s.ranges {
				next(r.to)
			}
		}
		for _, c := range s.calls {
			if ok(c.rule) {
				next(c.to)
			}
		}
	}
	return false
}

// checkLeftRecursion rejects a rule that can call itself before consuming
// a byte: the matcher expands calls eagerly and would never stop.
func checkLeftRecursion(dfas []*dfa, names []string, order []int) error {
	nullable := make([]bool, len(dfas))
	for changed := true; changed; {
		changed = false
		for k, d := range dfas {
			if !nullable[k] && reachesFinal(d, func(r int32) bool { return nullable[r] }, true) {
				nullable[k] = true
				changed = true
			}
		}
	}
	// left[k]: rules k calls before consuming input.
	left := make([][]int32, len(dfas))
	for k, d := range dfas {
		seen := make([]bool, len(d.st))
		stack := []int32{0}
		seen[0] = true
		for len(stack) > 0 {
			s := &d.st[stack[len(stack)-1]]
			stack = stack[:len(stack)-1]
			for _, c := range s.calls {
				left[k] = append(left[k], c.rule)
				if nullable[c.rule] && !seen[c.to] {
					seen[c.to] = true
					stack = append(stack, c.to)
				}
			}
		}
	}
	// Cycle search (three colours).
	color := make([]uint8, len(dfas))
	var visit func(k int32) int32
	visit = func(k int32) int32 {
		color[k] = 1
		for _, c := range left[k] {
			if color[c] == 1 {
				return c
			}
			if color[c] == 0 {
				if r := visit(c); r >= 0 {
					return r
				}
			}
		}
		color[k] = 2
		return -1
	}
	for k := range dfas {
		if color[k] == 0 {
			if r := visit(int32(k)); r >= 0 {
				return errorf(ErrLeftRecursion, "rule %q can reach itself without consuming input", names[order[r]])
			}
		}
	}
	return nil
}

// flatten lays the rule automata out as global state tables.
func flatten(dfas []*dfa, productive []bool) *Grammar {
	g := &Grammar{}
	base := make([]int32, len(dfas))
	n := int32(0)
	for k, d := range dfas {
		base[k] = n
		if productive[k] {
			n += int32(len(d.st))
		}
	}
	g.stRule = make([]int32, 0, n)
	g.flags = make([]uint8, 0, n)
	g.stClass = make([]int32, 0, n)
	g.stTrans = make([]int32, 0, n)
	g.callOff = make([]int32, 0, n+1)
	for k, d := range dfas {
		if !productive[k] {
			continue
		}
		// Byte classes of this rule.
		var cm [256]uint8
		var pts []int
		for _, s := range d.st {
			for _, r := range s.ranges {
				pts = append(pts, int(r.lo), int(r.hi)+1)
			}
		}
		pts = append(pts, 0, 256)
		slices.Sort(pts)
		pts = slices.Compact(pts)
		nc := len(pts) - 1
		for c := 0; c < nc; c++ {
			for x := pts[c]; x < pts[c+1]; x++ {
				cm[x] = uint8(c) // at most 256 classes: the byte values
			}
		}
		ci := int32(len(g.classMaps))
		g.classMaps = append(g.classMaps, cm)
		for _, s := range d.st {
			g.stRule = append(g.stRule, int32(k))
			g.stClass = append(g.stClass, ci)
			var f uint8
			if s.final {
				f |= fFinal
			}
			if len(s.ranges) > 0 {
				f |= fBytes
			}
			g.stTrans = append(g.stTrans, int32(len(g.trans)))
			for c := 0; c < nc; c++ {
				t := stepRanges(s.ranges, byte(pts[c]))
				if t >= 0 {
					t += base[k]
				}
				g.trans = append(g.trans, t)
			}
			if len(s.calls) > 0 {
				f |= fCalls
			}
			g.flags = append(g.flags, f)
		}
	}
	for k, d := range dfas {
		if !productive[k] {
			continue
		}
		for _, s := range d.st {
			g.callOff = append(g.callOff, int32(len(g.calls)))
			for _, c := range s.calls {
				ret := base[k] + c.to
				rs := d.st[c.to]
				tail := rs.final && len(rs.ranges) == 0 && len(rs.calls) == 0
				g.calls = append(g.calls, call{start: base[c.rule], ret: ret, tail: tail})
			}
		}
	}
	g.callOff = append(g.callOff, int32(len(g.calls)))
	g.root = base[0]
	for _, c := range g.calls {
		g.rootCalled = g.rootCalled || c.start == g.root
	}
	g.masks = make([]atomic.Pointer[stateMask], len(g.flags))
	return g
}

// ------------------------------------------------------------- inlining

// walkRefs calls f for every rule e references.
func walkRefs(e expr, f func(int)) {
	switch e := e.(type) {
	case eSeq:
		for _, p := range e {
			walkRefs(p, f)
		}
	case eAlt:
		for _, p := range e {
			walkRefs(p, f)
		}
	case eRep:
		walkRefs(e.e, f)
	case eRef:
		f(int(e))
	case eAnd:
		walkRefs(e.a, f)
		walkRefs(e.b, f)
	case eDiff:
		walkRefs(e.a, f)
		walkRefs(e.b, f)
	case eDFA:
		for _, s := range e.d.st {
			for _, c := range s.calls {
				f(int(c.rule))
			}
		}
	case eList:
		walkRefs(e.sep, f)
		for _, it := range e.items {
			walkRefs(it.e, f)
		}
	}
}

// mapRefs rebuilds e with every reference replaced by f's result.
func mapRefs(e expr, f func(eRef) expr) expr {
	switch x := e.(type) {
	case eSeq:
		out := make(eSeq, len(x))
		for i, p := range x {
			out[i] = mapRefs(p, f)
		}
		return out
	case eAlt:
		out := make(eAlt, len(x))
		for i, p := range x {
			out[i] = mapRefs(p, f)
		}
		return out
	case eRep:
		return eRep{mapRefs(x.e, f), x.min, x.max}
	case eRef:
		return f(x)
	case eAnd:
		return eAnd{mapRefs(x.a, f), mapRefs(x.b, f)}
	case eDiff:
		return eDiff{mapRefs(x.a, f), mapRefs(x.b, f)}
	case eDFA:
		d := &dfa{st: slices.Clone(x.d.st)}
		for i := range d.st {
			cs := slices.Clone(d.st[i].calls)
			for j := range cs {
				r := f(eRef(cs[j].rule))
				if rr, ok := r.(eRef); ok {
					cs[j].rule = int32(rr)
				} else {
					panic("grammar: inlining into an embedded automaton")
				}
			}
			d.st[i].calls = cs
		}
		return eDFA{d}
	case eList:
		out := eList{sep: mapRefs(x.sep, f), nonEmpty: x.nonEmpty, items: make([]listItem, len(x.items))}
		for i, it := range x.items {
			out.items[i] = listItem{mapRefs(it.e, f), it.min, it.max}
		}
		return out
	}
	return e
}

func renumber(e expr, num []int32) expr {
	return mapRefs(e, func(r eRef) expr { return eRef(num[r]) })
}

// Inlining budget: a reference to a non-recursive rule is replaced by the
// rule's body when the body is small, or when it is the only use. Inlined
// structure makes larger automata but lets a token mask be computed per
// state once, context-free: tokens that cross a rule's end (a string's
// closing quote and the comma after it, say) need a check against the
// stack on every step otherwise.
const (
	inlineSmall = 64
	inlineOnce  = 20000
)

func inlineRules(bodies []expr) []expr {
	n := len(bodies)
	// Recursive rules: those on a cycle of references.
	edges := make([][]int, n)
	for i, b := range bodies {
		walkRefs(b, func(r int) { edges[i] = append(edges[i], r) })
	}
	rec := recursiveRules(edges)
	// Weighted uses (a reference under a repetition counts its copies).
	uses := make([]int, n)
	for _, b := range bodies {
		countUses(b, 1, uses)
	}
	out := slices.Clone(bodies)
	size := make([]int, n)
	done := make([]bool, n)
	var expand func(i int) expr
	expand = func(i int) expr {
		if done[i] {
			return out[i]
		}
		done[i] = true // recursion is cut by rec below
		out[i] = mapRefs(bodies[i], func(r eRef) expr {
			if rec[r] || int(r) == 0 {
				return r
			}
			body := expand(int(r))
			if size[r] <= inlineSmall || (uses[r] == 1 && size[r] <= inlineOnce) {
				return body
			}
			return r
		})
		size[i] = exprSize(out[i])
		return out[i]
	}
	for i := range bodies {
		expand(i)
	}
	return out
}

func countUses(e expr, w int, uses []int) {
	switch x := e.(type) {
	case eSeq:
		for _, p := range x {
			countUses(p, w, uses)
		}
	case eAlt:
		for _, p := range x {
			countUses(p, w, uses)
		}
	case eRep:
		k := x.max
		if k < 0 {
			k = x.min + 1
		}
		countUses(x.e, w*max(k, 1), uses)
	case eRef:
		uses[x] += w
	case eAnd:
		countUses(x.a, w, uses)
		countUses(x.b, w, uses)
	case eDiff:
		countUses(x.a, w, uses)
		countUses(x.b, w, uses)
	case eDFA:
		walkRefs(x, func(r int) { uses[r] += w })
	case eList:
		for _, it := range x.items {
			k := it.max
			if k < 0 {
				k = it.min + 1
			}
			countUses(it.e, w*2*max(k, 1), uses)
			countUses(x.sep, w*2*max(k, 1), uses)
		}
	}
}

// exprSize estimates the NFA states e builds into.
func exprSize(e expr) int {
	switch x := e.(type) {
	case eSeq:
		s := 1
		for _, p := range x {
			s += exprSize(p)
		}
		return s
	case eAlt:
		s := 2
		for _, p := range x {
			s += exprSize(p)
		}
		return s
	case eLit:
		return len(x) + 1
	case eClass:
		if x.bytes {
			return 2
		}
		return 2 + 3*len(x.ranges)
	case eRep:
		k := x.max
		if k < 0 {
			k = x.min + 1
		}
		return 2 + max(k, 1)*exprSize(x.e)
	case eRef:
		return 2
	case eAnd:
		return exprSize(x.a) * exprSize(x.b)
	case eDiff:
		return exprSize(x.a) * exprSize(x.b)
	case eDFA:
		return len(x.d.st) + 1
	case eList:
		s := 2
		for _, it := range x.items {
			k := it.max
			if k < 0 {
				k = it.min + 1
			}
			s += 2 + 2*max(k, 1)*(exprSize(it.e)+exprSize(x.sep))
		}
		return s
	}
	return 1
}

// recursiveRules marks rules on a reference cycle (Tarjan's SCCs).
func recursiveRules(edges [][]int) []bool {
	n := len(edges)
	index := make([]int, n)
	low := make([]int, n)
	on := make([]bool, n)
	for i := range index {
		index[i] = -1
	}
	rec := make([]bool, n)
	var stack []int
	next := 0
	var strong func(v int)
	strong = func(v int) {
		index[v], low[v] = next, next
		next++
		stack = append(stack, v)
		on[v] = true
		for _, w := range edges[v] {
			if w == v {
				rec[v] = true
			}
			if index[w] < 0 {
				strong(w)
				low[v] = min(low[v], low[w])
			} else if on[w] {
				low[v] = min(low[v], index[w])
			}
		}
		if low[v] == index[v] {
			var comp []int
			for {
				w := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				on[w] = false
				comp = append(comp, w)
				if w == v {
					break
				}
			}
			if len(comp) > 1 {
				for _, w := range comp {
					rec[w] = true
				}
			}
		}
	}
	for v := range edges {
		if index[v] < 0 {
			strong(v)
		}
	}
	return rec
}
