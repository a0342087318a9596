package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// byteToRune is GPT-2's bytes_to_unicode table: printable bytes map to
// themselves, the rest to U+0100 upwards, in byte order.
var byteToRune = func() (t [256]rune) {
	n := rune(0)
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			t[b] = rune(b)
		} else {
			t[b] = 256 + n
			n++
		}
	}
	return t
}()

// runeToByte inverts byteToRune; -1 for characters outside the table.
// The images are all below U+0144, so a small array suffices.
var runeToByte = func() (t [0x144]int16) {
	for i := range t {
		t[i] = -1
	}
	for b, r := range byteToRune {
		t[r] = int16(b)
	}
	return t
}()

func byteLevelString(s string) string {
	var sb strings.Builder
	sb.Grow(len(s) * 2)
	for i := 0; i < len(s); i++ {
		sb.WriteRune(byteToRune[s[i]])
	}
	return sb.String()
}

// appendByteLevelDecoded maps a token's ByteLevel characters back to bytes.
// Like tokenizers, a token holding any character outside the table (an added
// token, say) is copied as its UTF-8 bytes.
func appendByteLevelDecoded(dst []byte, tok string) []byte {
	n := len(dst)
	for _, r := range tok {
		if r >= 0 && int(r) < len(runeToByte) && runeToByte[r] >= 0 {
			dst = append(dst, byte(runeToByte[r]))
			continue
		}
		return append(dst[:n], tok...)
	}
	return dst
}

// appendLossyUTF8 appends b to dst replacing each maximal ill-formed
// subsequence with U+FFFD, exactly as Rust's String::from_utf8_lossy and
// Python's bytes.decode(errors="replace") do (Go's conversions differ).
func appendLossyUTF8(dst []byte, b []byte) []byte {
	for i := 0; i < len(b); {
		c := b[i]
		if c < 0x80 {
			dst = append(dst, c)
			i++
			continue
		}
		if r, size := utf8.DecodeRune(b[i:]); r != utf8.RuneError || size > 1 {
			dst = append(dst, b[i:i+size]...)
			i += size
			continue
		}
		dst = append(dst, "\uFFFD"...)
		i += maximalSubpart(b[i:])
	}
	return dst
}

// maximalSubpart returns the length of the longest prefix of b (which does
// not start a valid character) that is a prefix of some valid sequence, or 1.
func maximalSubpart(b []byte) int {
	c := b[0]
	var need int
	lo, hi := byte(0x80), byte(0xBF)
	switch {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
		need = 2
	case c == 0xED:
		need, hi = 2, 0x9F
	case c == 0xF0:
		need, lo = 3, 0x90
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	case c == 0xF4:
		need, hi = 3, 0x8F
	default:
		return 1
	}
	i := 1
	for ; i <= need && i < len(b); i++ {
		if i == 1 {
			if b[i] < lo || b[i] > hi {
				break
			}
		} else if b[i] < 0x80 || b[i] > 0xBF {
			break
		}
	}
	return i
}

// incompleteTail reports how many trailing bytes of b form a valid but
// unfinished UTF-8 sequence (which later bytes could still complete).
func incompleteTail(b []byte) int {
	for k := 1; k <= 3 && k <= len(b); k++ {
		start := len(b) - k
		c := b[start]
		if c < 0x80 {
			return 0
		}
		if c >= 0xC0 {
			// A lead byte: unfinished if it needs more than k bytes and
			// what follows is a valid prefix.
			if maximalSubpart(b[start:]) == k && !utf8.FullRune(b[start:]) {
				return k
			}
			return 0
		}
	}
	return 0
}
