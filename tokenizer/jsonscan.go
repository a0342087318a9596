package tokenizer

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// A tiny JSON reader for the two large parts of tokenizer.json (model.vocab
// and model.merges): decoding ~150k map entries through encoding/json's
// reflection is most of the load time, so these are parsed by hand. The input
// has already been validated by encoding/json (json.RawMessage), but the code
// still checks every byte so that it can never panic on odd input.

var errJSONSyntax = errors.New("invalid JSON")

type jsonScanner struct {
	b   []byte
	pos int
	buf []byte // scratch for strings with escapes
}

func (s *jsonScanner) skipSpace() {
	for s.pos < len(s.b) {
		switch s.b[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// peek returns the next non-space byte, or 0 at the end.
func (s *jsonScanner) peek() byte {
	s.skipSpace()
	if s.pos >= len(s.b) {
		return 0
	}
	return s.b[s.pos]
}

func (s *jsonScanner) expect(c byte) error {
	if s.peek() != c {
		return errJSONSyntax
	}
	s.pos++
	return nil
}

// str reads a JSON string and returns it as a fresh Go string.
func (s *jsonScanner) str() (string, error) {
	if s.peek() != '"' {
		return "", errJSONSyntax
	}
	s.pos++
	start := s.pos
	// Fast path: no escapes.
	for s.pos < len(s.b) {
		c := s.b[s.pos]
		if c == '"' {
			out := string(s.b[start:s.pos])
			s.pos++
			return out, nil
		}
		if c == '\\' {
			break
		}
		s.pos++
	}
	s.buf = append(s.buf[:0], s.b[start:s.pos]...)
	for s.pos < len(s.b) {
		c := s.b[s.pos]
		switch {
		case c == '"':
			s.pos++
			return string(s.buf), nil
		case c == '\\':
			if s.pos+1 >= len(s.b) {
				return "", errJSONSyntax
			}
			e := s.b[s.pos+1]
			s.pos += 2
			switch e {
			case '"', '\\', '/':
				s.buf = append(s.buf, e)
			case 'b':
				s.buf = append(s.buf, '\b')
			case 'f':
				s.buf = append(s.buf, '\f')
			case 'n':
				s.buf = append(s.buf, '\n')
			case 'r':
				s.buf = append(s.buf, '\r')
			case 't':
				s.buf = append(s.buf, '\t')
			case 'u':
				r, ok := s.hex4()
				if !ok {
					return "", errJSONSyntax
				}
				if utf16.IsSurrogate(r) {
					// A high surrogate followed by \uDCxx forms one rune;
					// a lone surrogate becomes U+FFFD as encoding/json does.
					if s.pos+1 < len(s.b) && s.b[s.pos] == '\\' && s.b[s.pos+1] == 'u' {
						save := s.pos
						s.pos += 2
						r2, ok2 := s.hex4()
						if ok2 {
							if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
								s.buf = utf8.AppendRune(s.buf, dec)
								continue
							}
						}
						s.pos = save
					}
					r = utf8.RuneError
				}
				s.buf = utf8.AppendRune(s.buf, r)
			default:
				return "", errJSONSyntax
			}
		default:
			s.buf = append(s.buf, c)
			s.pos++
		}
	}
	return "", errJSONSyntax
}

func (s *jsonScanner) hex4() (rune, bool) {
	if s.pos+4 > len(s.b) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(s.b[s.pos:s.pos+4]), 16, 32)
	if err != nil {
		return 0, false
	}
	s.pos += 4
	return rune(v), true
}

// integer reads a non-negative JSON integer that fits in int32.
func (s *jsonScanner) integer() (int, error) {
	s.skipSpace()
	start := s.pos
	v := 0
	for s.pos < len(s.b) && s.b[s.pos] >= '0' && s.b[s.pos] <= '9' {
		v = v*10 + int(s.b[s.pos]-'0')
		if v > 1<<31-1 {
			return 0, errJSONSyntax
		}
		s.pos++
	}
	if s.pos == start {
		return 0, errJSONSyntax
	}
	if s.pos < len(s.b) {
		switch s.b[s.pos] {
		case '.', 'e', 'E':
			return 0, errJSONSyntax
		}
	}
	return v, nil
}

// parseVocab reads {"token": id, ...}.
func parseVocab(b []byte) (map[string]int, error) {
	s := &jsonScanner{b: b}
	if err := s.expect('{'); err != nil {
		return nil, err
	}
	// Rough size hint: one entry per ~12 bytes is typical.
	m := make(map[string]int, len(b)/16+1)
	if s.peek() == '}' {
		s.pos++
		return m, nil
	}
	for {
		k, err := s.str()
		if err != nil {
			return nil, err
		}
		if err := s.expect(':'); err != nil {
			return nil, err
		}
		v, err := s.integer()
		if err != nil {
			return nil, errors.New("id of " + strconv.Quote(k) + " is not a non-negative integer")
		}
		m[k] = v
		switch s.peek() {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return m, nil
		default:
			return nil, errJSONSyntax
		}
	}
}

// parseMerges reads either ["a b", ...] or [["a","b"], ...].
func parseMerges(b []byte) ([][2]string, error) {
	s := &jsonScanner{b: b}
	if err := s.expect('['); err != nil {
		return nil, err
	}
	out := make([][2]string, 0, len(b)/16+1)
	if s.peek() == ']' {
		s.pos++
		return out, nil
	}
	for i := 0; ; i++ {
		switch s.peek() {
		case '"':
			m, err := s.str()
			if err != nil {
				return nil, err
			}
			if strings.HasPrefix(m, "#version") {
				// tokenizers skips merges.txt headers kept in the list.
				break
			}
			a, rest, ok := cutSpace(m)
			if !ok {
				return nil, errors.New("merge " + strconv.Itoa(i) + " (" + strconv.Quote(m) + ") is not \"a b\"")
			}
			out = append(out, [2]string{a, rest})
		case '[':
			s.pos++
			a, err := s.str()
			if err != nil {
				return nil, err
			}
			if err := s.expect(','); err != nil {
				return nil, err
			}
			c, err := s.str()
			if err != nil {
				return nil, err
			}
			if err := s.expect(']'); err != nil {
				return nil, errors.New("merge " + strconv.Itoa(i) + " is not a pair of strings")
			}
			out = append(out, [2]string{a, c})
		default:
			return nil, errors.New("merge " + strconv.Itoa(i) + " is neither \"a b\" nor [\"a\", \"b\"]")
		}
		switch s.peek() {
		case ',':
			s.pos++
		case ']':
			s.pos++
			return out, nil
		default:
			return nil, errJSONSyntax
		}
	}
}

// cutSpace splits "a b" into exactly two parts, as tokenizers' legacy
// merges do (a second space is an error there too).
func cutSpace(m string) (string, string, bool) {
	a, b, ok := strings.Cut(m, " ")
	if !ok || strings.IndexByte(b, ' ') >= 0 {
		return "", "", false
	}
	return a, b, true
}
