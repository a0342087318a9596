package cpu

import (
	"fmt"
	"math"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu/kernels"
)

// KVCache holds every layer's keys and values by block and KV head, so that
// attention runs as small matrix products over whole blocks:
//   - keys:   [block][kvHead][slot in block][headDim] — a block's keys of one
//     head are a blockSize×headDim matrix (q·Kᵀ is a GEMM against it);
//   - values: [block][kvHead][headDim][slot in block] — transposed, so P·V is
//     a GEMM against a headDim×blockSize matrix.
//
// Its memory is one arena mapped outside the Go heap (see arena).
type KVCache struct {
	layers, numBlocks, blockSize, kvHeads, headDim int
	dt                                             ml.DType
	kf, vf                                         [][]float32 // F32, per layer
	ku, vu                                         [][]uint16  // BF16/F16, per layer
	k8, v8                                         [][]uint8   // F8 (E4M3, scale 1), per layer
	mem                                            *arena
}

func (c *KVCache) NumBlocks() int  { return c.numBlocks }
func (c *KVCache) BlockSize() int  { return c.blockSize }
func (c *KVCache) DType() ml.DType { return c.dt }

// Bytes is the memory the cache holds.
func (c *KVCache) Bytes() int64 {
	return 2 * int64(c.layers) * int64(c.numBlocks*c.blockSize*c.kvHeads*c.headDim) * int64(c.dt.Size())
}

func (b *Backend) NewKVCache(layers, numBlocks, blockSize, numKVHeads, headDim int, dt ml.DType) (ml.KVCache, error) {
	if layers <= 0 || numBlocks <= 0 || blockSize <= 0 || numKVHeads <= 0 || headDim <= 0 {
		return nil, fmt.Errorf("%w: KV cache of %d layers, %d blocks of %d, %d heads of %d",
			ErrShape, layers, numBlocks, blockSize, numKVHeads, headDim)
	}
	c := &KVCache{layers: layers, numBlocks: numBlocks, blockSize: blockSize, kvHeads: numKVHeads, headDim: headDim, dt: dt}
	n := numBlocks * blockSize * numKVHeads * headDim
	if dt != ml.F32 && dt != ml.BF16 && dt != ml.F16 && dt != ml.F8 {
		return nil, fmt.Errorf("%w: KV cache dtype %s (want float32, bfloat16, float16 or fp8_e4m3)", ml.ErrUnsupported, dt)
	}
	if n/numBlocks != blockSize*numKVHeads*headDim || n > math.MaxInt/(2*layers*dt.Size()) {
		return nil, fmt.Errorf("%w: KV cache of %d layers, %d blocks of %d, %d heads of %d overflows",
			ErrShape, layers, numBlocks, blockSize, numKVHeads, headDim)
	}
	sizes := make([]int, 2*layers)
	for i := range sizes {
		sizes[i] = n * dt.Size()
	}
	mem, err := newArena(c, carvedSize(sizes...))
	if err != nil {
		return nil, err
	}
	c.mem = mem
	cv := &carver{mem: mem.mem}
	switch dt {
	case ml.F32:
		c.kf, c.vf = make([][]float32, layers), make([][]float32, layers)
		for l := range layers {
			c.kf[l], c.vf[l] = carve[float32](cv, n), carve[float32](cv, n)
		}
	case ml.F8:
		c.k8, c.v8 = make([][]uint8, layers), make([][]uint8, layers)
		for l := range layers {
			c.k8[l], c.v8[l] = carve[uint8](cv, n), carve[uint8](cv, n)
		}
	default:
		c.ku, c.vu = make([][]uint16, layers), make([][]uint16, layers)
		for l := range layers {
			c.ku[l], c.vu[l] = carve[uint16](cv, n), carve[uint16](cv, n)
		}
	}
	return c, nil
}

// FreeKVCache unmaps the cache's memory at once (the cache must not be in
// use: no step may run on it any more).
func (b *Backend) FreeKVCache(c ml.KVCache) {
	if kc, ok := c.(*KVCache); ok && kc != nil {
		kc.kf, kc.vf, kc.ku, kc.vu, kc.k8, kc.v8 = nil, nil, nil, nil, nil, nil
		kc.mem.free()
		kc.mem = nil
	}
}

