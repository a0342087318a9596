package grammar

import "unicode/utf8"

// utf8Seqs turns a code point range into sequences of byte ranges whose
// concatenations are exactly the UTF-8 encodings of the range (surrogates,
// which UTF-8 cannot encode, left out), as RE2 and Rust's regex do.
func utf8Seqs(r rrange, emit func(seq [][2]byte)) {
	if r.lo <= 0xDFFF && r.hi >= 0xD800 {
		if r.lo < 0xD800 {
			utf8Seqs(rrange{r.lo, 0xD7FF}, emit)
		}
		if r.hi > 0xDFFF {
			utf8Seqs(rrange{0xE000, r.hi}, emit)
		}
		return
	}
	// Split where the encoded length changes.
	for _, b := range [...]rune{0x7F, 0x7FF, 0xFFFF} {
		if r.lo <= b && r.hi > b {
			utf8Seqs(rrange{r.lo, b}, emit)
			utf8Seqs(rrange{b + 1, r.hi}, emit)
			return
		}
	}
	if r.hi <= 0x7F {
		emit([][2]byte{{byte(r.lo), byte(r.hi)}})
		return
	}
	n := utf8.RuneLen(r.lo)
	// Split until every continuation byte position spans a full or aligned
	// range, so the product of per-byte ranges is exact.
	for i := 1; i < n; i++ {
		m := rune(1)<<(6*i) - 1
		if r.lo&^m != r.hi&^m {
			if r.lo&m != 0 {
				utf8Seqs(rrange{r.lo, r.lo | m}, emit)
				utf8Seqs(rrange{(r.lo | m) + 1, r.hi}, emit)
				return
			}
			if r.hi&m != m {
				utf8Seqs(rrange{r.lo, (r.hi &^ m) - 1}, emit)
				utf8Seqs(rrange{r.hi &^ m, r.hi}, emit)
				return
			}
		}
	}
	var a, b [4]byte
	utf8.EncodeRune(a[:], r.lo)
	utf8.EncodeRune(b[:], r.hi)
	seq := make([][2]byte, n)
	for i := range seq {
		seq[i] = [2]byte{a[i], b[i]}
	}
	emit(seq)
}
