package grammar

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Lark-style EBNF, the subset vLLM's grammar option takes for Lark
// grammars: rules `name: ...` (lowercase; ?/! prefixes and priorities
// accepted and ignored), terminals `NAME: ...` (uppercase; may use other
// terminals, not rules), alternatives with | (also at the start of
// continuation lines), "literal" and "literal"i, /regex/ with flags i s m,
// "a".."z" ranges, ( ), [ ] and ? for optional, * +, ~n and ~n..m,
// `-> alias` (ignored), // comments, %import common.NAME (and
// %import common (A, B)) for lark's common terminals, and %ignore of
// terminals or literals. Generation starts at rule `start`.
//
// Lark lexes before it parses; we match characters directly, placing the
// ignored terminals (any number of them) before every terminal a rule uses
// and at the end of the output, so they may appear exactly where Lark's
// lexer skips them. Not supported: %declare, %override, %extend,
// templates, imports from other grammars, lookarounds in regexes.

type larkParser struct {
	src  string
	pos  int
	rs   *ruleSet
	lim  Limits
	ids  map[string]int // rule name -> rule
	def  map[string]bool
	used map[string]int // rule name -> position of a first use

	depth     int                 // open ( and [: line breaks are blanks there
	terms     map[string]larkTerm // terminal definitions (unexpanded)
	termCache map[string]expr
	expanding map[string]bool
	ignore    []larkItem
}

type larkTerm struct {
	body larkItem
	pos  int
}

// larkItem is an expansion parsed before terminals are resolved: Lark
// allows using a terminal before its definition.
type larkItem struct {
	kind  byte // 'l' literal, 'r' regex, 'n' name, 's' seq, 'a' alt, 'R' repeat, 'c' range
	text  string
	fold  bool
	subs  []larkItem
	min   int
	max   int
	lo    rune
	hi    rune
	at    int
	flags string
}

func parseLark(rs *ruleSet, src string, lim Limits) error {
	p := &larkParser{src: src, rs: rs, lim: lim, ids: map[string]int{}, def: map[string]bool{},
		used: map[string]int{}, terms: map[string]larkTerm{}, termCache: map[string]expr{}, expanding: map[string]bool{}}
	p.ruleID("start")
	var ruleBodies []struct {
		id   int
		body larkItem
	}
	for {
		p.space(true)
		if p.pos >= len(p.src) {
			break
		}
		if p.src[p.pos] == '%' {
			if err := p.directive(); err != nil {
				return err
			}
			continue
		}
		start := p.pos
		for p.pos < len(p.src) && (p.src[p.pos] == '?' || p.src[p.pos] == '!') {
			p.pos++
		}
		name := p.name()
		if name == "" {
			return p.errf("expected a rule or terminal name")
		}
		if p.pos < len(p.src) && p.src[p.pos] == '.' { // priority
			p.pos++
			for p.pos < len(p.src) && (p.src[p.pos] == '-' || (p.src[p.pos] >= '0' && p.src[p.pos] <= '9')) {
				p.pos++
			}
		}
		p.space(false)
		if p.pos >= len(p.src) || p.src[p.pos] != ':' {
			return p.errf("expected : after %q", name)
		}
		p.pos++
		body, err := p.alternates()
		if err != nil {
			return err
		}
		if isTerminalName(name) {
			if _, dup := p.terms[name]; dup {
				p.pos = start
				return p.errf("terminal %s defined twice", name)
			}
			p.terms[name] = larkTerm{body, start}
			continue
		}
		if p.def[name] {
			p.pos = start
			return p.errf("rule %s defined twice", name)
		}
		p.def[name] = true
		ruleBodies = append(ruleBodies, struct {
			id   int
			body larkItem
		}{p.ruleID(name), body})
	}
	if !p.def["start"] {
		return errorf(ErrSyntax, "lark grammar: no start rule")
	}
	var ign expr = eEmpty
	if len(p.ignore) > 0 {
		alts := make(eAlt, 0, len(p.ignore))
		for _, it := range p.ignore {
			e, err := p.terminal(it)
			if err != nil {
				return err
			}
			alts = append(alts, e)
		}
		ign = star(alts)
	}
	for _, rb := range ruleBodies {
		e, err := p.ruleExpr(rb.body, ign)
		if err != nil {
			return err
		}
		if rb.id == 0 {
			e = seq(e, ign)
		}
		rs.bodies[rb.id] = e
	}
	for name, at := range p.used {
		if !p.def[name] {
			p.pos = at
			return p.errf("undefined rule %s", name)
		}
	}
	if len(rs.bodies) > p.lim.MaxRules {
		return errorf(ErrLimit, "lark grammar: more than %d rules", p.lim.MaxRules)
	}
	return nil
}

