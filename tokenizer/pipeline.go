package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// This file holds the normalizers, pre-tokenizers, decoders and
// post-processors of tokenizer.json, each parsed from its JSON form. Errors
// name the JSON path of the offending field.

type patternJSON struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

func (p *patternJSON) get(path string) (string, bool, error) {
	switch {
	case p == nil:
		return "", false, fmt.Errorf("%w: %s.pattern: missing", ErrMalformed, path)
	case p.String != nil:
		return *p.String, false, nil
	case p.Regex != nil:
		return *p.Regex, true, nil
	}
	return "", false, fmt.Errorf("%w: %s.pattern: expected {\"String\": ...} or {\"Regex\": ...}", ErrMalformed, path)
}

type componentJSON struct {
	Type string `json:"type"`

	// Sequence
	Normalizers   []json.RawMessage `json:"normalizers"`
	PreTokenizers []json.RawMessage `json:"pretokenizers"`
	Decoders      []json.RawMessage `json:"decoders"`
	Processors    []json.RawMessage `json:"processors"`

	// Prepend, Replace, Split, Strip, Metaspace
	Prepend       string       `json:"prepend"`
	Pattern       *patternJSON `json:"pattern"`
	Content       *string      `json:"content"`
	Behavior      string       `json:"behavior"`
	Invert        bool         `json:"invert"`
	StripLeft     *bool        `json:"strip_left"`
	StripRight    *bool        `json:"strip_right"`
	Start         int          `json:"start"`
	Stop          int          `json:"stop"`
	Replacement   *string      `json:"replacement"`
	PrependScheme string       `json:"prepend_scheme"`
	Split         *bool        `json:"split"`

	// ByteLevel
	AddPrefixSpace *bool `json:"add_prefix_space"`
	UseRegex       *bool `json:"use_regex"`

	// Digits
	IndividualDigits bool `json:"individual_digits"`

	// TemplateProcessing
	Single        []templatePieceJSON            `json:"single"`
	SpecialTokens map[string]templateSpecialJSON `json:"special_tokens"`
	Sep           json.RawMessage                `json:"sep"`
	Cls           json.RawMessage                `json:"cls"`
}

type templatePieceJSON struct {
	SpecialToken *struct {
		ID string `json:"id"`
	} `json:"SpecialToken"`
	Sequence *struct {
		ID string `json:"id"`
	} `json:"Sequence"`
}

type templateSpecialJSON struct {
	ID  string `json:"id"`
	IDs []int  `json:"ids"`
}

func parseComponent(raw json.RawMessage, path string) (*componentJSON, error) {
	if isNull(raw) {
		return nil, nil
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, path, err)
	}
	if c.Type == "" {
		return nil, fmt.Errorf("%w: %s.type: missing", ErrMalformed, path)
	}
	return &c, nil
}

func isNull(raw json.RawMessage) bool {
	s := bytes.TrimSpace(raw)
	return len(s) == 0 || string(s) == "null"
}

// ---------------------------------------------------------------- normalizers

type normalizer interface {
	normalize(s string) string
}

type normSeq []normalizer

func (n normSeq) normalize(s string) string {
	for _, x := range n {
		s = x.normalize(s)
	}
	return s
}

type unicodeNorm struct{ f norm.Form }

func (u unicodeNorm) normalize(s string) string {
	// Most text is already normal; QuickSpan avoids copying it.
	if u.f.IsNormalString(s) {
		return s
	}
	return u.f.String(s)
}

type prependNorm struct{ prefix string }

func (p prependNorm) normalize(s string) string {
	if s == "" {
		return s
	}
	return p.prefix + s
}

type replaceNorm struct {
	m       matcher
	content string
}

func (r replaceNorm) normalize(s string) string {
	var sb strings.Builder
	last := 0
	_ = r.m.find(s, func(start, end int) {
		sb.WriteString(s[last:start])
		sb.WriteString(r.content)
		last = end
	})
	if last == 0 && sb.Len() == 0 {
		return s
	}
	sb.WriteString(s[last:])
	return sb.String()
}

type lowercaseNorm struct{}

func (lowercaseNorm) normalize(s string) string { return strings.ToLower(s) }

type stripNorm struct{ left, right bool }

func (st stripNorm) normalize(s string) string {
	if st.left {
		s = strings.TrimLeftFunc(s, isRustWhitespace)
	}
	if st.right {
		s = strings.TrimRightFunc(s, isRustWhitespace)
	}
	return s
}

