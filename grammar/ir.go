package grammar

// The intermediate representation every front end (JSON Schema, regex, GBNF,
// choice) produces: rules whose bodies are regular expressions over bytes
// and references to rules. A rule body is compiled into a DFA whose
// alphabet is bytes plus calls of other rules, so the whole grammar is a
// recursive transition network; the matcher runs it as a pushdown automaton.

type expr interface{ isExpr() }

type (
	// eSeq matches its parts in order; the empty eSeq matches "".
	eSeq []expr
	// eAlt matches any one part; the empty eAlt matches nothing.
	eAlt []expr
	// eLit matches these bytes.
	eLit string
	// eClass matches one character whose code point is in ranges (UTF-8
	// encoded), or one byte in ranges when bytes is set. Ranges are sorted,
	// disjoint and not adjacent (see normRanges).
	eClass struct {
		ranges []rrange
		bytes  bool
	}
	// eRep matches e between min and max times; max < 0 is unbounded.
	eRep struct {
		e        expr
		min, max int
	}
	// eRef matches rule number r.
	eRef int
	// eAnd matches strings both a and b match; eDiff those a matches and b
	// does not. Both must be regular (no reference to a recursive rule).
	eAnd  struct{ a, b expr }
	eDiff struct{ a, b expr }
	// eDFA embeds an already built call-free automaton.
	eDFA struct{ d *dfa }
)

func (eSeq) isExpr()   {}
func (eAlt) isExpr()   {}
func (eLit) isExpr()   {}
func (eClass) isExpr() {}
func (eRep) isExpr()   {}
func (eRef) isExpr()   {}
func (eAnd) isExpr()   {}
func (eDiff) isExpr()  {}
func (eDFA) isExpr()   {}

var (
	eEmpty   = eSeq{}
	eNothing = eAlt{}
)

// rrange is an inclusive range of code points (or bytes).
type rrange struct{ lo, hi rune }

func opt(e expr) expr  { return eRep{e, 0, 1} }
func star(e expr) expr { return eRep{e, 0, -1} }
func plus(e expr) expr { return eRep{e, 1, -1} }
func seq(es ...expr) expr {
	if len(es) == 1 {
		return es[0]
	}
	return eSeq(es)
}
func alt(es ...expr) expr {
	if len(es) == 1 {
		return es[0]
	}
	return eAlt(es)
}

// chars is a class of code points.
func chars(rs ...rrange) eClass { return eClass{ranges: normRanges(rs)} }

// byteRange is a class of bytes.
func byteRange(lo, hi byte) eClass {
	return eClass{ranges: []rrange{{rune(lo), rune(hi)}}, bytes: true}
}

// ruleSet holds the rules under construction; rule 0 is the root.
type ruleSet struct {
	names  []string
	bodies []expr
}

func (rs *ruleSet) add(name string, body expr) int {
	rs.names = append(rs.names, name)
	rs.bodies = append(rs.bodies, body)
	return len(rs.bodies) - 1
}

// maxRune is the largest code point; surrogates are never matched.
const maxRune = 0x10FFFF

// normRanges sorts, merges and clips code point ranges.
func normRanges(rs []rrange) []rrange {
	out := make([]rrange, 0, len(rs))
	for _, r := range rs {
		if r.lo > r.hi || r.hi < 0 || r.lo > maxRune {
			continue
		}
		out = append(out, rrange{max(r.lo, 0), min(r.hi, maxRune)})
	}
	sortRanges(out)
	m := out[:0]
	for _, r := range out {
		if n := len(m); n > 0 && r.lo <= m[n-1].hi+1 {
			m[n-1].hi = max(m[n-1].hi, r.hi)
			continue
		}
		m = append(m, r)
	}
	return m
}

func sortRanges(rs []rrange) {
	// Insertion sort: classes are short.
	for i := 1; i < len(rs); i++ {
		for j := i; j > 0 && rs[j].lo < rs[j-1].lo; j-- {
			rs[j], rs[j-1] = rs[j-1], rs[j]
		}
	}
}

// negate returns the complement of normalized ranges within [0, top].
func negate(rs []rrange, top rune) []rrange {
	var out []rrange
	next := rune(0)
	for _, r := range rs {
		if r.lo > next {
			out = append(out, rrange{next, r.lo - 1})
		}
		next = r.hi + 1
	}
	if next <= top {
		out = append(out, rrange{next, top})
	}
	return out
}

// eList matches its items in order, item i repeated between min and max
// times (max < 0: unbounded), every two occurrences separated by sep: the
// shape of a JSON object's properties (each optional or required) and of an
// array's items. It builds into an automaton linear in the items, where
// spelling it with eAlt/eRep would need a copy of the rest after every
// optional item. nonEmpty excludes the empty sequence.
type eList struct {
	items    []listItem
	sep      expr
	nonEmpty bool
}

type listItem struct {
	e        expr
	min, max int
}

func (eList) isExpr() {}
