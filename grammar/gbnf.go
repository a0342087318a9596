package grammar

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// GBNF as llama.cpp defines it (grammars/README.md there): rules
// `name ::= alternatives`, generation starting at `root`; terminals
// "literal" and [character classes] ([^...] negated, a-z ranges) with the
// escapes \x.. \u.... \U........ \t \n \r \\ \" \[ \] \-; `.` for any
// character; grouping with ( ); postfix * + ? {m} {m,} {m,n}; # comments.
// We are more lenient about line breaks: a rule runs until the next
// `name ::=` (llama.cpp ends it at a line break outside parentheses).
// Not supported: token references (<...>, <[id]>), left recursion.

type gbnfParser struct {
	src  string
	pos  int
	rs   *ruleSet
	ids  map[string]int
	def  []bool
	used map[int]int // rule -> position of a first use
	lim  Limits
}

func parseGBNF(rs *ruleSet, src string, lim Limits) error {
	p := &gbnfParser{src: src, rs: rs, ids: map[string]int{}, used: map[int]int{}, lim: lim}
	p.rule("root")
	for {
		p.space()
		if p.pos >= len(p.src) {
			break
		}
		start := p.pos
		name := p.name()
		if name == "" {
			return p.errf("expected a rule name")
		}
		p.space()
		if !strings.HasPrefix(p.src[p.pos:], "::=") {
			return p.errf("expected ::= after %q", name)
		}
		p.pos += 3
		id := p.rule(name)
		if p.def[id] {
			p.pos = start
			return p.errf("rule %q defined twice", name)
		}
		p.def[id] = true
		body, err := p.alternates()
		if err != nil {
			return err
		}
		rs.bodies[id] = body
		if len(rs.bodies) > lim.MaxRules {
			return errorf(ErrLimit, "grammar: more than %d rules", lim.MaxRules)
		}
	}
	for id, at := range p.used {
		if !p.def[id] {
			p.pos = at
			return p.errf("undefined rule %q", rs.names[id])
		}
	}
	if !p.def[0] {
		return errorf(ErrSyntax, "grammar: no root rule")
	}
	return nil
}

func (p *gbnfParser) errf(format string, args ...any) error {
	line := 1 + strings.Count(p.src[:min(p.pos, len(p.src))], "\n")
	return errorf(ErrSyntax, "grammar: line %d: "+format, append([]any{line}, args...)...)
}

func (p *gbnfParser) rule(name string) int {
	if id, ok := p.ids[name]; ok {
		return id
	}
	id := p.rs.add(name, nil)
	p.ids[name] = id
	p.def = append(p.def, false)
	return id
}

// space skips blanks, line breaks and comments.
func (p *gbnfParser) space() {
	for p.pos < len(p.src) {
		switch c := p.src[p.pos]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			p.pos++
		case c == '#':
			for p.pos < len(p.src) && p.src[p.pos] != '\n' {
				p.pos++
			}
		default:
			return
		}
	}
}

