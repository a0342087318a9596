package decoder

import (
	"context"

	"github.com/llmserve/llmserve/model"
)

// WarmUp implements model.WarmUpper. The largest shapes run first: the
// step buffers then never grow again, so the device pointers (and the
// graphs recorded after them) stay valid.
func (m *Model) WarmUp(ctx context.Context, o model.WarmUpOptions) (int, error) {
	return warmUp(ctx, m, m.V, m.pad, o)
}

// warmUp runs the warm-up steps on m, of vocabulary V, whose steps are
// padded when pad.
func warmUp(ctx context.Context, m model.DeviceArgmaxer, V int, pad bool, o model.WarmUpOptions) (int, error) {
	if o.NumBlocks < 1 || o.BlockSize < 1 {
		return 0, nil
	}
	steps := 0
	step := func(b *model.Batch) error {
		steps++
		rows := len(b.LogitIndices)
		greedy := make([]bool, rows)
		for i := range greedy {
			greedy[i] = true
		}
		return m.ForwardArgmax(ctx, b, greedy, make([]int32, rows), make([]float32, rows*V))
	}
	nb, bs := o.NumBlocks, o.BlockSize
	// decodeRows appends d one-token rows to b.
	decodeRows := func(b *model.Batch, d int) {
		for i := range d {
			b.Tokens = append(b.Tokens, int32(i%V))
			b.Positions = append(b.Positions, int32(i%bs))
			b.Seqs = append(b.Seqs, model.SeqChunk{Start: i, Len: 1, BlockTable: []int32{int32(i % nb)}})
			b.LogitIndices = append(b.LogitIndices, int32(i))
		}
	}
	// prefill is one sequence of n prompt tokens (logits for its last)
	// after d one-token decode rows.
	prefill := func(n, d int) error {
		b := &model.Batch{}
		decodeRows(b, d)
		table := make([]int32, (n+bs-1)/bs)
		for i := range table {
			table[i] = int32(i % nb)
		}
		b.Seqs = append(b.Seqs, model.SeqChunk{Start: d, Len: n, BlockTable: table})
		for i := range n {
			b.Tokens = append(b.Tokens, int32(i%V))
			b.Positions = append(b.Positions, int32(i))
		}
		b.LogitIndices = append(b.LogitIndices, int32(d+n-1))
		return step(b)
	}
	decode := func(T int) error {
		b := &model.Batch{}
		decodeRows(b, T)
		return step(b)
	}
	maxT := min(o.MaxBatchedTokens, nb*bs)
	if maxT < 1 {
		return 0, nil
	}
	err := prefill(maxT, 0)
	if err == nil && o.MaxSeqs > 0 {
		err = decode(o.MaxSeqs)
	}
	// Decode batch sizes spread over 1..MaxSeqs: cuBLAS picks its kernel by
	// the row count and loads each on first use, so these load most of
	// them. Not every size: at 512 sequences that was hundreds of steps
	// and most of the start-up time, while a kernel first met while
	// serving costs its step milliseconds once.
	for _, T := range warmDecodeSizes(o.MaxSeqs) {
		if err != nil {
			break
		}
		err = decode(T)
	}
	// Steps with prompt tokens are padded to a few token and logit-row
	// counts: run each pair twice, which captures its graph. Only up to
	// graphWarmMaxT tokens: a larger step's launches are a small part of
	// its time, and warming every larger shape took most of the start-up.
	if pad {
		for _, T := range PaddedSizes(min(maxT, graphWarmMaxT)) {
			for L := 1; L < T && L <= o.MaxSeqs && err == nil; L *= 2 {
				for range 2 {
					if err = prefill(T-(L-1), L-1); err != nil {
						break
					}
				}
			}
		}
	}
	return steps, err
}

// graphWarmMaxT bounds the padded step sizes whose graphs warm-up captures.
const graphWarmMaxT = 256

// PaddedSizes are the step token counts prompt-carrying steps are padded
// to (PadTokens), up to maxT.
func PaddedSizes(maxT int) []int {
	var out []int
	for t := 1; t <= maxT; t = PadTokens(t) + 1 {
		if p := PadTokens(t); p <= maxT {
			out = append(out, p)
		}
	}
	return out
}

// warmDecodeSizes are the decode batch sizes warm-up runs: every size up
// to 8, then sizes growing by about an eighth, and maxSeqs itself.
func warmDecodeSizes(maxSeqs int) []int {
	var out []int
	for T := 1; T <= maxSeqs; T += 1 + (T-1)/8 {
		out = append(out, T)
	}
	if len(out) > 0 && out[len(out)-1] != maxSeqs {
		out = append(out, maxSeqs)
	}
	return out
}