func isTerminalName(n string) bool {
	t := strings.TrimLeft(n, "_")
	return t != "" && strings.ToUpper(t) == t && t[0] >= 'A' && t[0] <= 'Z'
}

func (p *larkParser) errf(format string, args ...any) error {
	line := 1 + strings.Count(p.src[:min(p.pos, len(p.src))], "\n")
	return errorf(ErrSyntax, "lark grammar: line %d: "+format, append([]any{line}, args...)...)
}

func (p *larkParser) ruleID(name string) int {
	if id, ok := p.ids[name]; ok {
		return id
	}
	id := p.rs.add(name, nil)
	p.ids[name] = id
	return id
}

// space skips blanks and comments; line breaks too when nl is set, or when
// the next line continues the expansion with |.
func (p *larkParser) space(nl bool) {
	nl = nl || p.depth > 0
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			p.pos++
		case strings.HasPrefix(p.src[p.pos:], "//"):
			for p.pos < len(p.src) && p.src[p.pos] != '\n' {
				p.pos++
			}
		case c == '\n':
			if nl {
				p.pos++
				continue
			}
			// A continuation line starts with |.
			j := p.pos + 1
			for j < len(p.src) && (p.src[j] == ' ' || p.src[j] == '\t' || p.src[j] == '\r' || p.src[j] == '\n') {
				j++
			}
			if j < len(p.src) && p.src[j] == '|' {
				p.pos = j
				continue
			}
			return
		default:
			return
		}
	}
}

func (p *larkParser) name() string {
	start := p.pos
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		if c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (p.pos > start && c >= '0' && c <= '9') {
			p.pos++
			continue
		}
		break
	}
	return p.src[start:p.pos]
}

func (p *larkParser) directive() error {
	end := strings.IndexByte(p.src[p.pos:], '\n')
	if end < 0 {
		end = len(p.src) - p.pos
	}
	line := strings.TrimSpace(p.src[p.pos : p.pos+end])
	if i := strings.Index(line, "//"); i >= 0 {
		line = strings.TrimSpace(line[:i])
	}
	switch {
	case strings.HasPrefix(line, "%import"):
		arg := strings.TrimSpace(strings.TrimPrefix(line, "%import"))
		var names []string
		if mod, list, ok := strings.Cut(arg, "("); ok {
			if strings.TrimSpace(mod) != "common" {
				return errorf(ErrUnsupported, "lark grammar: %%import from %q (only common)", strings.TrimSpace(mod))
			}
			for _, n := range strings.Split(strings.TrimSuffix(strings.TrimSpace(list), ")"), ",") {
				names = append(names, strings.TrimSpace(n))
			}
		} else {
			mod, n, _ := strings.Cut(arg, ".")
			n, alias, _ := strings.Cut(n, "->")
			if mod != "common" {
				return errorf(ErrUnsupported, "lark grammar: %%import %q (only common)", arg)
			}
			names = []string{strings.TrimSpace(n)}
			if a := strings.TrimSpace(alias); a != "" {
				if src, ok := larkCommon[names[0]]; ok {
					p.terms[a] = larkTerm{larkItem{kind: 'r', text: src}, p.pos}
					names = nil
				}
			}
		}
		for _, n := range names {
			src, ok := larkCommon[n]
			if !ok {
				return errorf(ErrUnsupported, "lark grammar: common.%s", n)
			}
			p.terms[n] = larkTerm{larkItem{kind: 'r', text: src}, p.pos}
		}
	case strings.HasPrefix(line, "%ignore"):
		sub := &larkParser{src: strings.TrimPrefix(line, "%ignore"), lim: p.lim}
		it, err := sub.alternates()
		if err != nil {
			return err
		}
		p.ignore = append(p.ignore, it)
	default:
		return errorf(ErrUnsupported, "lark grammar: directive %q", strings.Fields(line)[0])
	}
	p.pos += end
	return nil
}

// larkCommon are lark's common.lark terminals, as RE2 regexes.
var larkCommon = map[string]string{
	"DIGIT":          `[0-9]`,
	"HEXDIGIT":       `[a-fA-F0-9]`,
	"INT":            `[0-9]+`,
	"SIGNED_INT":     `[+-]?[0-9]+`,
	"DECIMAL":        `[0-9]+\.[0-9]*|\.[0-9]+`,
	"FLOAT":          `[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?`,
	"SIGNED_FLOAT":   `[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)`,
	"NUMBER":         `[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+`,
	"SIGNED_NUMBER":  `[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)`,
	"LCASE_LETTER":   `[a-z]`,
	"UCASE_LETTER":   `[A-Z]`,
	"LETTER":         `[a-zA-Z]`,
	"WORD":           `[a-zA-Z]+`,
	"CNAME":          `[_a-zA-Z][_a-zA-Z0-9]*`,
	"ESCAPED_STRING": `"(?:[^"\\\n]|\\[^\n])*"`,
	"WS_INLINE":      `[ \t]+`,
	"WS":             `[ \t\f\r\n]+`,
	"CR":             `\r`,
	"LF":             `\n`,
	"NEWLINE":        `(?:\r?\n)+`,
	"SH_COMMENT":     `#[^\n]*`,
	"CPP_COMMENT":    `//[^\n]*`,
	"C_COMMENT":      `/\*(?:[^*]|\*+[^*/])*\*+/`,
}