func buildNormalizer(raw json.RawMessage, path string) (normalizer, error) {
	c, err := parseComponent(raw, path)
	if err != nil || c == nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		var seq normSeq
		for i, r := range c.Normalizers {
			n, err := buildNormalizer(r, fmt.Sprintf("%s.normalizers[%d]", path, i))
			if err != nil {
				return nil, err
			}
			if n != nil {
				seq = append(seq, n)
			}
		}
		return seq, nil
	case "NFC":
		return unicodeNorm{norm.NFC}, nil
	case "NFD":
		return unicodeNorm{norm.NFD}, nil
	case "NFKC":
		return unicodeNorm{norm.NFKC}, nil
	case "NFKD":
		return unicodeNorm{norm.NFKD}, nil
	case "Prepend":
		return prependNorm{c.Prepend}, nil
	case "Replace":
		pat, isRe, err := c.Pattern.get(path)
		if err != nil {
			return nil, err
		}
		if c.Content == nil {
			return nil, fmt.Errorf("%w: %s.content: missing", ErrMalformed, path)
		}
		m, err := newMatcher(pat, isRe)
		if err != nil {
			return nil, fmt.Errorf("%s.pattern: %w", path, err)
		}
		return replaceNorm{m, *c.Content}, nil
	case "Lowercase":
		return lowercaseNorm{}, nil
	case "Strip":
		return stripNorm{c.StripLeft != nil && *c.StripLeft, c.StripRight != nil && *c.StripRight}, nil
	}
	return nil, fmt.Errorf("%w: %s.type: normalizer %q", ErrUnsupported, path, c.Type)
}

// ------------------------------------------------------------- pre-tokenizers

// piece is a span of text on its way to the model.
type piece struct {
	s     string
	first bool // starts at offset 0 of the input (Metaspace "first")
}

type preTokenizer interface {
	// split calls emit for each piece p splits into, in order.
	split(p piece, emit func(piece)) error
}

type preSeq []preTokenizer

func (seq preSeq) split(p piece, emit func(piece)) error {
	if len(seq) == 0 {
		emit(p)
		return nil
	}
	var err error
	next := emit
	if len(seq) > 1 {
		rest := seq[1:]
		next = func(q piece) {
			if e := rest.split(q, emit); e != nil && err == nil {
				err = e
			}
		}
	}
	if e := seq[0].split(p, next); e != nil {
		return e
	}
	return err
}

type splitBehavior int

const (
	behRemoved splitBehavior = iota
	behIsolated
	behMergedWithPrevious
	behMergedWithNext
	behContiguous
)

type splitPre struct {
	m        matcher
	behavior splitBehavior
	invert   bool
}

