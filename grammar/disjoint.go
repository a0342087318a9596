package grammar

import (
	"math/big"
	"slices"
	"strconv"
	"strings"
)

// oneOf asks that an instance match exactly one branch. A grammar can only
// generate the union of the branches, which is the same language exactly
// when no value matches two of them. disjoint proves that from what the
// schemas say: JSON types, const and enum values, numeric bounds, and
// object discriminators (a property one branch requires whose schemas in
// the two branches are themselves disjoint, as in pydantic's
// discriminated unions or closed objects with different required keys).
// Every step over-approximates what a schema admits, so a proof is never
// wrong; where none is found, oneOf is refused (ErrUnsupported) rather than
// silently relaxed to anyOf.

// typeSet is a set of JSON types. Integers are numbers: 1 is valid for
// both "integer" and "number", so the two are never told apart.
type typeSet uint8

const (
	tNull typeSet = 1 << iota
	tBoolean
	tNumber
	tString
	tArray
	tObject
	tAll = tNull | tBoolean | tNumber | tString | tArray | tObject
)

var typeBits = map[string]typeSet{
	"null": tNull, "boolean": tBoolean, "integer": tNumber, "number": tNumber,
	"string": tString, "array": tArray, "object": tObject,
}

func valueType(v *jv) typeSet {
	switch v.kind {
	case 'z':
		return tNull
	case 'b':
		return tBoolean
	case 'n':
		return tNumber
	case 's':
		return tString
	case 'a':
		return tArray
	}
	return tObject
}

// maxProofDepth bounds how far through properties, branches and $refs a
// proof looks, and maxProofSteps how many comparisons one pair of branches
// may take (recursive schemas branch at every level); past either, nothing
// is proven.
const (
	maxProofDepth = 16
	maxProofSteps = 10000
)

// step spends one unit of the proof budget; false when it is spent. Every
// recursive walk of the proof steps: $refs can make a small schema a tree
// exponentially large.
func (c *schemaCompiler) step() bool {
	c.proofSteps--
	return c.proofSteps >= 0
}

var (
	schemaTrue  = &jv{kind: 'b', b: true}
	schemaFalse = &jv{kind: 'b', b: false}
)

// oneOfDisjoint returns the first pair of branches it cannot prove
// disjoint, or ok.
func (c *schemaCompiler) oneOfDisjoint(branches []*jv) (i, j int, ok bool, err error) {
	for i := range branches {
		for j := i + 1; j < len(branches); j++ {
			if err := c.b.tick(); err != nil {
				return 0, 0, false, err
			}
			c.proofSteps = maxProofSteps
			if !c.disjoint(branches[i], branches[j], 0) {
				return i, j, false, nil
			}
		}
	}
	return 0, 0, true, nil
}

// flatten resolves $ref and merges allOf as schema does. merge keeps one
// side's value where both constrain a keyword, so the result admits at
// least what s admits. ok is false where s cannot be read (compiling it
// reports why).
func (c *schemaCompiler) flatten(s *jv) (*jv, bool) {
	for range maxProofDepth {
		d, err := c.deref(s)
		if err != nil {
			return nil, false
		}
		all := d.get("allOf")
		if all == nil {
			return d, d.kind == 'o' || d.kind == 'b'
		}
		if all.kind != 'a' {
			return nil, false
		}
		m := without(d, "allOf")
		for _, sub := range all.arr {
			sub, err := c.deref(sub)
			if err != nil {
				return nil, false
			}
			if sub.kind == 'b' {
				if !sub.b {
					return schemaFalse, true
				}
				continue
			}
			m = merge(m, sub)
		}
		s = m
	}
	return nil, false
}

// branches returns the alternatives of a flattened schema with anyOf or
// oneOf, each merged with the keywords beside it, as schema compiles them.
func (c *schemaCompiler) branches(s *jv) ([]*jv, bool) {
	for _, key := range []string{"anyOf", "oneOf"} {
		u := s.get(key)
		if u == nil || u.kind != 'a' {
			continue
		}
		base := without(s, key)
		out := make([]*jv, 0, len(u.arr))
		for _, sub := range u.arr {
			d, err := c.deref(sub)
			if err != nil {
				return nil, false
			}
			if d.kind == 'b' {
				if !d.b {
					continue
				}
				d = &jv{kind: 'o'}
			}
			out = append(out, merge(base, d))
		}
		return out, true
	}
	return nil, false
}

