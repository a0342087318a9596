package tokenizer

import "strings"

// initialStreamContext is how many prompt tokens seed a stream, as vLLM's
// INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET: enough for the decoder's context
// (a leading-space Strip, a character split across tokens).
const initialStreamContext = 5

// Stream is the incremental detokenizer behind NewTextStream. It works as
// vLLM's (prefix/read offsets over a sliding window of ids) and differs only
// where vLLM could emit text that a later token changes: it holds back text
// that ends in U+FFFD (an unfinished character) and, with a ByteFallback
// decoder, text that ends in a <0xNN> token (a later byte token can turn the
// whole run into U+FFFDs). So the concatenation of Add's results plus Flush
// equals Decode of all ids (for an empty prompt).
type Stream struct {
	t    *Tokenizer
	skip bool
	ids  []int
	// ids[prefix:read] produced prefixText, already returned (or prompt).
	prefix, read int
	prefixText   string
	toks         []string // scratch
}

var _ TextStream = (*Stream)(nil)

// NewTextStream returns an incremental detokenizer for the tokens generated
// after promptIDs (whose last few ids give the decoding context).
func (t *Tokenizer) NewTextStream(promptIDs []int, skipSpecialTokens bool) TextStream {
	return t.NewStream(promptIDs, skipSpecialTokens)
}

// NewStream is NewTextStream returning the concrete type (with Flush).
func (t *Tokenizer) NewStream(promptIDs []int, skipSpecialTokens bool) *Stream {
	s := &Stream{t: t, skip: skipSpecialTokens}
	start := max(len(promptIDs)-initialStreamContext, 0)
	s.ids = append(make([]int, 0, 16), promptIDs[start:]...)
	s.read = len(s.ids)
	s.prefixText = s.decode(s.ids)
	return s
}

func (s *Stream) decode(ids []int) string {
	s.toks = s.t.appendTokens(s.toks[:0], ids, s.skip)
	return s.t.decodeTokens(s.toks)
}

// stable reports whether the decode of the window can no longer change.
func (s *Stream) stable(text string) bool {
	if strings.HasSuffix(text, "\uFFFD") {
		return false
	}
	if s.t.hasByteFB && len(s.toks) > 0 {
		if _, ok := fallbackByte(s.toks[len(s.toks)-1]); ok {
			return false
		}
	}
	return true
}

// Add feeds one generated id and returns the newly stable text (often "").
func (s *Stream) Add(id int) string {
	s.ids = append(s.ids, id)
	text := s.decode(s.ids[s.prefix:])
	if len(text) <= len(s.prefixText) || !s.stable(text) || !strings.HasPrefix(text, s.prefixText) {
		return ""
	}
	delta := text[len(s.prefixText):]
	s.prefix, s.read = s.read, len(s.ids)
	// Drop ids that no window will read again.
	if s.prefix > 64 {
		n := copy(s.ids, s.ids[s.prefix:])
		s.ids = s.ids[:n]
		s.read -= s.prefix
		s.prefix = 0
	}
	s.prefixText = s.decode(s.ids[s.prefix:s.read])
	return delta
}

// Flush returns the text still held back (an unfinished character at the
// end of generation decodes to U+FFFD, as in a one-shot decode).
func (s *Stream) Flush() string {
	text := s.decode(s.ids[s.prefix:])
	if len(text) <= len(s.prefixText) || !strings.HasPrefix(text, s.prefixText) {
		return ""
	}
	delta := text[len(s.prefixText):]
	s.prefix, s.read = len(s.ids), len(s.ids)
	s.prefixText = ""
	return delta
}
