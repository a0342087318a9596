package decoder

import "testing"

func TestPadSizes(t *testing.T) {
	for _, c := range []struct{ in, want int }{
		{1, 16}, {12, 16}, {16, 16}, {17, 32}, {64, 64}, {65, 96}, {256, 256}, {257, 384},
		{1024, 1024}, {1025, 1280}, {2048, 2048}, {2049, 2304},
	} {
		if got := PadTokens(c.in); got != c.want {
			t.Errorf("PadTokens(%d) = %d, want %d", c.in, got, c.want)
		}
	}
	for _, c := range []struct{ in, want int }{{0, 0}, {1, 1}, {2, 2}, {3, 4}, {16, 16}, {17, 32}, {256, 256}} {
		if got := padL(c.in); got != c.want {
			t.Errorf("padL(%d) = %d, want %d", c.in, got, c.want)
		}
	}
}
