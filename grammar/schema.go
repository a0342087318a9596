package grammar

import (
	"math/big"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// JSON Schema to grammar. Supported (drafts 4 to 2020-12 spellings):
// type (one or a list), enum, const (the values as listed, less those
// type rules out; another constraining keyword beside them, such as
// minLength, is ErrUnsupported), properties (generated in schema
// order), required, additionalProperties (false, true or a schema; strict
// mode makes it false), $ref to "#..." JSON pointers ($defs, definitions,
// "#" itself; recursion is fine), anyOf, oneOf (see below), allOf
// (merged), nullable (OpenAPI), items, prefixItems, array-form items with
// additionalItems, minItems, maxItems, uniqueItems (see below), minLength,
// maxLength, pattern (searched, as JSON Schema says, unless anchored),
// format (date, time, date-time, uuid, ipv4, email; others are not
// constrained), minimum, maximum, exclusiveMinimum, exclusiveMaximum
// (exact, for integers and decimals), multipleOf (a remainder automaton).
//
// oneOf is generated as the union of its branches, which is exact when no
// value can match two of them; that must be provable from the schemas
// (different types, const/enum values, disjoint numeric ranges, or an
// object property one branch requires whose schemas in the two branches
// are themselves disjoint: discriminated unions). Otherwise it is
// ErrUnsupported; see disjoint.go. uniqueItems: true is exact for arrays
// of at most one item and for items from a const/enum list (a rule per
// set of items used, up to 1024 sets); otherwise ErrUnsupported.
//
// Keywords that would constrain validation in ways we do not generate
// (not, if, patternProperties, contains, ...) are ErrUnsupported.
// Annotations (title, description, default, ...) are ignored.

type schemaCompiler struct {
	j      *jsonCtx
	root   *jv
	strict bool
	b      *budget
	refs   map[string]int
	// proofSteps is what is left of the budget of a oneOf proof.
	proofSteps int
}

func fromSchema(rs *ruleSet, data []byte, spec Spec, b *budget) error {
	root, err := parseJV(data)
	if err != nil {
		return errorf(ErrSyntax, "json schema: %v", err)
	}
	rs.add("root", nil)
	c := &schemaCompiler{j: newJSONCtx(rs, spec.CompactJSON), root: root, strict: spec.Strict, b: b, refs: map[string]int{}}
	e, err := c.ref("#", 0)
	if err != nil {
		return err
	}
	rs.bodies[0] = seq(c.j.ws(), e)
	return nil
}

// ref returns the rule of the schema at a "#..." reference.
func (c *schemaCompiler) ref(ref string, depth int) (expr, error) {
	if id, ok := c.refs[ref]; ok {
		return eRef(id), nil
	}
	target, err := c.resolve(ref)
	if err != nil {
		return nil, err
	}
	if len(c.j.rs.bodies) >= c.b.lim.MaxRules {
		return nil, errorf(ErrLimit, "more than %d rules", c.b.lim.MaxRules)
	}
	id := c.j.rs.add("ref "+ref, nil)
	c.refs[ref] = id
	e, err := c.schema(target, depth+1)
	if err != nil {
		return nil, err
	}
	c.j.rs.bodies[id] = e
	return eRef(id), nil
}

func (c *schemaCompiler) resolve(ref string) (*jv, error) {
	if !strings.HasPrefix(ref, "#") {
		return nil, errorf(ErrUnsupported, "json schema: $ref %q: only references inside the document (#...)", ref)
	}
	frag, err := url.PathUnescape(ref[1:])
	if err != nil {
		return nil, errorf(ErrSyntax, "json schema: $ref %q: %v", ref, err)
	}
	v := c.root
	if frag == "" {
		return v, nil
	}
	if !strings.HasPrefix(frag, "/") {
		return nil, errorf(ErrUnsupported, "json schema: $ref %q: anchors are not supported", ref)
	}
	for _, tok := range strings.Split(frag[1:], "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch {
		case v.kind == 'o':
			v = v.get(tok)
		case v.kind == 'a':
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(v.arr) {
				v = nil
			} else {
				v = v.arr[i]
			}
		default:
			v = nil
		}
		if v == nil {
			return nil, errorf(ErrSyntax, "json schema: $ref %q: no such location", ref)
		}
	}
	return v, nil
}

// unsupportedKeywords constrain instances in ways we do not generate.
var unsupportedKeywords = []string{
	"not", "if", "then", "else", "dependentSchemas", "dependentRequired", "dependencies",
	"patternProperties", "propertyNames", "contains", "minContains", "maxContains",
	"unevaluatedItems", "$dynamicRef", "$recursiveRef",
}