func isNameByte(c byte) bool {
	return c == '-' || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

func (p *gbnfParser) name() string {
	start := p.pos
	for p.pos < len(p.src) && isNameByte(p.src[p.pos]) {
		p.pos++
	}
	return p.src[start:p.pos]
}

// atRuleStart reports whether `name ::=` follows.
func (p *gbnfParser) atRuleStart() bool {
	i := p.pos
	for i < len(p.src) && isNameByte(p.src[i]) {
		i++
	}
	if i == p.pos {
		return false
	}
	for i < len(p.src) && (p.src[i] == ' ' || p.src[i] == '\t') {
		i++
	}
	return strings.HasPrefix(p.src[i:], "::=")
}

func (p *gbnfParser) alternates() (expr, error) {
	var alts eAlt
	for {
		s, err := p.sequence()
		if err != nil {
			return nil, err
		}
		alts = append(alts, s)
		p.space()
		if p.pos < len(p.src) && p.src[p.pos] == '|' {
			p.pos++
			continue
		}
		return alt(alts...), nil
	}
}

func (p *gbnfParser) sequence() (expr, error) {
	var out eSeq
	for {
		p.space()
		if p.pos >= len(p.src) || p.src[p.pos] == '|' || p.src[p.pos] == ')' || p.atRuleStart() {
			return seq(out...), nil
		}
		e, err := p.element()
		if err != nil {
			return nil, err
		}
		if e, err = p.postfix(e); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
}

func (p *gbnfParser) element() (expr, error) {
	switch c := p.src[p.pos]; {
	case c == '"':
		p.pos++
		var sb strings.Builder
		for {
			if p.pos >= len(p.src) {
				return nil, p.errf("unterminated literal")
			}
			if p.src[p.pos] == '"' {
				p.pos++
				return eLit(sb.String()), nil
			}
			r, err := p.char()
			if err != nil {
				return nil, err
			}
			sb.WriteRune(r)
		}
	case c == '[':
		p.pos++
		neg := false
		if p.pos < len(p.src) && p.src[p.pos] == '^' {
			neg = true
			p.pos++
		}
		var rs []rrange
		for {
			if p.pos >= len(p.src) {
				return nil, p.errf("unterminated character class")
			}
			if p.src[p.pos] == ']' {
				p.pos++
				break
			}
			lo, err := p.char()
			if err != nil {
				return nil, err
			}
			hi := lo
			if p.pos+1 < len(p.src) && p.src[p.pos] == '-' && p.src[p.pos+1] != ']' {
				p.pos++
				if hi, err = p.char(); err != nil {
					return nil, err
				}
				if hi < lo {
					return nil, p.errf("character range %q-%q reversed", lo, hi)
				}
			}
			rs = append(rs, rrange{lo, hi})
		}
		rs = normRanges(rs)
		if neg {
			rs = negate(rs, maxRune)
		}
		return eClass{ranges: rs}, nil
	case c == '.':
		p.pos++
		return chars(rrange{0, maxRune}), nil
	case c == '(':
		p.pos++
		e, err := p.alternates()
		if err != nil {
			return nil, err
		}
		p.space()
		if p.pos >= len(p.src) || p.src[p.pos] != ')' {
			return nil, p.errf("expected )")
		}
		p.pos++
		return e, nil
	case c == '<':
		return nil, errorf(ErrUnsupported, "grammar: token references (<...>)")
	case isNameByte(c):
		at := p.pos
		id := p.rule(p.name())
		if _, ok := p.used[id]; !ok {
			p.used[id] = at
		}
		return eRef(id), nil
	}
	return nil, p.errf("unexpected %q", p.src[p.pos])
}

func (p *gbnfParser) postfix(e expr) (expr, error) {
	for p.pos < len(p.src) {
		switch p.src[p.pos] {
		case '*':
			e = star(e)
		case '+':
			e = plus(e)
		case '?':
			e = opt(e)
		case '{':
			end := strings.IndexByte(p.src[p.pos:], '}')
			if end < 0 {
				return nil, p.errf("unterminated {")
			}
			body := strings.TrimSpace(p.src[p.pos+1 : p.pos+end])
			lo, hi, found := strings.Cut(body, ",")
			m, err := strconv.Atoi(strings.TrimSpace(lo))
			if err != nil || m < 0 {
				return nil, p.errf("bad repetition {%s}", body)
			}
			n := m
			if found {
				if hs := strings.TrimSpace(hi); hs == "" {
					n = -1
				} else if n, err = strconv.Atoi(hs); err != nil || n < m {
					return nil, p.errf("bad repetition {%s}", body)
				}
			}
			if m > p.lim.MaxRepeat || n > p.lim.MaxRepeat {
				return nil, errorf(ErrLimit, "grammar: repetition {%s} over %d", body, p.lim.MaxRepeat)
			}
			e = eRep{e, m, n}
			p.pos += end
		default:
			return e, nil
		}
		p.pos++
	}
	return e, nil
}

// char reads one character of a literal or class, decoding escapes.
func (p *gbnfParser) char() (rune, error) {
	if p.src[p.pos] != '\\' {
		r, n := utf8.DecodeRuneInString(p.src[p.pos:])
		if r == utf8.RuneError && n <= 1 {
			return 0, p.errf("invalid UTF-8")
		}
		p.pos += n
		return r, nil
	}
	p.pos++
	if p.pos >= len(p.src) {
		return 0, p.errf("dangling backslash")
	}
	c := p.src[p.pos]
	p.pos++
	hex := func(n int) (rune, error) {
		if p.pos+n > len(p.src) {
			return 0, p.errf("short \\%c escape", c)
		}
		v, err := strconv.ParseUint(p.src[p.pos:p.pos+n], 16, 32)
		if err != nil || v > maxRune {
			return 0, p.errf("bad \\%c escape", c)
		}
		p.pos += n
		return rune(v), nil
	}
	switch c {
	case 'x':
		return hex(2)
	case 'u':
		return hex(4)
	case 'U':
		return hex(8)
	case 't':
		return '\t', nil
	case 'n':
		return '\n', nil
	case 'r':
		return '\r', nil
	case '\\', '"', '[', ']', '-', '^', '/', '.', '(', ')', '|', '*', '+', '?', '{', '}', '\'':
		return rune(c), nil
	}
	return 0, p.errf("unknown escape \\%c", c)
}