func (p *larkParser) alternates() (larkItem, error) {
	var alts []larkItem
	for {
		s, err := p.sequence()
		if err != nil {
			return larkItem{}, err
		}
		alts = append(alts, s)
		p.space(false)
		if p.pos < len(p.src) && p.src[p.pos] == '|' {
			p.pos++
			continue
		}
		if len(alts) == 1 {
			return alts[0], nil
		}
		return larkItem{kind: 'a', subs: alts}, nil
	}
}

func (p *larkParser) sequence() (larkItem, error) {
	var items []larkItem
	for {
		p.space(false)
		if p.pos >= len(p.src) {
			break
		}
		c := p.src[p.pos]
		if c == '|' || c == ')' || c == ']' || (c == '\n' && p.depth == 0) {
			break
		}
		if strings.HasPrefix(p.src[p.pos:], "->") {
			p.pos += 2
			p.space(false)
			p.name()
			continue
		}
		it, err := p.atom()
		if err != nil {
			return larkItem{}, err
		}
		if it, err = p.postfix(it); err != nil {
			return larkItem{}, err
		}
		items = append(items, it)
	}
	return larkItem{kind: 's', subs: items}, nil
}

func (p *larkParser) atom() (larkItem, error) {
	at := p.pos
	switch c := p.src[p.pos]; {
	case c == '"':
		s, err := p.literal()
		if err != nil {
			return larkItem{}, err
		}
		fold := false
		if p.pos < len(p.src) && p.src[p.pos] == 'i' {
			fold = true
			p.pos++
		}
		if strings.HasPrefix(p.src[p.pos:], "..") {
			p.pos += 2
			p.space(false)
			if p.pos >= len(p.src) || p.src[p.pos] != '"' {
				return larkItem{}, p.errf("expected a literal after ..")
			}
			t, err := p.literal()
			if err != nil {
				return larkItem{}, err
			}
			lo, n1 := utf8.DecodeRuneInString(s)
			hi, n2 := utf8.DecodeRuneInString(t)
			if n1 != len(s) || n2 != len(t) || s == "" || t == "" || hi < lo {
				return larkItem{}, p.errf("bad range %q..%q", s, t)
			}
			return larkItem{kind: 'c', lo: lo, hi: hi, at: at}, nil
		}
		return larkItem{kind: 'l', text: s, fold: fold, at: at}, nil
	case c == '/':
		end := p.pos + 1
		for end < len(p.src) && p.src[end] != '/' {
			if p.src[end] == '\\' {
				end++
			}
			if end < len(p.src) && p.src[end] == '\n' {
				return larkItem{}, p.errf("unterminated regex")
			}
			end++
		}
		if end >= len(p.src) {
			return larkItem{}, p.errf("unterminated regex")
		}
		re := p.src[p.pos+1 : end]
		p.pos = end + 1
		fstart := p.pos
		for p.pos < len(p.src) && strings.IndexByte("imslux", p.src[p.pos]) >= 0 {
			p.pos++
		}
		return larkItem{kind: 'r', text: strings.ReplaceAll(re, `\/`, `/`), flags: p.src[fstart:p.pos], at: at}, nil
	case c == '(' || c == '[':
		p.pos++
		p.depth++
		it, err := p.alternates()
		p.depth--
		if err != nil {
			return larkItem{}, err
		}
		p.space(true)
		want := byte(')')
		if c == '[' {
			want = ']'
		}
		if p.pos >= len(p.src) || p.src[p.pos] != want {
			return larkItem{}, p.errf("expected %c", want)
		}
		p.pos++
		if c == '[' {
			return larkItem{kind: 'R', subs: []larkItem{it}, min: 0, max: 1}, nil
		}
		return it, nil
	case c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'):
		return larkItem{kind: 'n', text: p.name(), at: at}, nil
	}
	return larkItem{}, p.errf("unexpected %q", p.src[p.pos])
}

func (p *larkParser) literal() (string, error) {
	end := p.pos + 1
	for end < len(p.src) && p.src[end] != '"' {
		if p.src[end] == '\\' {
			end++
		}
		end++
	}
	if end >= len(p.src) {
		return "", p.errf("unterminated literal")
	}
	s, err := strconv.Unquote(p.src[p.pos : end+1])
	if err != nil {
		return "", p.errf("bad literal %s", p.src[p.pos:end+1])
	}
	p.pos = end + 1
	return s, nil
}