func asCache(c ml.KVCache, layer int) (*KVCache, error) {
	kc, ok := c.(*KVCache)
	if !ok || kc == nil || (kc.kf == nil && kc.ku == nil && kc.k8 == nil) {
		return nil, fmt.Errorf("%w: not a live cpu KV cache (%T)", ErrShape, c)
	}
	if layer < 0 || layer >= kc.layers {
		return nil, fmt.Errorf("%w: layer %d of a %d-layer KV cache", ErrShape, layer, kc.layers)
	}
	return kc, nil
}

func (b *Backend) WriteKV(c ml.KVCache, layer int, k, v, slots ml.Tensor) error {
	kc, err := asCache(c, layer)
	if err != nil {
		return err
	}
	kt, err := asTensor(k, "WriteKV k", f32Only)
	if err != nil {
		return err
	}
	vt, err := asTensor(v, "WriteKV v", f32Only)
	if err != nil {
		return err
	}
	dim := kc.kvHeads * kc.headDim
	if kt.cols != dim || vt.cols != dim || kt.rows != vt.rows {
		return fmt.Errorf("%w: WriteKV k %v, v %v into %d KV heads of %d", ErrShape, kt, vt, kc.kvHeads, kc.headDim)
	}
	sl, err := indices(slots, "WriteKV slots", kt.rows)
	if err != nil {
		return err
	}
	nSlots := kc.numBlocks * kc.blockSize
	for i, s := range sl {
		if s < 0 || int(s) >= nSlots {
			return fmt.Errorf("%w: WriteKV slot %d at %d outside %d slots", ErrShape, s, i, nSlots)
		}
	}
	// Small: a copy per token row, on the caller.
	bs, hd := kc.blockSize, kc.headDim
	wkvTmp := b.wkvTmp[:]
	for i, slot := range sl {
		blk, off := int(slot)/bs, int(slot)%bs
		for g := range kc.kvHeads {
			src := kt.f32[i*dim+g*hd : i*dim+(g+1)*hd]
			vsrc := vt.f32[i*dim+g*hd : i*dim+(g+1)*hd]
			// A block holds its keys transposed ([hd][bs]) and its values
			// as rows ([bs][hd]): see flash.go.
			base := (blk*kc.kvHeads + g) * bs * hd
			vo := base + off*hd // value row
			switch kc.dt {
			case ml.F32:
				copy(kc.vf[layer][vo:vo+hd], vsrc)
				kdst := kc.kf[layer][base:]
				for d, x := range src {
					kdst[d*bs+off] = x
				}
			case ml.F8:
				// vLLM's fp8 cache without calibrated scales: scale 1,
				// saturating at ±448.
				kdst, vdst := kc.k8[layer][base:], kc.v8[layer][vo:vo+hd]
				for d, x := range src {
					kdst[d*bs+off] = ml.F8Bits(x)
				}
				for d, x := range vsrc {
					vdst[d] = ml.F8Bits(x)
				}
			case ml.BF16, ml.F16:
				kdst := kc.ku[layer][base:]
				for d0 := 0; d0 < hd; d0 += len(wkvTmp) {
					d1 := min(hd, d0+len(wkvTmp))
					// Direct calls (not a func value) keep tmp on the stack.
					tmp := wkvTmp[:d1-d0]
					if kc.dt == ml.BF16 {
						kernels.F32ToBF16(kc.vu[layer][vo+d0:vo+d1], vsrc[d0:d1])
						kernels.F32ToBF16(tmp, src[d0:d1])
					} else {
						kernels.F32ToF16(kc.vu[layer][vo+d0:vo+d1], vsrc[d0:d1])
						kernels.F32ToF16(tmp, src[d0:d1])
					}
					for d := d0; d < d1; d++ {
						kdst[d*bs+off] = tmp[d-d0]
					}
				}
			}
		}
	}
	return nil
}
