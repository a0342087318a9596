package grammar

import (
	"errors"
	"regexp/syntax"
	"unicode"
)

// Regular expressions are parsed by Go's regexp/syntax (RE2 syntax: classes,
// \d \w \s \pL, quantifiers, {m,n}, alternation, groups, (?i) and other
// flags) and compiled here into the grammar IR over UTF-8 bytes. Go's
// parser is what the validators of our tests use too, so a pattern means
// the same to both. Assertions other than a leading ^ and a trailing $
// (word boundaries, mid-pattern anchors) are not supported.

const regexFlags = syntax.Perl // no OneLine: $ at the end means end of text anyway

// parseRegex compiles a regex that must match the whole output.
func parseRegex(src string, lim Limits) (expr, error) {
	re, err := syntaxParse(src)
	if err != nil {
		return nil, err
	}
	return anchoredExpr(re, nil, nil, lim)
}

// anchoredExpr translates re. A leading ^ and trailing $ are dropped (the
// match is full anyway) when free is nil; when free is set, re is searched
// for, as a JSON Schema pattern is: an end not anchored may take any run of
// free around the match. tr, if set, rewrites each translated part.
func anchoredExpr(re *syntax.Regexp, free expr, tr func(expr) expr, lim Limits) (expr, error) {
	if re.Op == syntax.OpAlternate {
		out := make(eAlt, len(re.Sub))
		for i, s := range re.Sub {
			e, err := anchoredExpr(s, free, tr, lim)
			if err != nil {
				return nil, err
			}
			out[i] = e
		}
		return out, nil
	}
	subs := []*syntax.Regexp{re}
	if re.Op == syntax.OpConcat {
		subs = re.Sub
	}
	begin, end := false, false
	for len(subs) > 0 && isBegin(subs[0]) {
		subs, begin = subs[1:], true
	}
	for len(subs) > 0 && isEnd(subs[len(subs)-1]) {
		subs, end = subs[:len(subs)-1], true
	}
	var out eSeq
	if free != nil && !begin {
		out = append(out, star(free))
	}
	for _, s := range subs {
		e, err := regexExpr(s, lim)
		if err != nil {
			return nil, err
		}
		if tr != nil {
			e = tr(e)
		}
		out = append(out, e)
	}
	if free != nil && !end {
		out = append(out, star(free))
	}
	return out, nil
}

func isBegin(re *syntax.Regexp) bool {
	return re.Op == syntax.OpBeginText || re.Op == syntax.OpBeginLine
}

func isEnd(re *syntax.Regexp) bool {
	return re.Op == syntax.OpEndText || re.Op == syntax.OpEndLine
}

func regexExpr(re *syntax.Regexp, lim Limits) (expr, error) {
	sub := func(i int) (expr, error) { return regexExpr(re.Sub[i], lim) }
	switch re.Op {
	case syntax.OpNoMatch:
		return eNothing, nil
	case syntax.OpEmptyMatch:
		return eEmpty, nil
	case syntax.OpLiteral:
		if re.Flags&syntax.FoldCase != 0 {
			out := make(eSeq, len(re.Rune))
			for i, r := range re.Rune {
				out[i] = foldClass(r)
			}
			return out, nil
		}
		return eLit(string(re.Rune)), nil
	case syntax.OpCharClass:
		rs := make([]rrange, 0, len(re.Rune)/2)
		for i := 0; i+1 < len(re.Rune); i += 2 {
			rs = append(rs, rrange{re.Rune[i], re.Rune[i+1]})
		}
		return chars(rs...), nil
	case syntax.OpAnyCharNotNL:
		return chars(rrange{0, '\n' - 1}, rrange{'\n' + 1, maxRune}), nil
	case syntax.OpAnyChar:
		return chars(rrange{0, maxRune}), nil
	case syntax.OpCapture:
		return sub(0)
	case syntax.OpStar, syntax.OpPlus, syntax.OpQuest, syntax.OpRepeat:
		e, err := sub(0)
		if err != nil {
			return nil, err
		}
		switch re.Op {
		case syntax.OpStar:
			return star(e), nil
		case syntax.OpPlus:
			return plus(e), nil
		case syntax.OpQuest:
			return opt(e), nil
		}
		if re.Min > lim.MaxRepeat || re.Max > lim.MaxRepeat {
			return nil, errorf(ErrLimit, "regex repetition {%d,%d} over %d", re.Min, re.Max, lim.MaxRepeat)
		}
		return eRep{e, re.Min, re.Max}, nil
	case syntax.OpConcat, syntax.OpAlternate:
		out := make([]expr, len(re.Sub))
		for i := range re.Sub {
			e, err := sub(i)
			if err != nil {
				return nil, err
			}
			out[i] = e
		}
		if re.Op == syntax.OpConcat {
			return eSeq(out), nil
		}
		return eAlt(out), nil
	}
	return nil, errorf(ErrUnsupported, "regex: %v inside a pattern", re.Op)
}

// foldClass is the class of r and its simple case folds.
func foldClass(r rune) eClass {
	rs := []rrange{{r, r}}
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		rs = append(rs, rrange{f, f})
	}
	return chars(rs...)
}

func syntaxParse(re string) (*syntax.Regexp, error) {
	p, err := syntax.Parse(re, regexFlags)
	if err != nil {
		// Lookarounds and backreferences (ECMA-262 has them, RE2 not) are
		// well-formed but unsupported; size errors are limits.
		kind := ErrSyntax
		var se *syntax.Error
		if errors.As(err, &se) {
			switch se.Code {
			case syntax.ErrInvalidPerlOp, syntax.ErrInvalidEscape:
				kind = ErrUnsupported
			case syntax.ErrLarge, syntax.ErrNestingDepth, syntax.ErrInvalidRepeatSize:
				kind = ErrLimit
			}
		}
		return nil, errorf(kind, "regex %q: %v", re, err)
	}
	return p, nil
}