func (p *larkParser) postfix(it larkItem) (larkItem, error) {
	for p.pos < len(p.src) {
		switch p.src[p.pos] {
		case '?':
			it = larkItem{kind: 'R', subs: []larkItem{it}, min: 0, max: 1}
		case '*':
			it = larkItem{kind: 'R', subs: []larkItem{it}, min: 0, max: -1}
		case '+':
			it = larkItem{kind: 'R', subs: []larkItem{it}, min: 1, max: -1}
		case '~':
			p.pos++
			p.space(false)
			num := func() (int, error) {
				start := p.pos
				for p.pos < len(p.src) && p.src[p.pos] >= '0' && p.src[p.pos] <= '9' {
					p.pos++
				}
				n, err := strconv.Atoi(p.src[start:p.pos])
				if err != nil {
					return 0, p.errf("bad repetition count")
				}
				if n > p.lim.MaxRepeat {
					return 0, errorf(ErrLimit, "lark grammar: repetition %d over %d", n, p.lim.MaxRepeat)
				}
				return n, nil
			}
			lo, err := num()
			if err != nil {
				return larkItem{}, err
			}
			hi := lo
			if strings.HasPrefix(p.src[p.pos:], "..") {
				p.pos += 2
				if hi, err = num(); err != nil {
					return larkItem{}, err
				}
				if hi < lo {
					return larkItem{}, p.errf("repetition ~%d..%d", lo, hi)
				}
			}
			it = larkItem{kind: 'R', subs: []larkItem{it}, min: lo, max: hi}
			continue
		default:
			return it, nil
		}
		p.pos++
	}
	return it, nil
}

// ruleExpr translates a rule's expansion; ign goes before every terminal.
func (p *larkParser) ruleExpr(it larkItem, ign expr) (expr, error) {
	switch it.kind {
	case 'l', 'r', 'c':
		e, err := p.terminal(it)
		if err != nil {
			return nil, err
		}
		return seq(ign, e), nil
	case 'n':
		if isTerminalName(it.text) {
			e, err := p.terminal(it)
			if err != nil {
				return nil, err
			}
			return seq(ign, e), nil
		}
		if _, ok := p.used[it.text]; !ok {
			p.used[it.text] = it.at
		}
		return eRef(p.ruleID(it.text)), nil
	case 's', 'a':
		out := make([]expr, len(it.subs))
		for i, s := range it.subs {
			e, err := p.ruleExpr(s, ign)
			if err != nil {
				return nil, err
			}
			out[i] = e
		}
		if it.kind == 's' {
			return eSeq(out), nil
		}
		return eAlt(out), nil
	case 'R':
		e, err := p.ruleExpr(it.subs[0], ign)
		if err != nil {
			return nil, err
		}
		return eRep{e, it.min, it.max}, nil
	}
	panic("grammar: bad lark item")
}

// terminal translates a terminal expansion (no ignored text inside).
func (p *larkParser) terminal(it larkItem) (expr, error) {
	switch it.kind {
	case 'l':
		if !it.fold {
			return eLit(it.text), nil
		}
		var out eSeq
		for _, r := range it.text {
			out = append(out, foldClass(r))
		}
		return out, nil
	case 'c':
		return chars(rrange{it.lo, it.hi}), nil
	case 'r':
		if strings.ContainsAny(it.flags, "xlu") {
			return nil, errorf(ErrUnsupported, "lark grammar: regex flag in %q", it.flags)
		}
		src := it.text
		if it.flags != "" {
			src = "(?" + it.flags + ")" + src
		}
		return parseRegex(src, p.lim)
	case 'n':
		if !isTerminalName(it.text) {
			p.pos = it.at
			return nil, p.errf("terminal uses rule %s", it.text)
		}
		if e, ok := p.termCache[it.text]; ok {
			return e, nil
		}
		t, ok := p.terms[it.text]
		if !ok {
			p.pos = it.at
			return nil, p.errf("undefined terminal %s", it.text)
		}
		if p.expanding[it.text] {
			p.pos = t.pos
			return nil, p.errf("terminal %s is recursive", it.text)
		}
		p.expanding[it.text] = true
		e, err := p.terminal(t.body)
		p.expanding[it.text] = false
		if err != nil {
			return nil, err
		}
		p.termCache[it.text] = e
		return e, nil
	case 's', 'a':
		out := make([]expr, len(it.subs))
		for i, s := range it.subs {
			e, err := p.terminal(s)
			if err != nil {
				return nil, err
			}
			out[i] = e
		}
		if it.kind == 's' {
			return eSeq(out), nil
		}
		return eAlt(out), nil
	case 'R':
		e, err := p.terminal(it.subs[0])
		if err != nil {
			return nil, err
		}
		return eRep{e, it.min, it.max}, nil
	}
	panic("grammar: bad lark item")
}