func (c *schemaCompiler) schema(s *jv, depth int) (expr, error) {
	if depth > c.b.lim.MaxSchemaDepth {
		return nil, errorf(ErrLimit, "json schema nested deeper than %d", c.b.lim.MaxSchemaDepth)
	}
	if err := c.b.tick(); err != nil {
		return nil, err
	}
	switch s.kind {
	case 'b':
		if s.b {
			return c.j.anyValue(), nil
		}
		return eNothing, nil
	case 'o':
	default:
		return nil, errorf(ErrSyntax, "json schema: a schema must be an object or a boolean")
	}
	for _, k := range unsupportedKeywords {
		if s.get(k) != nil {
			return nil, errorf(ErrUnsupported, "json schema: keyword %q", k)
		}
	}
	if r := s.get("$ref"); r != nil {
		if r.kind != 's' {
			return nil, errorf(ErrSyntax, "json schema: $ref must be a string")
		}
		if !hasConstraints(s, "$ref") {
			return c.ref(r.str, depth)
		}
		// Siblings of $ref apply too (2019-09 on): merge them in.
		target, err := c.resolve(r.str)
		if err != nil {
			return nil, err
		}
		if target == s {
			return nil, errorf(ErrUnsupported, "json schema: $ref to itself")
		}
		return c.schema(merge(without(s, "$ref"), target), depth+1)
	}
	if all := s.get("allOf"); all != nil {
		if all.kind != 'a' {
			return nil, errorf(ErrSyntax, "json schema: allOf must be an array")
		}
		m := without(s, "allOf")
		for _, sub := range all.arr {
			sub, err := c.deref(sub)
			if err != nil {
				return nil, err
			}
			if sub.kind == 'b' {
				if !sub.b {
					return eNothing, nil
				}
				continue
			}
			m = merge(m, sub)
		}
		return c.schema(m, depth+1)
	}
	for _, key := range []string{"anyOf", "oneOf"} {
		if any := s.get(key); any != nil {
			if any.kind != 'a' {
				return nil, errorf(ErrSyntax, "json schema: %s must be an array", key)
			}
			base := without(s, key)
			var alts eAlt
			var subs []*jv
			for _, sub := range any.arr {
				if hasConstraints(base) {
					d, err := c.deref(sub)
					if err != nil {
						return nil, err
					}
					if d.kind == 'b' {
						if !d.b {
							continue
						}
						d = &jv{kind: 'o'}
					}
					sub = merge(base, d)
				}
				e, err := c.schema(sub, depth+1)
				if err != nil {
					return nil, err
				}
				alts = append(alts, e)
				subs = append(subs, sub)
			}
			if key == "oneOf" {
				// The union is oneOf only when no value can match two branches.
				i, j, ok, err := c.oneOfDisjoint(subs)
				if err != nil {
					return nil, err
				}
				if !ok {
					return nil, errorf(ErrUnsupported, "json schema: oneOf: branches %d and %d may both match a value, and exclusivity cannot be enforced; use anyOf, or tell the branches apart by type, const/enum, numeric range or a required discriminator property", i, j)
				}
			}
			return alts, nil
		}
	}
	if vals, ok, err := constValues(s); err != nil {
		return nil, err
	} else if ok {
		alts := make(eAlt, len(vals))
		for i, x := range vals {
			alts[i] = literal(x)
		}
		return alts, nil
	}
	if n := s.get("nullable"); n != nil && n.kind == 'b' && n.b {
		e, err := c.schema(without(s, "nullable"), depth+1)
		if err != nil {
			return nil, err
		}
		return alt(eLit("null"), e), nil
	}
	var types []string
	switch t := s.get("type"); {
	case t == nil:
		types = inferTypes(s)
	case t.kind == 's':
		types = []string{t.str}
	case t.kind == 'a':
		for _, x := range t.arr {
			if x.kind != 's' {
				return nil, errorf(ErrSyntax, "json schema: type list of non-strings")
			}
			types = append(types, x.str)
		}
	default:
		return nil, errorf(ErrSyntax, "json schema: type must be a string or an array")
	}
	if types == nil {
		return c.j.anyValue(), nil
	}
	var alts eAlt
	for _, t := range types {
		e, err := c.typed(s, t, depth)
		if err != nil {
			return nil, err
		}
		alts = append(alts, e)
	}
	return alt(alts...), nil
}

// deref resolves a schema that is only a $ref.
func (c *schemaCompiler) deref(s *jv) (*jv, error) {
	for i := 0; s.kind == 'o' && i < 32; i++ {
		r := s.get("$ref")
		if r == nil || r.kind != 's' {
			return s, nil
		}
		t, err := c.resolve(r.str)
		if err != nil {
			return nil, err
		}
		if hasConstraints(s, "$ref") {
			s = merge(without(s, "$ref"), t)
		} else {
			s = t
		}
	}
	return s, nil
}

// annotations never constrain an instance.
var annotations = map[string]bool{
	"title": true, "description": true, "default": true, "examples": true, "$schema": true,
	"$id": true, "$comment": true, "$defs": true, "definitions": true, "deprecated": true,
	"readOnly": true, "writeOnly": true, "$anchor": true, "contentMediaType": true,
	"contentEncoding": true, "strict": true, "name": true,
	// OpenAPI's (pydantic writes it beside oneOf): names the property that
	// tells branches apart, which oneOf's own proof finds by itself.
	"discriminator": true,
}

func hasConstraints(s *jv, except ...string) bool {
	for _, k := range s.keys {
		if !annotations[k] && !slices.Contains(except, k) {
			return true
		}
	}
	return false
}

func without(s *jv, key string) *jv {
	out := &jv{kind: 'o'}
	for i, k := range s.keys {
		if k != key {
			out.keys = append(out.keys, k)
			out.vals = append(out.vals, s.vals[i])
		}
	}
	return out
}

// merge combines two object schemas for allOf and for a sibling of
// anyOf: properties merge (b's schema wins for a shared name; an allOf
// that constrains one property twice is not intersected), required lists
// join, other keywords take b's value when both have one.
func merge(a, b *jv) *jv {
	out := &jv{kind: 'o', keys: slices.Clone(a.keys), vals: slices.Clone(a.vals)}
	for i, k := range b.keys {
		v := b.vals[i]
		j := out.index(k)
		if j < 0 {
			out.keys = append(out.keys, k)
			out.vals = append(out.vals, v)
			continue
		}
		old := out.vals[j]
		switch {
		case k == "required" && old.kind == 'a' && v.kind == 'a':
			m := &jv{kind: 'a', arr: slices.Clone(old.arr)}
			for _, x := range v.arr {
				if !slices.ContainsFunc(m.arr, func(y *jv) bool { return y.kind == 's' && x.kind == 's' && y.str == x.str }) {
					m.arr = append(m.arr, x)
				}
			}
			out.vals[j] = m
		case k == "properties" && old.kind == 'o' && v.kind == 'o':
			out.vals[j] = merge(old, v)
		default:
			out.vals[j] = v
		}
	}
	return out
}

