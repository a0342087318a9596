package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

type addedToken struct {
	id         int
	content    string
	singleWord bool
	lstrip     bool
	rstrip     bool
	normalized bool
	special    bool
}

// addedMatcher finds added tokens leftmost-longest, like tokenizers'
// aho-corasick (MatchKind::LeftmostLongest) over one set of patterns.
type addedMatcher struct {
	first [256]bool
	// trie edges keyed by node<<8 | byte; node 0 is the root.
	edges map[uint32]uint32
	// term[node] is the index in toks of the token ending at node, or -1.
	term []int32
	toks []*addedToken
}

func newAddedMatcher() *addedMatcher {
	return &addedMatcher{edges: map[uint32]uint32{}, term: []int32{-1}}
}

func (m *addedMatcher) add(pattern string, tok *addedToken) {
	if pattern == "" {
		return
	}
	m.first[pattern[0]] = true
	node := uint32(0)
	for i := 0; i < len(pattern); i++ {
		k := node<<8 | uint32(pattern[i])
		nx, ok := m.edges[k]
		if !ok {
			nx = uint32(len(m.term))
			m.term = append(m.term, -1)
			m.edges[k] = nx
		}
		node = nx
	}
	if m.term[node] < 0 {
		m.term[node] = int32(len(m.toks))
		m.toks = append(m.toks, tok)
	}
}

func (m *addedMatcher) empty() bool { return len(m.toks) == 0 }

// longestAt returns the longest token matching at s[i:], or nil.
func (m *addedMatcher) longestAt(s string, i int) (*addedToken, int) {
	node := uint32(0)
	var best *addedToken
	bestEnd := 0
	for j := i; j < len(s); j++ {
		nx, ok := m.edges[node<<8|uint32(s[j])]
		if !ok {
			break
		}
		node = nx
		if t := m.term[node]; t >= 0 {
			best, bestEnd = m.toks[t], j+1
		}
	}
	return best, bestEnd
}

// segment is a span of a string: text for the model (id < 0) or an added
// token's id.
type segment struct {
	start, end int
	id         int
}

// split cuts s into text and added-token segments, honouring single_word,
// lstrip and rstrip exactly as AddedVocabulary::find_matches does.
func (m *addedMatcher) split(dst []segment, s string) []segment {
	if m.empty() {
		return append(dst, segment{0, len(s), -1})
	}
	startOffset := 0
	for i := 0; i < len(s); {
		if !m.first[s[i]] {
			i++
			continue
		}
		tok, end := m.longestAt(s, i)
		if tok == nil {
			i++
			continue
		}
		start, stop := i, end
		i = end // matches never overlap, even skipped ones
		if tok.singleWord {
			startSpace := start == 0 || !endsWithWord(s[:start])
			stopSpace := stop == len(s) || !startsWithWord(s[stop:])
			if !startSpace || !stopSpace {
				continue
			}
		}
		if tok.lstrip {
			ns := start
			for ns > 0 {
				r, size := utf8.DecodeLastRuneInString(s[:ns])
				if !isRustWhitespace(r) {
					break
				}
				ns -= size
			}
			start = max(ns, startOffset)
		}
		if tok.rstrip {
			for stop < len(s) {
				r, size := utf8.DecodeRuneInString(s[stop:])
				if !isRustWhitespace(r) {
					break
				}
				stop += size
			}
		}
		if startOffset < start {
			dst = append(dst, segment{startOffset, start, -1})
		}
		dst = append(dst, segment{start, stop, tok.id})
		startOffset = stop
		if i < stop {
			i = stop
		}
	}
	if startOffset < len(s) {
		dst = append(dst, segment{startOffset, len(s), -1})
	}
	return dst
}

func isRustWhitespace(r rune) bool { return unicode.IsSpace(r) }

func isRustNumeric(r rune) bool { return unicode.IsNumber(r) }

// isWordChar is regex's \w (Unicode): letters, marks, digits, connectors.
func isWordChar(r rune) bool {
	return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.M, r) || unicode.Is(unicode.Pc, r) || unicode.Is(unicode.Nl, r)
}

func endsWithWord(s string) bool {
	r, _ := utf8.DecodeLastRuneInString(s)
	return s != "" && isWordChar(r)
}

func startsWithWord(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	return s != "" && isWordChar(r)
}