func (sp *splitPre) split(p piece, emit func(piece)) error {
	s := p.s
	if !sp.invert && (sp.behavior == behIsolated || sp.behavior == behRemoved) {
		// Streaming fast path (the common case): no span list.
		prev := 0
		err := sp.m.find(s, func(start, end int) {
			if start > prev {
				emit(piece{s[prev:start], p.first && prev == 0})
			}
			if sp.behavior == behIsolated && end > start {
				emit(piece{s[start:end], p.first && start == 0})
			}
			prev = end
		})
		if err != nil {
			return fmt.Errorf("%w: split: %v", ErrUnsupported, err)
		}
		if prev < len(s) {
			emit(piece{s[prev:], p.first && prev == 0})
		}
		return nil
	}
	type span struct {
		start, end int
		match      bool
	}
	var spans []span
	prev := 0
	err := sp.m.find(s, func(start, end int) {
		if start > prev {
			spans = append(spans, span{prev, start, false})
		}
		spans = append(spans, span{start, end, true})
		prev = end
	})
	if err != nil {
		return fmt.Errorf("%w: split: %v", ErrUnsupported, err)
	}
	if prev < len(s) {
		spans = append(spans, span{prev, len(s), false})
	}
	if sp.invert {
		for i := range spans {
			spans[i].match = !spans[i].match
		}
	}
	var out []span
	switch sp.behavior {
	case behIsolated:
		out = spans
	case behRemoved:
		for _, x := range spans {
			if !x.match {
				out = append(out, x)
			}
		}
	case behContiguous:
		for _, x := range spans {
			if n := len(out); n > 0 && out[n-1].match == x.match {
				out[n-1].end = x.end
				continue
			}
			out = append(out, x)
		}
	case behMergedWithPrevious:
		prevMatch := false
		for _, x := range spans {
			if x.match && !prevMatch && len(out) > 0 {
				out[len(out)-1].end = x.end
			} else {
				out = append(out, x)
			}
			prevMatch = x.match
		}
	case behMergedWithNext:
		prevMatch := false
		for i := len(spans) - 1; i >= 0; i-- {
			x := spans[i]
			if x.match && !prevMatch && len(out) > 0 {
				out[len(out)-1].start = x.start
			} else {
				out = append(out, x)
			}
			prevMatch = x.match
		}
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	for _, x := range out {
		if x.end > x.start {
			emit(piece{s[x.start:x.end], p.first && x.start == 0})
		}
	}
	return nil
}

// byteLevelPre is ByteLevel: the byte mapping itself is done by the model
// (see bpeModel.initialByteLevel); here only the prefix space and regex.
type byteLevelPre struct {
	addPrefixSpace bool
	useRegex       bool
}

func (b byteLevelPre) split(p piece, emit func(piece)) error {
	if b.addPrefixSpace && !strings.HasPrefix(p.s, " ") {
		p.s = " " + p.s
	}
	if !b.useRegex {
		emit(p)
		return nil
	}
	s := p.s
	return gpt2Matcher{}.find(s, func(start, end int) {
		emit(piece{s[start:end], p.first && start == 0})
	})
}

type prependScheme int

const (
	prependAlways prependScheme = iota
	prependFirst
	prependNever
)

func parsePrependScheme(s string, addPrefixSpace *bool, path string) (prependScheme, error) {
	switch s {
	case "always":
		return prependAlways, nil
	case "first":
		return prependFirst, nil
	case "never":
		return prependNever, nil
	case "":
		// Older files: add_prefix_space true/false.
		if addPrefixSpace != nil && !*addPrefixSpace {
			return prependNever, nil
		}
		return prependAlways, nil
	}
	return 0, fmt.Errorf("%w: %s.prepend_scheme: expected always, first or never, got %q", ErrMalformed, path, s)
}

type metaspacePre struct {
	repl   string
	scheme prependScheme
	split_ bool
}

func (m metaspacePre) split(p piece, emit func(piece)) error {
	s := strings.ReplaceAll(p.s, " ", m.repl)
	switch m.scheme {
	case prependAlways:
		if !strings.HasPrefix(s, m.repl) {
			s = m.repl + s
		}
	case prependFirst:
		if p.first && !strings.HasPrefix(s, m.repl) {
			s = m.repl + s
		}
	}
	if !m.split_ {
		emit(piece{s, p.first})
		return nil
	}
	// MergedWithNext on the replacement character.
	start := 0
	for i := 0; i < len(s); {
		k := strings.Index(s[i:], m.repl)
		if k < 0 {
			break
		}
		if i+k > start {
			emit(piece{s[start : i+k], p.first && start == 0})
			start = i + k
		}
		i += k + len(m.repl)
	}
	if start < len(s) {
		emit(piece{s[start:], p.first && start == 0})
	}
	return nil
}

type digitsPre struct{ individual bool }

func (d digitsPre) split(p piece, emit func(piece)) error {
	s := p.s
	start := 0
	isDigit := func(i int) (bool, int) {
		r, size := utf8.DecodeRuneInString(s[i:])
		return isRustNumeric(r), size
	}
	for i := 0; i < len(s); {
		dg, size := isDigit(i)
		if !dg {
			i += size
			continue
		}
		if i > start {
			emit(piece{s[start:i], p.first && start == 0})
		}
		j := i + size
		if !d.individual {
			for j < len(s) {
				dg2, size2 := isDigit(j)
				if !dg2 {
					break
				}
				j += size2
			}
		}
		emit(piece{s[i:j], p.first && i == 0})
		start, i = j, j
	}
	if start < len(s) {
		emit(piece{s[start:], p.first && start == 0})
	}
	return nil
}

// buildPreTokenizer returns the pre-tokenizer and whether its output is
// ByteLevel-mapped (ByteLevel must then be the last step).
func buildPreTokenizer(raw json.RawMessage, path string) (preTokenizer, bool, error) {
	c, err := parseComponent(raw, path)
	if err != nil || c == nil {
		return nil, false, err
	}
	switch c.Type {
	case "Sequence":
		var seq preSeq
		byteLevel := false
		for i, r := range c.PreTokenizers {
			p := fmt.Sprintf("%s.pretokenizers[%d]", path, i)
			if byteLevel {
				return nil, false, fmt.Errorf("%w: %s: a pre-tokenizer after ByteLevel", ErrUnsupported, p)
			}
			pt, bl, err := buildPreTokenizer(r, p)
			if err != nil {
				return nil, false, err
			}
			byteLevel = bl
			if pt != nil {
				seq = append(seq, pt)
			}
		}
		return seq, byteLevel, nil
	case "Split":
		pat, isRe, err := c.Pattern.get(path)
		if err != nil {
			return nil, false, err
		}
		m, err := newMatcher(pat, isRe)
		if err != nil {
			return nil, false, fmt.Errorf("%s.pattern: %w", path, err)
		}
		var b splitBehavior
		switch c.Behavior {
		case "Removed":
			b = behRemoved
		case "Isolated":
			b = behIsolated
		case "MergedWithPrevious":
			b = behMergedWithPrevious
		case "MergedWithNext":
			b = behMergedWithNext
		case "Contiguous":
			b = behContiguous
		default:
			return nil, false, fmt.Errorf("%w: %s.behavior: unknown %q", ErrMalformed, path, c.Behavior)
		}
		return &splitPre{m: m, behavior: b, invert: c.Invert}, false, nil
	case "ByteLevel":
		return byteLevelPre{
			addPrefixSpace: c.AddPrefixSpace != nil && *c.AddPrefixSpace,
			useRegex:       c.UseRegex == nil || *c.UseRegex,
		}, true, nil
	case "Metaspace":
		repl := "▁"
		if c.Replacement != nil {
			repl = *c.Replacement
		}
		if utf8.RuneCountInString(repl) != 1 {
			return nil, false, fmt.Errorf("%w: %s.replacement: expected one character, got %q", ErrMalformed, path, repl)
		}
		sch, err := parsePrependScheme(c.PrependScheme, c.AddPrefixSpace, path)
		if err != nil {
			return nil, false, err
		}
		return metaspacePre{repl: repl, scheme: sch, split_: c.Split == nil || *c.Split}, false, nil
	case "Digits":
		return digitsPre{c.IndividualDigits}, false, nil
	}
	return nil, false, fmt.Errorf("%w: %s.type: pre-tokenizer %q", ErrUnsupported, path, c.Type)
}

// ------------------------------------------------------------------- decoders

// decodeStep is one decoder of the chain, working on token strings as
// tokenizers' decode_chain does.
type decodeStep interface {
	decodeChain(toks []string) []string
}

type decSeq []decodeStep

func (d decSeq) decodeChain(toks []string) []string {
	for _, x := range d {
		toks = x.decodeChain(toks)
	}
	return toks
}

type byteLevelDec struct{}

func (byteLevelDec) decodeChain(toks []string) []string {
	var raw []byte
	for _, t := range toks {
		raw = appendByteLevelDecoded(raw, t)
	}
	return []string{string(appendLossyUTF8(nil, raw))}
}

type replaceDec struct {
	pattern, content string
}

func (r replaceDec) decodeChain(toks []string) []string {
	for i, t := range toks {
		if r.pattern != "" {
			toks[i] = strings.ReplaceAll(t, r.pattern, r.content)
		}
	}
	return toks
}

type byteFallbackDec struct{}

// fallbackByte parses "<0xNN>".
func fallbackByte(t string) (byte, bool) {
	if len(t) != 6 || t[0] != '<' || t[1] != '0' || t[2] != 'x' || t[5] != '>' {
		return 0, false
	}
	h, ok1 := hexVal(t[3])
	l, ok2 := hexVal(t[4])
	return h<<4 | l, ok1 && ok2
}

func hexVal(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func (byteFallbackDec) decodeChain(toks []string) []string {
	out := toks[:0:0]
	var pending []byte
	flush := func() {
		if len(pending) == 0 {
			return
		}
		if utf8.Valid(pending) {
			out = append(out, string(pending))
		} else {
			// Each byte of an invalid run becomes one U+FFFD.
			for range pending {
				out = append(out, "\uFFFD")
			}
		}
		pending = pending[:0]
	}
	for _, t := range toks {
		if b, ok := fallbackByte(t); ok {
			pending = append(pending, b)
			continue
		}
		flush()
		out = append(out, t)
	}
	flush()
	return out
}

type fuseDec struct{}

func (fuseDec) decodeChain(toks []string) []string {
	return []string{strings.Join(toks, "")}
}

type stripDec struct {
	content     rune
	start, stop int
}

func (s stripDec) decodeChain(toks []string) []string {
	for i, t := range toks {
		rs := []rune(t)
		a, b := 0, len(rs)
		for k := 0; k < s.start && a < b && rs[a] == s.content; k++ {
			a++
		}
		for k := 0; k < s.stop && b > a && rs[b-1] == s.content; k++ {
			b--
		}
		if a != 0 || b != len(rs) {
			toks[i] = string(rs[a:b])
		}
	}
	return toks
}

type metaspaceDec struct {
	repl   string
	scheme prependScheme
}

func (m metaspaceDec) decodeChain(toks []string) []string {
	for i, t := range toks {
		t = strings.ReplaceAll(t, m.repl, " ")
		if i == 0 && m.scheme != prependNever {
			t = strings.TrimPrefix(t, " ")
		}
		toks[i] = t
	}
	return toks
}

func buildDecoder(raw json.RawMessage, path string) (decodeStep, error) {
	c, err := parseComponent(raw, path)
	if err != nil || c == nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		var seq decSeq
		for i, r := range c.Decoders {
			d, err := buildDecoder(r, fmt.Sprintf("%s.decoders[%d]", path, i))
			if err != nil {
				return nil, err
			}
			if d != nil {
				seq = append(seq, d)
			}
		}
		return seq, nil
	case "ByteLevel":
		return byteLevelDec{}, nil
	case "Replace":
		pat, isRe, err := c.Pattern.get(path)
		if err != nil {
			return nil, err
		}
		if isRe {
			return nil, fmt.Errorf("%w: %s.pattern: Regex in a Replace decoder", ErrUnsupported, path)
		}
		if c.Content == nil {
			return nil, fmt.Errorf("%w: %s.content: missing", ErrMalformed, path)
		}
		return replaceDec{pat, *c.Content}, nil
	case "ByteFallback":
		return byteFallbackDec{}, nil
	case "Fuse":
		return fuseDec{}, nil
	case "Strip":
		if c.Content == nil || utf8.RuneCountInString(*c.Content) != 1 {
			return nil, fmt.Errorf("%w: %s.content: expected one character", ErrMalformed, path)
		}
		r, _ := utf8.DecodeRuneInString(*c.Content)
		if c.Start < 0 || c.Stop < 0 {
			return nil, fmt.Errorf("%w: %s.start/stop: negative", ErrMalformed, path)
		}
		return stripDec{r, c.Start, c.Stop}, nil
	case "Metaspace":
		repl := "▁"
		if c.Replacement != nil {
			repl = *c.Replacement
		}
		sch, err := parsePrependScheme(c.PrependScheme, c.AddPrefixSpace, path)
		if err != nil {
			return nil, err
		}
		return metaspaceDec{repl, sch}, nil
	}
	return nil, fmt.Errorf("%w: %s.type: decoder %q", ErrUnsupported, path, c.Type)
}

// ------------------------------------------------------------ post-processors

// postTemplate is what a post-processor adds around a single sequence.
type postTemplate struct {
	prefix, suffix []int
}

func buildPostProcessor(raw json.RawMessage, path string) (postTemplate, error) {
	var t postTemplate
	c, err := parseComponent(raw, path)
	if err != nil || c == nil {
		return t, err
	}
	switch c.Type {
	case "ByteLevel":
		return t, nil
	case "Sequence":
		for i, r := range c.Processors {
			sub, err := buildPostProcessor(r, fmt.Sprintf("%s.processors[%d]", path, i))
			if err != nil {
				return t, err
			}
			t.prefix = append(t.prefix, sub.prefix...)
			t.suffix = append(sub.suffix, t.suffix...)
		}
		return t, nil
	case "TemplateProcessing":
		seen := false
		for i, p := range c.Single {
			switch {
			case p.Sequence != nil:
				if seen {
					return t, fmt.Errorf("%w: %s.single[%d]: a second sequence", ErrMalformed, path, i)
				}
				seen = true
			case p.SpecialToken != nil:
				st, ok := c.SpecialTokens[p.SpecialToken.ID]
				if !ok {
					return t, fmt.Errorf("%w: %s.single[%d]: special token %q is not in special_tokens", ErrMalformed, path, i, p.SpecialToken.ID)
				}
				if seen {
					t.suffix = append(t.suffix, st.IDs...)
				} else {
					t.prefix = append(t.prefix, st.IDs...)
				}
			default:
				return t, fmt.Errorf("%w: %s.single[%d]: expected SpecialToken or Sequence", ErrMalformed, path, i)
			}
		}
		return t, nil
	case "BertProcessing", "RobertaProcessing":
		var cls, sep [2]json.RawMessage
		if json.Unmarshal(c.Cls, &cls) != nil || json.Unmarshal(c.Sep, &sep) != nil {
			return t, fmt.Errorf("%w: %s.cls/sep: expected [token, id]", ErrMalformed, path)
		}
		var clsID, sepID int
		if json.Unmarshal(cls[1], &clsID) != nil || json.Unmarshal(sep[1], &sepID) != nil {
			return t, fmt.Errorf("%w: %s.cls/sep: expected [token, id]", ErrMalformed, path)
		}
		t.prefix = []int{clsID}
		t.suffix = []int{sepID}
		return t, nil
	}
	return t, fmt.Errorf("%w: %s.type: post-processor %q", ErrUnsupported, path, c.Type)
}