// inferTypes guesses the type of a schema without "type" from its keywords;
// nil means any value.
func inferTypes(s *jv) []string {
	has := func(ks ...string) bool {
		for _, k := range ks {
			if s.get(k) != nil {
				return true
			}
		}
		return false
	}
	switch {
	case has("properties", "required", "additionalProperties", "minProperties", "maxProperties", "unevaluatedProperties"):
		return []string{"object"}
	case has("items", "prefixItems", "minItems", "maxItems", "additionalItems", "uniqueItems"):
		return []string{"array"}
	case has("minLength", "maxLength", "pattern", "format"):
		return []string{"string"}
	case has("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
		return []string{"number"}
	}
	return nil
}

// constValues returns the values const or enum allow, less those "type"
// rules out (a string schema with enum ["a", 1] admits only "a"), and a
// const only if enum lists it too; ok is false when s has neither.
func constValues(s *jv) (vals []*jv, ok bool, err error) {
	c, e := s.get("const"), s.get("enum")
	if e != nil && e.kind != 'a' {
		return nil, false, errorf(ErrSyntax, "json schema: enum must be an array")
	}
	switch {
	case c != nil && e != nil:
		if !slices.ContainsFunc(e.arr, func(x *jv) bool { return !provablyUnequal(x, c) }) {
			return nil, true, nil
		}
		vals = []*jv{c}
	case c != nil:
		vals = []*jv{c}
	case e != nil:
		vals = e.arr
	default:
		return nil, false, nil
	}
	// The listed values are generated as they are: a sibling keyword that
	// would rule some of them out is not applied, so it is refused rather
	// than silently dropped (list only the values that satisfy it).
	for _, k := range valueConstraints {
		if s.get(k) != nil {
			return nil, false, errorf(ErrUnsupported, "json schema: %s beside const/enum is not applied; list only the values that satisfy it", k)
		}
	}
	t := s.get("type")
	if t == nil {
		return vals, true, nil
	}
	var names []string
	switch t.kind {
	case 's':
		names = []string{t.str}
	case 'a':
		for _, x := range t.arr {
			if x.kind != 's' {
				return nil, false, errorf(ErrSyntax, "json schema: type list of non-strings")
			}
			names = append(names, x.str)
		}
	default:
		return nil, false, errorf(ErrSyntax, "json schema: type must be a string or an array")
	}
	var kept []*jv
	for _, v := range vals {
		for _, n := range names {
			bits, known := typeBits[n]
			if !known {
				return nil, false, errorf(ErrSyntax, "json schema: unknown type %q", n)
			}
			if valueType(v)&bits != 0 && (n != "integer" || isInteger(v)) {
				kept = append(kept, v)
				break
			}
		}
	}
	return kept, true, nil
}

// valueConstraints are the keywords that constrain a value beyond its
// type (annotations such as title or description do not).
var valueConstraints = []string{"minLength", "maxLength", "pattern", "format", "minimum", "maximum",
	"exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems", "items", "prefixItems",
	"uniqueItems", "properties", "required", "additionalProperties", "minProperties", "maxProperties"}

// isInteger reports whether a number has no fractional part (1.0 is an
// integer to JSON Schema); one too large to check counts as not.
func isInteger(v *jv) bool {
	r, ok := numberRat(v.num.String())
	return ok && r.IsInt()
}

// literal is the compact JSON text of v.
func literal(v *jv) expr {
	var sb strings.Builder
	v.encode(&sb)
	return eLit(sb.String())
}

func (c *schemaCompiler) typed(s *jv, t string, depth int) (expr, error) {
	switch t {
	case "null":
		return eLit("null"), nil
	case "boolean":
		return alt(eLit("true"), eLit("false")), nil
	case "string":
		return c.str(s)
	case "integer", "number":
		return c.number(s, t == "integer")
	case "object":
		return c.object(s, depth)
	case "array":
		return c.array(s, depth)
	}
	return nil, errorf(ErrSyntax, "json schema: unknown type %q", t)
}

func intKeyword(s *jv, k string, def int) (int, error) {
	v := s.get(k)
	if v == nil {
		return def, nil
	}
	if v.kind != 'n' {
		return 0, errorf(ErrSyntax, "json schema: %s must be a number", k)
	}
	n, err := strconv.Atoi(v.num.String())
	if err != nil || n < 0 {
		f, ferr := v.num.Float64()
		if ferr != nil || f < 0 || f != float64(int(f)) {
			return 0, errorf(ErrSyntax, "json schema: %s must be a non-negative integer", k)
		}
		n = int(f)
	}
	return n, nil
}

func (c *schemaCompiler) str(s *jv) (expr, error) {
	minL, err := intKeyword(s, "minLength", 0)
	if err != nil {
		return nil, err
	}
	maxL, err := intKeyword(s, "maxLength", -1)
	if err != nil {
		return nil, err
	}
	if maxL >= 0 && maxL < minL {
		return eNothing, nil
	}
	var parts []expr
	if minL > 0 || maxL >= 0 {
		if minL > c.b.lim.MaxRepeat || maxL > c.b.lim.MaxRepeat {
			return nil, errorf(ErrLimit, "json schema: string length bound over %d", c.b.lim.MaxRepeat)
		}
		parts = append(parts, eRep{jsonChar(), minL, maxL})
	}
	if p := s.get("pattern"); p != nil {
		if p.kind != 's' {
			return nil, errorf(ErrSyntax, "json schema: pattern must be a string")
		}
		e, err := c.pattern(p.str)
		if err != nil {
			return nil, err
		}
		parts = append(parts, e)
	}
	if f := s.get("format"); f != nil && f.kind == 's' {
		if re, ok := formats[f.str]; ok {
			e, err := parseRegex(re, c.b.lim)
			if err != nil {
				return nil, err
			}
			parts = append(parts, e)
		}
	}
	if len(parts) == 0 {
		return jsonString(0, -1), nil
	}
	body := parts[0]
	for _, p := range parts[1:] {
		body = eAnd{body, p}
	}
	return seq(eLit(`"`), body, eLit(`"`)), nil
}

// pattern is the contents of a JSON string whose decoded value contains
// a match of re (ECMA-262 patterns are searched, not fully matched).
func (c *schemaCompiler) pattern(re string) (expr, error) {
	p, err := syntaxParse(re)
	if err != nil {
		return nil, err
	}
	return anchoredExpr(p, jsonChar(), jsonEscaped, c.b.lim)
}

// formats are regexes for the string formats we generate; the values are
// always valid (days past 28 only in months that have them; February 29
// never, whatever the year).
var formats = map[string]string{
	"date":      `[0-9]{4}-` + monthDay,
	"time":      timeRE,
	"date-time": `[0-9]{4}-` + monthDay + `T` + timeRE,
	"uuid":      `[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}`,
	"ipv4":      `(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])`,
	"email":     `[a-zA-Z0-9_+-]{1,16}(?:\.[a-zA-Z0-9_+-]{1,15}){0,2}@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,30}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,30}[a-zA-Z0-9])?){0,3}\.[a-zA-Z]{2,8}`,
}

const (
	monthDay = `(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)`
	timeRE   = `(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])`
)

// jsonEscaped maps a pattern over characters to the JSON string text that
// encodes them: characters JSON must escape appear in escaped form.
func jsonEscaped(e expr) expr {
	switch x := e.(type) {
	case eSeq:
		out := make(eSeq, len(x))
		for i, p := range x {
			out[i] = jsonEscaped(p)
		}
		return out
	case eAlt:
		out := make(eAlt, len(x))
		for i, p := range x {
			out[i] = jsonEscaped(p)
		}
		return out
	case eRep:
		return eRep{jsonEscaped(x.e), x.min, x.max}
	case eLit:
		var sb strings.Builder
		for _, r := range string(x) {
			sb.WriteString(escapeRune(r))
		}
		return eLit(sb.String())
	case eClass:
		if x.bytes {
			return x
		}
		safe := eClass{ranges: intersectRanges(x.ranges, jsonRawChars().ranges)}
		alts := eAlt{safe}
		for _, r := range x.ranges {
			for c := r.lo; c <= r.hi && c < 0x60; c++ {
				if c < 0x20 || c == '"' || c == '\\' {
					alts = append(alts, eLit(escapeRune(c)))
				}
			}
		}
		return alt(alts...)
	}
	// jsonChar() and other already-encoded parts.
	return e
}

func escapeRune(r rune) string {
	switch r {
	case '"':
		return `\"`
	case '\\':
		return `\\`
	case '\n':
		return `\n`
	case '\r':
		return `\r`
	case '\t':
		return `\t`
	case '\b':
		return `\b`
	case '\f':
		return `\f`
	}
	if r < 0x20 {
		return `\u00` + string("0123456789abcdef"[r>>4]) + string("0123456789abcdef"[r&15])
	}
	return string(r)
}

func intersectRanges(a, b []rrange) []rrange {
	var out []rrange
	for _, x := range a {
		for _, y := range b {
			lo, hi := max(x.lo, y.lo), min(x.hi, y.hi)
			if lo <= hi {
				out = append(out, rrange{lo, hi})
			}
		}
	}
	return normRanges(out)
}

// ---------------------------------------------------------------- numbers

// maxBoundDigits bounds the decimal size of numeric bounds.
const maxBoundDigits = 400

func ratKeyword(s *jv, k string) (*big.Rat, error) {
	v := s.get(k)
	if v == nil || v.kind != 'n' {
		if v != nil && v.kind != 'b' {
			return nil, errorf(ErrSyntax, "json schema: %s must be a number", k)
		}
		return nil, nil
	}
	// A bound like 1e999999999 would make big.Rat compute a huge power
	// and the digit automaton be as long: bound the magnitude first.
	txt := v.num.String()
	if i := strings.IndexAny(txt, "eE"); i >= 0 {
		if e, err := strconv.Atoi(strings.TrimPrefix(txt[i+1:], "+")); err != nil || e > maxBoundDigits || e < -maxBoundDigits {
			return nil, errorf(ErrLimit, "json schema: %s: %s is out of range", k, txt)
		}
	}
	if len(txt) > maxBoundDigits {
		return nil, errorf(ErrLimit, "json schema: %s: %d digits", k, len(txt))
	}
	r, ok := new(big.Rat).SetString(txt)
	if !ok {
		return nil, errorf(ErrSyntax, "json schema: %s: bad number %q", k, v.num)
	}
	return r, nil
}

// bounds reads minimum/maximum and both spellings of exclusive bounds.
func bounds(s *jv) (lo, hi *big.Rat, loEx, hiEx bool, err error) {
	if lo, err = ratKeyword(s, "minimum"); err != nil {
		return
	}
	if hi, err = ratKeyword(s, "maximum"); err != nil {
		return
	}
	if b := s.get("exclusiveMinimum"); b != nil && b.kind == 'b' {
		loEx = b.b // draft 4
	} else if x, e := ratKeyword(s, "exclusiveMinimum"); e != nil {
		return nil, nil, false, false, e
	} else if x != nil && (lo == nil || x.Cmp(lo) >= 0) {
		lo, loEx = x, true
	}
	if b := s.get("exclusiveMaximum"); b != nil && b.kind == 'b' {
		hiEx = b.b
	} else if x, e := ratKeyword(s, "exclusiveMaximum"); e != nil {
		return nil, nil, false, false, e
	} else if x != nil && (hi == nil || x.Cmp(hi) <= 0) {
		hi, hiEx = x, true
	}
	return
}

func (c *schemaCompiler) number(s *jv, integer bool) (expr, error) {
	m, err := ratKeyword(s, "multipleOf")
	if err != nil {
		return nil, err
	}
	if m != nil && m.Sign() <= 0 {
		return nil, errorf(ErrSyntax, "json schema: multipleOf must be positive")
	}
	e, err := c.numberRange(s, integer, m != nil)
	if err != nil || m == nil {
		return e, err
	}
	if integer && m.IsInt() && m.Num().IsInt64() && m.Num().Int64() == 1 {
		return e, nil
	}
	d, err := multipleDFA(m)
	if err != nil {
		return nil, err
	}
	return eAnd{e, eDFA{d}}, nil
}

// numberRange is the numbers within the schema's bounds; exponents only
// when unbounded and no multipleOf applies.
func (c *schemaCompiler) numberRange(s *jv, integer, noExp bool) (expr, error) {
	lo, hi, loEx, hiEx, err := bounds(s)
	if err != nil {
		return nil, err
	}
	if lo == nil && hi == nil {
		switch {
		case integer:
			return jsonInteger(), nil
		case !noExp:
			return jsonNumber(), nil
		}
	}
	if integer {
		// Integer bounds: ceil of the minimum, floor of the maximum.
		var l, h *big.Int
		if lo != nil {
			l = ceilRat(lo)
			if loEx && lo.IsInt() {
				l.Add(l, big.NewInt(1))
			}
		}
		if hi != nil {
			h = floorRat(hi)
			if hiEx && hi.IsInt() {
				h.Sub(h, big.NewInt(1))
			}
		}
		if l != nil && h != nil && l.Cmp(h) > 0 {
			return eNothing, nil
		}
		return intRange(l, h), nil
	}
	return decimalRange(lo, hi, loEx, hiEx), nil
}

// maxMultipleStates bounds the remainder automaton of multipleOf.
const maxMultipleStates = 20000

// multipleDFA accepts decimals (optional sign, digits, optional fraction,
// no exponent; leading zeros are left to the range it is intersected
// with) that are multiples of m = p/10^k: the digits, fraction included,
// read as one integer N with j fraction digits, must have N*10^(k-j)
// divisible by p. States track N mod p and j; past k fraction digits only
// zeros may follow.
func multipleDFA(m *big.Rat) (*dfa, error) {
	k := 0
	scaled := new(big.Rat).Set(m)
	ten := big.NewRat(10, 1)
	for !scaled.IsInt() {
		if k >= 18 {
			return nil, errorf(ErrUnsupported, "json schema: multipleOf %s has too many decimals", m.RatString())
		}
		scaled.Mul(scaled, ten)
		k++
	}
	if !scaled.Num().IsInt64() || scaled.Num().Int64() > maxMultipleStates || int(scaled.Num().Int64())*(k+2) > maxMultipleStates {
		return nil, errorf(ErrUnsupported, "json schema: multipleOf %s needs too large an automaton", m.RatString())
	}
	p := int(scaled.Num().Int64())
	pow := make([]int, k+1) // 10^i mod p
	pow[0] = 1 % p
	for i := 1; i <= k; i++ {
		pow[i] = pow[i-1] * 10 % p
	}
	// State numbering: 0 start, 1 after "-", then int(r), frac(r, j) for
	// j = 0..k, zeros(r).
	intS := func(r int) int32 { return int32(2 + r) }
	fracS := func(r, j int) int32 { return int32(2 + p + j*p + r) }
	zeroS := func(r int) int32 { return int32(2 + p + (k+1)*p + r) }
	n := 2 + p + (k+1)*p + p
	d := &dfa{st: make([]dstate, n)}
	digitMoves := func(to func(dg int) int32) []bedge {
		out := make([]bedge, 0, 10)
		for dg := 0; dg < 10; dg++ {
			if t := to(dg); t >= 0 {
				out = append(out, bedge{byte('0' + dg), byte('0' + dg), t})
			}
		}
		return out
	}
	first := digitMoves(func(dg int) int32 { return intS(dg % p) })
	d.st[0].ranges = append([]bedge{{'-', '-', 1}}, first...)
	d.st[1].ranges = first
	for r := 0; r < p; r++ {
		d.st[intS(r)].ranges = append(digitMoves(func(dg int) int32 { return intS((10*r + dg) % p) }), bedge{})
		copy(d.st[intS(r)].ranges[1:], d.st[intS(r)].ranges)
		d.st[intS(r)].ranges[0] = bedge{'.', '.', fracS(r, 0)}
		d.st[intS(r)].final = r*pow[k]%p == 0
		for j := 0; j <= k; j++ {
			st := &d.st[fracS(r, j)]
			if j < k {
				st.ranges = digitMoves(func(dg int) int32 { return fracS((10*r+dg)%p, j+1) })
			} else {
				st.ranges = []bedge{{'0', '0', zeroS(r)}}
			}
			st.final = j > 0 && r*pow[k-j]%p == 0
		}
		d.st[zeroS(r)].ranges = []bedge{{'0', '0', zeroS(r)}}
		d.st[zeroS(r)].final = r == 0
	}
	d.trim(nil)
	return d.minimize(), nil
}

func ceilRat(r *big.Rat) *big.Int {
	q, m := new(big.Int).DivMod(r.Num(), r.Denom(), new(big.Int))
	if m.Sign() != 0 {
		q.Add(q, big.NewInt(1))
	}
	return q
}

func floorRat(r *big.Rat) *big.Int {
	q, _ := new(big.Int).DivMod(r.Num(), r.Denom(), new(big.Int)) // Euclidean: floor for positive divisors
	return q
}

// intRange is the integers in [lo, hi] (nil: unbounded) written without
// leading zeros: a digit automaton, exact for any magnitude.
func intRange(lo, hi *big.Int) expr {
	var alts eAlt
	zero, minusOne := big.NewInt(0), big.NewInt(-1)
	if hi == nil || hi.Sign() >= 0 {
		a := zero
		if lo != nil && lo.Sign() > 0 {
			a = lo
		}
		if hi == nil || a.Cmp(hi) <= 0 {
			alts = append(alts, digitsRange(a, hi))
		}
	}
	if lo == nil || lo.Sign() < 0 {
		top := minusOne
		if hi != nil && hi.Cmp(minusOne) < 0 {
			top = hi
		}
		if lo == nil || lo.Cmp(top) <= 0 {
			var mag *big.Int
			if lo != nil {
				mag = new(big.Int).Neg(lo)
			}
			alts = append(alts, seq(eLit("-"), digitsRange(new(big.Int).Neg(top), mag)))
		}
	}
	return alt(alts...)
}

// decimalRange is the decimals (no exponent) between lo and hi (nil:
// unbounded; each inclusive or exclusive), exactly: a sign, then the
// magnitude compared digit by digit with the bound's decimal expansion
// (intersections and exclusions of those automata).
func decimalRange(lo, hi *big.Rat, loEx, hiEx bool) expr {
	var alts eAlt
	// x >= 0.
	var nonneg expr = magnitude()
	ok := true
	if lo != nil && (lo.Sign() > 0 || (lo.Sign() == 0 && loEx)) {
		nonneg = eAnd{nonneg, magCmp(lo, true, loEx)}
	}
	if hi != nil {
		if hi.Sign() < 0 || (hi.Sign() == 0 && hiEx) {
			ok = false
		} else {
			nonneg = eAnd{nonneg, magCmp(hi, false, hiEx)}
		}
	}
	if ok {
		alts = append(alts, nonneg)
	}
	// x < 0, written "-" and a magnitude above zero.
	var neg expr = eDiff{magnitude(), zeroMagnitude()}
	ok = true
	if lo != nil {
		if lo.Sign() >= 0 {
			ok = false
		} else {
			neg = eAnd{neg, magCmp(new(big.Rat).Neg(lo), false, loEx)}
		}
	}
	if hi != nil && hi.Sign() < 0 {
		neg = eAnd{neg, magCmp(new(big.Rat).Neg(hi), true, hiEx)}
	}
	if ok {
		alts = append(alts, seq(eLit("-"), neg))
	}
	return alt(alts...)
}

// magnitude is an unsigned decimal without exponent.
func magnitude() expr {
	return seq(alt(eLit("0"), seq(chars(rrange{'1', '9'}), digits(0, -1))), opt(seq(eLit("."), digits(1, -1))))
}

func zeroMagnitude() expr { return seq(eLit("0"), opt(seq(eLit("."), plus(eLit("0"))))) }

// magCmp is the magnitudes >= r (geq) or <= r, strictly if strict; r >= 0
// has a finite decimal expansion (it came from a JSON number).
func magCmp(r *big.Rat, geq, strict bool) expr {
	a, b, _ := strings.Cut(r.FloatString(2*maxBoundDigits), ".")
	b = strings.TrimRight(b, "0")
	ai, _ := new(big.Int).SetString(a, 10)
	frac := opt(seq(eLit("."), digits(1, -1)))
	var base eAlt
	if geq {
		base = eAlt{seq(digitsRange(new(big.Int).Add(ai, big.NewInt(1)), nil), frac), seq(eLit(a), fracGeq(b))}
	} else {
		if ai.Sign() > 0 {
			base = append(base, seq(digitsRange(big.NewInt(0), new(big.Int).Sub(ai, big.NewInt(1))), frac))
		}
		base = append(base, seq(eLit(a), fracLeq(b)))
	}
	if !strict {
		return base
	}
	// The bound itself, however many zeros trail it.
	var equal expr = seq(eLit(a), opt(seq(eLit("."), plus(eLit("0")))))
	if b != "" {
		equal = seq(eLit(a+"."+b), star(eLit("0")))
	}
	return eDiff{base, equal}
}

// fracGeq: the fraction part (with its point, or none) of numbers whose
// fraction is >= 0.b.
func fracGeq(b string) expr {
	frac := opt(seq(eLit("."), digits(1, -1)))
	if b == "" {
		return frac
	}
	var alts eAlt
	for k := 0; k < len(b); k++ {
		if b[k] < '9' {
			alts = append(alts, seq(eLit(b[:k]), chars(rrange{rune(b[k]) + 1, '9'}), digits(0, -1)))
		}
	}
	alts = append(alts, seq(eLit(b), digits(0, -1)))
	return seq(eLit("."), alts)
}

// fracLeq: the fraction part (or none) of numbers whose fraction is
// <= 0.b.
func fracLeq(b string) expr {
	if b == "" {
		return opt(seq(eLit("."), plus(eLit("0"))))
	}
	alts := eAlt{seq(eLit(b), star(eLit("0")))}
	for k := 0; k < len(b); k++ {
		if b[k] > '0' {
			alts = append(alts, seq(eLit(b[:k]), chars(rrange{'0', rune(b[k]) - 1}), digits(0, -1)))
		}
		if k > 0 {
			alts = append(alts, eLit(b[:k]))
		}
	}
	return opt(seq(eLit("."), alts))
}

// digitsRange is the canonical decimals of the integers in [a, b], a >= 0,
// b nil for unbounded.
func digitsRange(a, b *big.Int) expr {
	var alts eAlt
	if a.Sign() == 0 {
		alts = append(alts, eLit("0"))
		a = big.NewInt(1)
	}
	if b != nil && a.Cmp(b) > 0 {
		return alt(alts...)
	}
	as := a.String()
	if b == nil {
		alts = append(alts, sameLen(as, strings.Repeat("9", len(as))))
		alts = append(alts, seq(chars(rrange{'1', '9'}), digits(len(as), -1)))
		return alt(alts...)
	}
	bs := b.String()
	for n := len(as); n <= len(bs); n++ {
		lo, hi := "1"+strings.Repeat("0", n-1), strings.Repeat("9", n)
		if n == len(as) {
			lo = as
		}
		if n == len(bs) {
			hi = bs
		}
		alts = append(alts, sameLen(lo, hi))
	}
	return alt(alts...)
}

// sameLen is the digit strings of x's length between x and y.
func sameLen(x, y string) expr {
	n := len(x)
	if n == 0 {
		return eEmpty
	}
	if strings.Trim(x, "0") == "" && strings.Trim(y, "9") == "" {
		return digits(n, n)
	}
	if x[0] == y[0] {
		return seq(eLit(x[:1]), sameLen(x[1:], y[1:]))
	}
	alts := eAlt{seq(eLit(x[:1]), sameLen(x[1:], strings.Repeat("9", n-1)))}
	if y[0]-x[0] > 1 {
		alts = append(alts, seq(chars(rrange{rune(x[0]) + 1, rune(y[0]) - 1}), digits(n-1, n-1)))
	}
	alts = append(alts, seq(eLit(y[:1]), sameLen(strings.Repeat("0", n-1), y[1:])))
	return alts
}

// ----------------------------------------------------------------- objects

func (c *schemaCompiler) object(s *jv, depth int) (expr, error) {
	var names []string
	var schemas []*jv
	if p := s.get("properties"); p != nil {
		if p.kind != 'o' {
			return nil, errorf(ErrSyntax, "json schema: properties must be an object")
		}
		names, schemas = slices.Clone(p.keys), slices.Clone(p.vals)
	}
	required := map[string]bool{}
	if r := s.get("required"); r != nil {
		if r.kind != 'a' {
			return nil, errorf(ErrSyntax, "json schema: required must be an array")
		}
		for _, x := range r.arr {
			if x.kind != 's' {
				return nil, errorf(ErrSyntax, "json schema: required must list strings")
			}
			required[x.str] = true
			if !slices.Contains(names, x.str) {
				names = append(names, x.str)
				schemas = append(schemas, &jv{kind: 'b', b: true})
			}
		}
	}
	// Extra properties: a schema, or nil for none.
	var extra *jv = &jv{kind: 'b', b: true}
	ap := s.get("additionalProperties")
	if ap == nil {
		ap = s.get("unevaluatedProperties")
	}
	if ap != nil {
		if ap.kind == 'b' && !ap.b {
			extra = nil
		} else {
			extra = ap
		}
	}
	if c.strict {
		extra = nil
	}
	nreq := 0
	for _, n := range names {
		if required[n] {
			nreq++
		}
	}
	minP, err := intKeyword(s, "minProperties", 0)
	if err != nil {
		return nil, err
	}
	maxP, err := intKeyword(s, "maxProperties", -1)
	if err != nil {
		return nil, err
	}
	if minP > nreq || (maxP >= 0 && (extra != nil || maxP < len(names))) {
		return nil, errorf(ErrUnsupported, "json schema: minProperties/maxProperties beyond what required and properties imply")
	}
	items := make([]listItem, 0, len(names)+1)
	for i, n := range names {
		v, err := c.schema(schemas[i], depth+1)
		if err != nil {
			return nil, err
		}
		var key strings.Builder
		encodeString(&key, n)
		min := 0
		if required[n] {
			min = 1
		}
		items = append(items, listItem{seq(eLit(key.String()), c.j.colon(), v), min, 1})
	}
	if extra != nil {
		v, err := c.schema(extra, depth+1)
		if err != nil {
			return nil, err
		}
		// Extra keys are unescaped strings other than the listed names,
		// so an extra member can never repeat a listed one.
		key := expr(seq(eLit(`"`), star(jsonRawChars()), eLit(`"`)))
		if len(names) > 0 {
			lits := make(eAlt, len(names))
			for i, n := range names {
				var sb strings.Builder
				encodeString(&sb, n)
				lits[i] = eLit(sb.String())
			}
			key = eDiff{key, lits}
		}
		items = append(items, listItem{seq(key, c.j.colon(), v), 0, -1})
	}
	body := eList{items: items, sep: c.j.comma(), nonEmpty: true}
	if nreq > 0 {
		return seq(eLit("{"), c.j.ws(), body, c.j.ws(), eLit("}")), nil
	}
	return c.j.object_(body), nil
}

// ------------------------------------------------------------------ arrays

func (c *schemaCompiler) array(s *jv, depth int) (expr, error) {
	minI, err := intKeyword(s, "minItems", 0)
	if err != nil {
		return nil, err
	}
	maxI, err := intKeyword(s, "maxItems", -1)
	if err != nil {
		return nil, err
	}
	if maxI >= 0 && maxI < minI {
		return eNothing, nil
	}
	if minI > c.b.lim.MaxRepeat || maxI > c.b.lim.MaxRepeat {
		return nil, errorf(ErrLimit, "json schema: item count bound over %d", c.b.lim.MaxRepeat)
	}
	var prefix []*jv
	rest := s.get("items")
	if p := s.get("prefixItems"); p != nil && p.kind == 'a' {
		prefix = p.arr
	} else if rest != nil && rest.kind == 'a' {
		prefix, rest = rest.arr, s.get("additionalItems")
	}
	if rest == nil {
		rest = &jv{kind: 'b', b: true}
	}
	if u := s.get("uniqueItems"); u != nil && u.kind != 'b' {
		return nil, errorf(ErrSyntax, "json schema: uniqueItems must be a boolean")
	} else if u != nil && u.b {
		most := maxI
		if rest.kind == 'b' && !rest.b && (most < 0 || most > len(prefix)) {
			most = len(prefix)
		}
		// Arrays of at most one item are unique as they are.
		if most < 0 || most > 1 {
			return c.distinctItems(prefix, rest, minI, maxI, depth)
		}
	}
	var restE expr
	if !(rest.kind == 'b' && !rest.b) {
		if restE, err = c.schema(rest, depth+1); err != nil {
			return nil, err
		}
	}
	if len(prefix) == 0 {
		if restE == nil {
			if minI > 0 {
				return eNothing, nil
			}
			return seq(eLit("["), c.j.ws(), eLit("]")), nil
		}
		body := eList{items: []listItem{{restE, minI, maxI}}, sep: c.j.comma(), nonEmpty: true}
		if minI > 0 {
			return seq(eLit("["), c.j.ws(), body, c.j.ws(), eLit("]")), nil
		}
		return c.j.array_(body), nil
	}
	if maxI >= 0 && len(prefix) > maxI {
		prefix = prefix[:maxI]
	}
	k := len(prefix)
	// tail(i): items from position i on, each after a separator.
	var tail expr = eEmpty
	if restE != nil && (maxI < 0 || maxI > k) {
		hi := -1
		if maxI >= 0 {
			hi = maxI - k
		}
		tail = eRep{seq(c.j.comma(), restE), max(minI-k, 0), hi}
	} else if minI > k {
		return eNothing, nil
	}
	pe := make([]expr, k)
	for i := range prefix {
		if pe[i], err = c.schema(prefix[i], depth+1); err != nil {
			return nil, err
		}
	}
	for i := k - 1; i >= 1; i-- {
		t := seq(c.j.comma(), pe[i], tail)
		if i >= minI {
			t = opt(t)
		}
		tail = t
	}
	first := seq(pe[0], tail)
	full := seq(eLit("["), c.j.ws(), first, c.j.ws(), eLit("]"))
	if minI == 0 {
		return alt(seq(eLit("["), c.j.ws(), eLit("]")), full), nil
	}
	return full, nil
}

// maxItemValues bounds the item values read before removing duplicates.
const maxItemValues = 4096

// maxDistinctSubsets bounds the rules of a uniqueItems array: one per set
// of items that can have been used. 1024 (10 values in any order) compiles
// in about 0.4 s on a slow core, well inside CompileTimeout.
const maxDistinctSubsets = 1024

// distinctItems is a uniqueItems array of items drawn from a finite list
// (const or enum items). After each item the grammar is in the rule of the
// set used so far, so it needs a rule per subset rather than per ordering.
// Other uniqueItems arrays cannot be a grammar: the items seen so far are
// unbounded state, and a token mask computed per automaton state could not
// depend on them.
func (c *schemaCompiler) distinctItems(prefix []*jv, items *jv, minI, maxI, depth int) (expr, error) {
	unsupported := errorf(ErrUnsupported, "json schema: uniqueItems is enforced only for arrays of at most one item (maxItems 1) or of items from a const/enum list")
	if len(prefix) > 0 {
		return nil, unsupported
	}
	// Compiling the items reports what is wrong with them first.
	if _, err := c.schema(items, depth+1); err != nil {
		return nil, err
	}
	c.proofSteps = maxProofSteps
	vals, ok := c.itemValues(items, 0)
	switch {
	case len(vals) > maxItemValues:
		return nil, errorf(ErrLimit, "json schema: uniqueItems over more than %d item values", maxItemValues)
	case !ok:
		return nil, unsupported
	}
	// Equal values (1 and 1.0) are one item: generate the first spelling.
	seen := map[string]bool{}
	var lits []expr
	for _, v := range vals {
		k, ok := canonicalKey(v)
		if !ok {
			return nil, unsupported
		}
		if !seen[k] {
			seen[k] = true
			lits = append(lits, literal(v))
		}
	}
	n := len(lits)
	if maxI < 0 || maxI > n {
		maxI = n
	}
	if minI > maxI {
		return eNothing, nil
	}
	if n > 64 {
		return nil, errorf(ErrLimit, "json schema: uniqueItems over %d distinct item values (at most 64)", n)
	}
	subsets, binom := 0, 1
	for size := 0; size <= maxI; size++ {
		if subsets += binom; subsets > maxDistinctSubsets {
			return nil, errorf(ErrLimit, "json schema: uniqueItems over %d item values with maxItems %d needs more than %d item sets; lower maxItems", n, maxI, maxDistinctSubsets)
		}
		binom = binom * (n - size) / (size + 1)
	}
	rules := map[uint64]int{}
	var rule func(used uint64, size int) (expr, error)
	rule = func(used uint64, size int) (expr, error) {
		if id, ok := rules[used]; ok {
			return eRef(id), nil
		}
		if len(c.j.rs.bodies) >= c.b.lim.MaxRules {
			return nil, errorf(ErrLimit, "more than %d rules", c.b.lim.MaxRules)
		}
		id := c.j.rs.add("unique items", nil)
		rules[used] = id
		var alts eAlt
		if size >= minI {
			if size == 0 {
				alts = append(alts, eLit("]")) // the whitespace after "[" is taken
			} else {
				alts = append(alts, seq(c.j.ws(), eLit("]")))
			}
		}
		if size < maxI {
			var items eAlt
			for i, lit := range lits {
				if used&(1<<i) != 0 {
					continue
				}
				next, err := rule(used|1<<i, size+1)
				if err != nil {
					return nil, err
				}
				items = append(items, seq(lit, next))
			}
			// One separator before the choice keeps each rule's automaton small.
			if size == 0 {
				alts = append(alts, items)
			} else {
				alts = append(alts, seq(c.j.comma(), items))
			}
		}
		c.j.rs.bodies[id] = alt(alts...)
		return eRef(id), nil
	}
	first, err := rule(0, 0)
	if err != nil {
		return nil, err
	}
	return seq(eLit("["), c.j.ws(), first), nil
}

// itemValues returns the values an items schema is compiled to when they
// are a finite list: const or enum, or branches that each have one.
// The walk stops past maxItemValues values (distinctItems reports it) or
// when the proof budget is spent.
func (c *schemaCompiler) itemValues(s *jv, depth int) ([]*jv, bool) {
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
	if bs, ok := c.branches(s); ok {
		var out []*jv
		for _, b := range bs {
			vs, ok := c.itemValues(b, depth+1)
			out = append(out, vs...)
			if !ok || len(out) > maxItemValues {
				return out, false
			}
		}
		return out, true
	}
	vals, ok, err := constValues(s)
	return vals, ok && err == nil
}