// admittedTypes over-approximates the JSON types of the values s admits.
// A schema without "type" admits every type (its keywords constrain only
// instances of the types they are about), even where schema guesses one.
func (c *schemaCompiler) admittedTypes(s *jv, depth int) typeSet {
	if depth > maxProofDepth || !c.step() {
		return tAll
	}
	s, ok := c.flatten(s)
	if !ok {
		return tAll
	}
	if s.kind == 'b' {
		if s.b {
			return tAll
		}
		return 0
	}
	t := tAll
	if ty := s.get("type"); ty != nil {
		switch ty.kind {
		case 's':
			if bits, known := typeBits[ty.str]; known {
				t = bits
			}
		case 'a':
			var u typeSet
			for _, x := range ty.arr {
				bits, known := typeBits[x.str]
				if x.kind != 's' || !known {
					u = tAll
					break
				}
				u |= bits
			}
			t = u
		}
	}
	if v := s.get("const"); v != nil {
		t &= valueType(v)
	} else if e := s.get("enum"); e != nil && e.kind == 'a' {
		var u typeSet
		for _, x := range e.arr {
			u |= valueType(x)
		}
		t &= u
	}
	if n := s.get("nullable"); n != nil && n.kind == 'b' && n.b {
		t |= tNull
	}
	if bs, ok := c.branches(s); ok {
		var u typeSet
		for _, b := range bs {
			u |= c.admittedTypes(b, depth+1)
		}
		t &= u
	}
	return t
}

// finiteValues over-approximates the values s admits by a finite list, if
// const, enum or branches that all have one bound them.
func (c *schemaCompiler) finiteValues(s *jv, depth int) ([]*jv, bool) {
	if depth > maxProofDepth || !c.step() {
		return nil, false
	}
	s, ok := c.flatten(s)
	if !ok {
		return nil, false
	}
	if s.kind == 'b' {
		return nil, !s.b
	}
	if v := s.get("const"); v != nil {
		return []*jv{v}, true
	}
	if e := s.get("enum"); e != nil && e.kind == 'a' {
		return e.arr, true
	}
	bs, ok := c.branches(s)
	if !ok {
		return nil, false
	}
	var out []*jv
	for _, b := range bs {
		vs, ok := c.finiteValues(b, depth+1)
		if !ok {
			return nil, false
		}
		out = append(out, vs...)
	}
	return out, true
}

// disjoint reports whether no JSON value is valid against both a and b;
// false means not proven.
func (c *schemaCompiler) disjoint(a, b *jv, depth int) bool {
	if depth > maxProofDepth || !c.step() {
		return false
	}
	a, okA := c.flatten(a)
	b, okB := c.flatten(b)
	if !okA || !okB {
		return false
	}
	if (a.kind == 'b' && !a.b) || (b.kind == 'b' && !b.b) {
		return true
	}
	if a.kind == 'b' || b.kind == 'b' {
		return false // true admits everything the other side does
	}
	for _, pair := range [2][2]*jv{{a, b}, {b, a}} {
		if bs, ok := c.branches(pair[0]); ok {
			for _, x := range bs {
				if !c.disjoint(x, pair[1], depth+1) {
					return false
				}
			}
			return true
		}
	}
	shared := c.admittedTypes(a, depth) & c.admittedTypes(b, depth)
	if shared == 0 {
		return true
	}
	for _, pair := range [2][2]*jv{{a, b}, {b, a}} {
		if vs, ok := c.finiteValues(pair[0], depth); ok {
			if !slices.ContainsFunc(vs, func(v *jv) bool { return !c.excludes(pair[1], v, depth+1) }) {
				return true
			}
		}
	}
	switch shared {
	case tObject:
		return c.requiredExcluded(a, b, depth) || c.requiredExcluded(b, a, depth)
	case tNumber:
		return rangesDisjoint(a, b)
	}
	return false
}

// requiredExcluded reports whether a property that a requires can hold no
// value that both a and b allow there: every instance of a lacks what b
// needs, every instance of b that has the property breaks a, and every one
// without it misses a's required property.
func (c *schemaCompiler) requiredExcluded(a, b *jv, depth int) bool {
	r := a.get("required")
	if r == nil || r.kind != 'a' {
		return false
	}
	for _, p := range r.arr {
		if p.kind == 's' && c.disjoint(propertySchema(a, p.str), propertySchema(b, p.str), depth+1) {
			return true
		}
	}
	return false
}

// propertySchema is the schema s applies to the value of property name.
// unevaluatedProperties is left out (read as true): what it applies to
// depends on sibling applicators, and true only admits more.
func propertySchema(s *jv, name string) *jv {
	if props := s.get("properties"); props != nil && props.kind == 'o' {
		if v := props.get(name); v != nil {
			return v
		}
	}
	if ap := s.get("additionalProperties"); ap != nil && (ap.kind == 'o' || ap.kind == 'b') {
		return ap
	}
	return schemaTrue
}

