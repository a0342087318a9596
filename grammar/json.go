package grammar

// JSON building blocks shared by JSON Schema and json_object mode.

// Whitespace policy. JSON allows any run of space, tab, CR and LF between
// tokens; a model under a mask whose weights favour whitespace could then
// emit it forever. Like xgrammar's and llguidance's bounded modes we allow
// what compact and pretty-printed JSON need and no more: up to wsMaxInline
// spaces or tabs between two JSON tokens; after { [ and , and before } and
// ] (and before the value) that may be followed by one line break (LF or
// CRLF) and up to wsMaxIndent spaces or tabs of indentation. That is at
// most 4+2+32 = 38 bytes in a row, whatever the model does. Line breaks
// only where pretty-printers put them also keeps the automata small.
const (
	wsMaxInline = 4
	wsMaxIndent = 32
)

type jsonCtx struct {
	rs      *ruleSet
	compact bool
	value   int // rule of any JSON value, or -1 until needed
	object  int
	array   int
}

func newJSONCtx(rs *ruleSet, compact bool) *jsonCtx {
	return &jsonCtx{rs: rs, compact: compact, value: -1, object: -1, array: -1}
}

// ws is the whitespace allowed between two JSON tokens.
func (j *jsonCtx) ws() expr {
	if j.compact {
		return eEmpty
	}
	blank := chars(rrange{' ', ' '}, rrange{'\t', '\t'})
	return seq(
		eRep{blank, 0, wsMaxInline},
		opt(seq(opt(eLit("\r")), eLit("\n"), eRep{blank, 0, wsMaxIndent})),
	)
}

// inlineWS is the whitespace allowed where no line break goes.
func (j *jsonCtx) inlineWS() expr {
	if j.compact {
		return eEmpty
	}
	return eRep{chars(rrange{' ', ' '}, rrange{'\t', '\t'}), 0, wsMaxInline}
}

// comma and colon separate array items and members, with whitespace.
func (j *jsonCtx) comma() expr { return seq(j.inlineWS(), eLit(","), j.ws()) }
func (j *jsonCtx) colon() expr { return seq(j.inlineWS(), eLit(":"), j.inlineWS()) }

// jsonChar is one character of a JSON string's contents, raw or escaped.
// \u escapes of surrogates are left out: a lone one is not a character,
// and a pair would count as two where JSON Schema lengths count one.
func jsonChar() expr {
	hex := chars(rrange{'0', '9'}, rrange{'a', 'f'}, rrange{'A', 'F'})
	hex4 := alt(
		seq(chars(rrange{'0', '9'}, rrange{'a', 'c'}, rrange{'A', 'C'}, rrange{'e', 'f'}, rrange{'E', 'F'}), hex, hex, hex),
		seq(chars(rrange{'d', 'd'}, rrange{'D', 'D'}), chars(rrange{'0', '7'}), hex, hex),
	)
	return alt(
		jsonRawChars(),
		seq(eLit(`\`), alt(chars(rrange{'"', '"'}, rrange{'\\', '\\'}, rrange{'/', '/'}, rrange{'b', 'b'}, rrange{'f', 'f'}, rrange{'n', 'n'}, rrange{'r', 'r'}, rrange{'t', 't'}), seq(eLit("u"), hex4))),
	)
}

// jsonRawChars are the characters a JSON string holds unescaped.
func jsonRawChars() eClass {
	return chars(rrange{0x20, 0x21}, rrange{0x23, 0x5B}, rrange{0x5D, maxRune})
}

// jsonString is any JSON string, or one of min..max characters (max < 0:
// unbounded).
func jsonString(min, max int) expr {
	return seq(eLit(`"`), eRep{jsonChar(), min, max}, eLit(`"`))
}

func digits(min, max int) expr { return eRep{chars(rrange{'0', '9'}), min, max} }

// jsonInteger is an integer without leading zeros (and without "-0").
func jsonInteger() expr {
	return seq(opt(eLit("-")), alt(eLit("0"), seq(chars(rrange{'1', '9'}), digits(0, -1))))
}

func jsonNumber() expr {
	return seq(
		opt(eLit("-")),
		alt(eLit("0"), seq(chars(rrange{'1', '9'}), digits(0, -1))),
		opt(seq(eLit("."), digits(1, -1))),
		opt(seq(chars(rrange{'e', 'e'}, rrange{'E', 'E'}), opt(chars(rrange{'+', '+'}, rrange{'-', '-'})), digits(1, -1))),
	)
}

// anyValue returns the (recursive) rule of any JSON value.
func (j *jsonCtx) anyValue() expr {
	if j.value < 0 {
		j.value = j.rs.add("json_value", nil)
		j.object = j.rs.add("json_object", nil)
		j.array = j.rs.add("json_array", nil)
		j.rs.bodies[j.value] = alt(eRef(j.object), eRef(j.array), jsonString(0, -1), jsonNumber(),
			eLit("true"), eLit("false"), eLit("null"))
		member := seq(jsonString(0, -1), j.colon(), eRef(j.value))
		j.rs.bodies[j.object] = j.object_(eList{items: []listItem{{member, 0, -1}}, sep: j.comma(), nonEmpty: true})
		j.rs.bodies[j.array] = j.array_(eList{items: []listItem{{eRef(j.value), 0, -1}}, sep: j.comma(), nonEmpty: true})
	}
	return eRef(j.value)
}

// anyObject returns the rule of any JSON object.
func (j *jsonCtx) anyObject() expr {
	j.anyValue()
	return eRef(j.object)
}

// object_ is "{" members "}" with whitespace, members nonEmpty.
func (j *jsonCtx) object_(members eList) expr {
	return alt(seq(eLit("{"), j.ws(), eLit("}")), seq(eLit("{"), j.ws(), members, j.ws(), eLit("}")))
}

func (j *jsonCtx) array_(items eList) expr {
	return alt(seq(eLit("["), j.ws(), eLit("]")), seq(eLit("["), j.ws(), items, j.ws(), eLit("]")))
}

// fromJSONObject is response_format json_object: any JSON object.
func fromJSONObject(rs *ruleSet, spec Spec) {
	j := newJSONCtx(rs, spec.CompactJSON)
	root := rs.add("root", nil)
	rs.bodies[root] = seq(j.ws(), j.anyObject())
}
