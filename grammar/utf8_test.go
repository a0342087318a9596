package grammar

import (
	"testing"
	"unicode/utf8"
)

// Every code point of a range is matched by exactly one sequence, and the
// sequences match nothing else (checked on all code points).
func TestUTF8Seqs(t *testing.T) {
	for _, r := range []rrange{{0, maxRune}, {0x80, 0x10000}, {0x3B1, 0x3C9}, {0xD000, 0xE100}, {0x7F, 0x800}, {0x10000, 0x10FFFF}, {0x1F600, 0x1F64F}} {
		var seqs [][][2]byte
		utf8Seqs(r, func(s [][2]byte) { seqs = append(seqs, s) })
		var buf [4]byte
		for c := rune(0); c <= maxRune; c++ {
			if c >= 0xD800 && c <= 0xDFFF {
				continue
			}
			n := utf8.EncodeRune(buf[:], c)
			hits := 0
			for _, s := range seqs {
				if len(s) != n {
					continue
				}
				ok := true
				for i := range s {
					if buf[i] < s[i][0] || buf[i] > s[i][1] {
						ok = false
						break
					}
				}
				if ok {
					hits++
				}
			}
			want := 0
			if c >= r.lo && c <= r.hi {
				want = 1
			}
			if hits != want {
				t.Fatalf("range %x-%x: U+%04X matched by %d sequences", r.lo, r.hi, c, hits)
			}
		}
	}
}
