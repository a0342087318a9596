package weights

import (
	"encoding/binary"
	"hash/fnv"
	"math"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/llmserve/llmserve/ml"
)

// randomChunk is the number of elements one PRNG stream fills; chunks are
// seeded independently so the output does not depend on how many goroutines
// generate it.
const randomChunk = 1 << 16

// Random returns deterministic dummy weights for a tensor: shape's product of
// values ≈ N(0, std²), encoded little-endian in dt (F32, F16 or BF16). The
// bytes depend only on (dt, shape, seed, name, std). It returns nil for other
// dtypes or a negative dimension.
//
// The values are an Irwin–Hall approximation of the normal distribution (sum
// of four uniforms, rescaled to unit variance; bounded at ±3.46σ): cheap
// enough to fill many GB, spread over all cores.
func Random(dt ml.DType, shape []int, seed uint64, name string, std float32) []byte {
	if dt != ml.F32 && dt != ml.F16 && dt != ml.BF16 {
		return nil
	}
	n := 1
	for _, d := range shape {
		if d < 0 {
			return nil
		}
		hi, lo := bits.Mul64(uint64(n), uint64(d))
		if hi != 0 || lo > math.MaxInt/8 {
			return nil
		}
		n = int(lo)
	}
	sz := dt.Size()
	out := make([]byte, n*sz)
	h := fnv.New64a()
	h.Write([]byte(name))
	base := splitmix(seed ^ h.Sum64())

	chunks := (n + randomChunk - 1) / randomChunk
	workers := min(runtime.GOMAXPROCS(0), chunks)
	if workers <= 1 {
		for c := range chunks {
			fillChunk(out, dt, n, c, base, std)
		}
		return out
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				c := int(next.Add(1) - 1)
				if c >= chunks {
					return
				}
				fillChunk(out, dt, n, c, base, std)
			}
		})
	}
	wg.Wait()
	return out
}

// fillChunk writes elements [c*randomChunk, min(n, (c+1)*randomChunk)).
func fillChunk(out []byte, dt ml.DType, n, c int, base uint64, std float32) {
	start := c * randomChunk
	end := min(n, start+randomChunk)
	state := splitmix(base + uint64(c)*0x9e3779b97f4a7c15)
	// Sum of four 16-bit uniforms has mean 2·65535 and variance 65536²/3
	// (to within 1e-9); scale maps it to unit variance times std.
	scale := std * float32(math.Sqrt(3)/65536)
	const mean = 2 * 65535
	switch dt {
	case ml.F32:
		b := out[start*4 : end*4]
		for i := 0; i < len(b); i += 4 {
			var r uint64
			state, r = wyrand(state)
			v := float32(int64(r&0xffff+r>>16&0xffff+r>>32&0xffff+r>>48)-mean) * scale
			binary.LittleEndian.PutUint32(b[i:], math.Float32bits(v))
		}
	case ml.BF16:
		b := out[start*2 : end*2]
		for i := 0; i < len(b); i += 2 {
			var r uint64
			state, r = wyrand(state)
			v := float32(int64(r&0xffff+r>>16&0xffff+r>>32&0xffff+r>>48)-mean) * scale
			binary.LittleEndian.PutUint16(b[i:], F32ToBF16(v))
		}
	case ml.F16:
		b := out[start*2 : end*2]
		for i := 0; i < len(b); i += 2 {
			var r uint64
			state, r = wyrand(state)
			v := float32(int64(r&0xffff+r>>16&0xffff+r>>32&0xffff+r>>48)-mean) * scale
			binary.LittleEndian.PutUint16(b[i:], F32ToF16(v))
		}
	}
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// wyrand is a fast 64-bit generator (one 128-bit multiply per output).
func wyrand(s uint64) (uint64, uint64) {
	s += 0xa0761d6478bd642f
	hi, lo := bits.Mul64(s, s^0xe7037ed1a0b428db)
	return s, hi ^ lo
}
