package tokenizer

import (
	"bytes"
	"errors"
	"strconv"
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
	b, err := s.strBytes(&s.buf)
	return string(b), err
}

// strBytes reads a JSON string. The result aliases the input when the
// string has no escapes, else it is *buf (reused by the next call with it).
func (s *jsonScanner) strBytes(buf *[]byte) ([]byte, error) {
	if s.peek() != '"' {
		return nil, errJSONSyntax
	}
	s.pos++
	start := s.pos
	// Fast path: no escapes.
	for s.pos < len(s.b) {
		c := s.b[s.pos]
		if c == '"' {
			out := s.b[start:s.pos]
			s.pos++
			return out, nil
		}
		if c == '\\' {
			break
		}
		s.pos++
	}
	out := append((*buf)[:0], s.b[start:s.pos]...)
	defer func() { *buf = out[:0] }()
	for s.pos < len(s.b) {
		c := s.b[s.pos]
		switch {
		case c == '"':
			s.pos++
			return out, nil
		case c == '\\':
			if s.pos+1 >= len(s.b) {
				return nil, errJSONSyntax
			}
			e := s.b[s.pos+1]
			s.pos += 2
			switch e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r, ok := s.hex4()
				if !ok {
					return nil, errJSONSyntax
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
								out = utf8.AppendRune(out, dec)
								continue
							}
						}
						s.pos = save
					}
					r = utf8.RuneError
				}
				out = utf8.AppendRune(out, r)
			default:
				return nil, errJSONSyntax
			}
		default:
			out = append(out, c)
			s.pos++
		}
	}
	return nil, errJSONSyntax
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

// parseMerges reads either ["a b", ...] or [["a","b"], ...] and calls fn
// with each pair (the slices are only valid during the call).
func parseMerges(b []byte, fn func(rank int, a, c []byte) error) (int, error) {
	s := &jsonScanner{b: b}
	if err := s.expect('['); err != nil {
		return 0, err
	}
	if s.peek() == ']' {
		s.pos++
		return 0, nil
	}
	var bufA, bufB []byte
	rank := 0
	for i := 0; ; i++ {
		switch s.peek() {
		case '"':
			m, err := s.strBytes(&bufA)
			if err != nil {
				return 0, err
			}
			if bytes.HasPrefix(m, []byte("#version")) {
				// tokenizers skips merges.txt headers kept in the list.
				break
			}
			a, c, ok := cutSpace(m)
			if !ok {
				return 0, errors.New("merge " + strconv.Itoa(i) + " (" + strconv.Quote(string(m)) + ") is not \"a b\"")
			}
			if err := fn(rank, a, c); err != nil {
				return 0, err
			}
			rank++
		case '[':
			s.pos++
			a, err := s.strBytes(&bufA)
			if err != nil {
				return 0, err
			}
			if err := s.expect(','); err != nil {
				return 0, err
			}
			c, err := s.strBytes(&bufB)
			if err != nil {
				return 0, err
			}
			if err := s.expect(']'); err != nil {
				return 0, errors.New("merge " + strconv.Itoa(i) + " is not a pair of strings")
			}
			if err := fn(rank, a, c); err != nil {
				return 0, err
			}
			rank++
		default:
			return 0, errors.New("merge " + strconv.Itoa(i) + " is neither \"a b\" nor [\"a\", \"b\"]")
		}
		switch s.peek() {
		case ',':
			s.pos++
		case ']':
			s.pos++
			return rank, nil
		default:
			return 0, errJSONSyntax
		}
	}
}

// cutSpace splits "a b" into exactly two parts, as tokenizers' legacy
// merges do (a second space is an error there too).
func cutSpace(m []byte) ([]byte, []byte, bool) {
	a, b, ok := bytes.Cut(m, []byte(" "))
	if !ok || bytes.IndexByte(b, ' ') >= 0 {
		return nil, nil, false
	}
	return a, b, true
}

// skipValue moves past one JSON value and returns its bytes.
func (s *jsonScanner) skipValue() ([]byte, error) {
	s.skipSpace()
	start := s.pos
	depth := 0
	for {
		if s.pos >= len(s.b) {
			return nil, errJSONSyntax
		}
		switch c := s.b[s.pos]; c {
		case '"':
			if err := s.skipString(); err != nil {
				return nil, err
			}
		case '{', '[':
			depth++
			if depth > 10000 {
				return nil, errJSONSyntax
			}
			s.pos++
		case '}', ']':
			depth--
			if depth < 0 {
				return nil, errJSONSyntax
			}
			s.pos++
		case ',', ':', ' ', '\t', '\n', '\r':
			if depth == 0 {
				return nil, errJSONSyntax
			}
			s.pos++
		default:
			// Numbers and literals: a run of their characters.
			n := s.pos
			for s.pos < len(s.b) && isScalarByte(s.b[s.pos]) {
				s.pos++
			}
			if s.pos == n {
				return nil, errJSONSyntax
			}
		}
		if depth == 0 {
			return s.b[start:s.pos], nil
		}
	}
}

func isScalarByte(c byte) bool {
	return c == '-' || c == '+' || c == '.' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func (s *jsonScanner) skipString() error {
	s.pos++ // opening quote
	for s.pos < len(s.b) {
		// IndexByte is vectorized; most strings have no escapes.
		q := bytes.IndexByte(s.b[s.pos:], '"')
		if q < 0 {
			return errJSONSyntax
		}
		bs := bytes.IndexByte(s.b[s.pos:s.pos+q], '\\')
		if bs < 0 {
			s.pos += q + 1
			return nil
		}
		s.pos += bs + 2 // skip the escaped character
	}
	return errJSONSyntax
}

// objectFields reads a JSON object and returns each key's raw value.
func objectFields(b []byte) (map[string][]byte, error) {
	s := &jsonScanner{b: b}
	if err := s.expect('{'); err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	if s.peek() == '}' {
		s.pos++
		return out, s.end()
	}
	for {
		k, err := s.str()
		if err != nil {
			return nil, err
		}
		if err := s.expect(':'); err != nil {
			return nil, err
		}
		v, err := s.skipValue()
		if err != nil {
			return nil, err
		}
		out[k] = v
		switch s.peek() {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return out, s.end()
		default:
			return nil, errJSONSyntax
		}
	}
}

// end checks that only white space follows.
func (s *jsonScanner) end() error {
	if s.peek() != 0 || s.pos < len(s.b) {
		return errJSONSyntax
	}
	return nil
}
