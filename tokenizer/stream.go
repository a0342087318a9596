package tokenizer

// TextStream turns generated token ids into text incrementally: Add returns
// only text that is complete UTF-8 and will not change with later tokens,
// so the concatenation of all returned pieces, then Flush, equals the
// one-shot decode.
type TextStream interface {
	Add(id int) string
	// Flush returns text held back (an incomplete character) when the
	// sequence ends.
	Flush() string
}