// excludes reports whether the value v is invalid against s; false means
// not proven.
func (c *schemaCompiler) excludes(s, v *jv, depth int) bool {
	if depth > maxProofDepth || !c.step() {
		return false
	}
	s, ok := c.flatten(s)
	if !ok {
		return false
	}
	if s.kind == 'b' {
		return !s.b
	}
	if valueType(v)&c.admittedTypes(s, depth) == 0 {
		return true
	}
	if vs, ok := c.finiteValues(s, depth); ok && !slices.ContainsFunc(vs, func(x *jv) bool { return !provablyUnequal(x, v) }) {
		return true
	}
	if bs, ok := c.branches(s); ok && !slices.ContainsFunc(bs, func(b *jv) bool { return !c.excludes(b, v, depth+1) }) {
		return true
	}
	switch v.kind {
	case 'o':
		if r := s.get("required"); r != nil && r.kind == 'a' {
			for _, p := range r.arr {
				if p.kind == 's' && v.get(p.str) == nil {
					return true
				}
			}
		}
		for i, k := range v.keys {
			if c.excludes(propertySchema(s, k), v.vals[i], depth+1) {
				return true
			}
		}
	case 'n':
		x, ok := numberRat(v.num.String())
		if !ok {
			return false
		}
		lo, hi, loEx, hiEx, err := bounds(s)
		if err != nil {
			return false
		}
		if lo != nil && (x.Cmp(lo) < 0 || (loEx && x.Cmp(lo) == 0)) {
			return true
		}
		if hi != nil && (x.Cmp(hi) > 0 || (hiEx && x.Cmp(hi) == 0)) {
			return true
		}
	}
	return false
}

// rangesDisjoint reports whether the numeric bounds of a and b leave no
// number between them.
func rangesDisjoint(a, b *jv) bool {
	loA, hiA, loExA, hiExA, errA := bounds(a)
	loB, hiB, loExB, hiExB, errB := bounds(b)
	if errA != nil || errB != nil {
		return false
	}
	below := func(hi *big.Rat, hiEx bool, lo *big.Rat, loEx bool) bool {
		if hi == nil || lo == nil {
			return false
		}
		d := hi.Cmp(lo)
		return d < 0 || (d == 0 && (hiEx || loEx))
	}
	return below(hiA, hiExA, loB, loExB) || below(hiB, hiExB, loA, loExA)
}

// numberRat parses a JSON number, refusing one whose exponent would make
// big.Rat compute a huge power.
func numberRat(txt string) (*big.Rat, bool) {
	if i := strings.IndexAny(txt, "eE"); i >= 0 {
		if e, err := strconv.Atoi(strings.TrimPrefix(txt[i+1:], "+")); err != nil || e > maxBoundDigits || e < -maxBoundDigits {
			return nil, false
		}
	}
	if len(txt) > maxBoundDigits {
		return nil, false
	}
	return new(big.Rat).SetString(txt)
}

// valueKey writes a canonical text of v: equal JSON values (1 and 1.0,
// objects with members in any order) get equal keys. ok is false for a
// number too large to normalize.
func valueKey(sb *strings.Builder, v *jv) bool {
	switch v.kind {
	case 'n':
		r, ok := numberRat(v.num.String())
		if !ok {
			return false
		}
		sb.WriteString(r.RatString())
	case 'a':
		sb.WriteByte('[')
		for _, x := range v.arr {
			if !valueKey(sb, x) {
				return false
			}
			sb.WriteByte(',')
		}
		sb.WriteByte(']')
	case 'o':
		order := make([]int, len(v.keys))
		for i := range order {
			order[i] = i
		}
		slices.SortFunc(order, func(x, y int) int { return strings.Compare(v.keys[x], v.keys[y]) })
		sb.WriteByte('{')
		for _, i := range order {
			encodeString(sb, v.keys[i])
			sb.WriteByte(':')
			if !valueKey(sb, v.vals[i]) {
				return false
			}
			sb.WriteByte(',')
		}
		sb.WriteByte('}')
	default:
		v.encode(sb)
	}
	return true
}

func canonicalKey(v *jv) (string, bool) {
	var sb strings.Builder
	ok := valueKey(&sb, v)
	return sb.String(), ok
}

// provablyUnequal reports whether a and b are different JSON values.
func provablyUnequal(a, b *jv) bool {
	ka, okA := canonicalKey(a)
	kb, okB := canonicalKey(b)
	return okA && okB && ka != kb
}
