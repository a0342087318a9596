package tokenizer

import "strings"

// TokenBytes returns the bytes that token id contributes to decoded text in
// the middle of a sequence: its ByteLevel characters mapped back to bytes, or
// its SentencePiece "▁" replaced by a space and a <0xNN> byte-fallback token
// as the raw byte NN. Unlike TokenText, a token holding part of a UTF-8
// character yields that raw byte rather than U+FFFD, and decoder steps that
// only apply at the start of a whole text (Strip, Metaspace's first-word
// prefix) are left out. This is the byte string a grammar matcher advances
// by; ok is false for ids with no token.
func (t *Tokenizer) TokenBytes(id int) (b []byte, ok bool) {
	s, ok := t.IDToToken(id)
	if !ok {
		return nil, false
	}
	if t.decoder == nil {
		return []byte(s), true
	}
	b, _ = tokenBytesChain(t.decoder, s, false)
	return b, true
}

// tokenBytesChain applies the decoder steps that act on each token alone.
// raw reports that s already holds final bytes (a byte-fallback or
// ByteLevel result), which later string rewrites must not touch.
func tokenBytesChain(d decodeStep, s string, raw bool) ([]byte, bool) {
	switch x := d.(type) {
	case decSeq:
		var b []byte
		for _, step := range x {
			b, raw = tokenBytesChain(step, s, raw)
			s = string(b)
		}
		return []byte(s), raw
	case byteLevelDec:
		if raw {
			return []byte(s), raw
		}
		return appendByteLevelDecoded(nil, s), true
	case replaceDec:
		if raw || x.pattern == "" {
			return []byte(s), raw
		}
		return []byte(strings.ReplaceAll(s, x.pattern, x.content)), raw
	case metaspaceDec:
		if raw {
			return []byte(s), raw
		}
		return []byte(strings.ReplaceAll(s, x.repl, " ")), raw
	case byteFallbackDec:
		if c, ok := fallbackByte(s); ok && !raw {
			return []byte{c}, true
		}
		return []byte(s), raw
	}
	// Fuse joins tokens and Strip trims the start or end of the whole text:
	// neither changes a token in the middle of a sequence.
	return []byte(s), raw
}
