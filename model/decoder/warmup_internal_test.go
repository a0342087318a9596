package decoder

import "testing"

// TestWarmDecodeSizes: warm-up's decode sizes start at 1, end at the
// largest batch, grow by at most an eighth after 8 (so a size met while
// serving is near a warmed one), and stay few.
func TestWarmDecodeSizes(t *testing.T) {
	for _, maxSeqs := range []int{1, 5, 8, 9, 100, 512} {
		s := warmDecodeSizes(maxSeqs)
		if s[0] != 1 || s[len(s)-1] != maxSeqs {
			t.Fatalf("maxSeqs %d: sizes %v do not run from 1 to %d", maxSeqs, s, maxSeqs)
		}
		for i := 1; i < len(s); i++ {
			if s[i] <= s[i-1] || (s[i-1] >= 8 && s[i]-s[i-1] > 1+(s[i-1]-1)/8) || (s[i-1] < 8 && s[i] != s[i-1]+1) {
				t.Fatalf("maxSeqs %d: step %d -> %d in %v", maxSeqs, s[i-1], s[i], s)
			}
		}
		if maxSeqs == 512 && len(s) > 48 {
			t.Errorf("512 sequences: %d warm-up decode sizes, want at most 48", len(s))
		}
	}
}
