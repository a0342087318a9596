package decoder

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/model"
)

// Tensor parallelism, Megatron-style: each rank holds a slice of every
// layer and one process drives all ranks in lockstep, one goroutine each.
//
//   - q, k, v and gate, up are column-parallel: rank r holds the rows of
//     its query heads, its KV heads and its slice of the intermediate size
//     (so attention and SiLU run on local heads and columns only);
//   - o and down are row-parallel: rank r holds the matching columns and
//     computes a partial sum, all-reduced once per projection (two
//     all-reduces per layer); their biases are added by rank 0 only;
//   - KV heads are split across ranks, or replicated when there are fewer
//     KV heads than ranks (each on n/nkv ranks); the KV cache of a rank
//     holds its KV heads only;
//   - the embedding and lm_head are vocabulary-parallel: rank r looks up
//     the tokens of its vocabulary slice (a zero row for the others, then
//     one all-reduce) and computes the logits of its slice, which land in
//     their columns of the step's logits on the host;
//   - a sparse MLP's experts are split by their intermediate size like a
//     dense MLP (the router is replicated, so every rank picks the same
//     experts), their rows all-reduced before they are weighted into the
//     residual.
//
// Norms, RoPE and the router run replicated on every rank. With one rank
// (a group of one, e.g. NCCL on one GPU) the same code path runs with
// trivial all-reduces.

// geometry is a rank's slice of the model: counts and first indices.
type geometry struct {
	nh, q0   int  // query heads
	nkv, kv0 int  // KV heads
	I, i0    int  // dense MLPs' intermediate size
	moeI, e0 int  // each expert's intermediate size
	vl, v0   int  // vocabulary rows of the embedding and lm_head
	bias     bool // adds the row-parallel projections' biases (rank 0)
}

// CheckTensorParallel reports whether cfg splits over n ranks (the error
// says which dimension does not), before anything is loaded.
func CheckTensorParallel(cfg *model.Config, spec Spec, n int) error {
	_, err := plan(cfg, spec, n)
	return err
}

// plan splits cfg over n ranks.
func plan(cfg *model.Config, spec Spec, n int) ([]geometry, error) {
	if n < 1 {
		return nil, fmt.Errorf("%w: --tensor-parallel-size %d must be at least 1", model.ErrBadConfig, n)
	}
	nh, nkv, I, V := cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.IntermediateSize, cfg.VocabSize
	var errs []string
	if nh%n != 0 {
		errs = append(errs, fmt.Sprintf("num_attention_heads %d is not divisible by it", nh))
	}
	switch {
	case nkv <= 0:
		errs = append(errs, fmt.Sprintf("num_key_value_heads %d", nkv))
	case nkv >= n && nkv%n != 0:
		errs = append(errs, fmt.Sprintf("num_key_value_heads %d is not divisible by it", nkv))
	case nkv < n && n%nkv != 0:
		errs = append(errs, fmt.Sprintf("num_key_value_heads %d neither divides by it nor divides it (fewer KV heads than ranks are replicated, n/%d ranks each)", nkv, nkv))
	}
	dense := spec.MoE == nil
	for i := 0; i < cfg.NumHiddenLayers && !dense; i++ {
		dense = !spec.sparse(i)
	}
	if dense && I%n != 0 {
		errs = append(errs, fmt.Sprintf("intermediate_size %d is not divisible by it", I))
	}
	moeI := 0
	if spec.MoE != nil {
		moeI = spec.MoE.Intermediate
		if moeI%n != 0 {
			errs = append(errs, fmt.Sprintf("moe_intermediate_size %d is not divisible by it", moeI))
		}
	}
	if V < n {
		errs = append(errs, fmt.Sprintf("vocab_size %d is smaller than it", V))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: --tensor-parallel-size %d does not split the model: %s", model.ErrBadConfig, n, strings.Join(errs, "; "))
	}
	geos := make([]geometry, n)
	for r := range geos {
		g := geometry{nh: nh / n, I: I / n, moeI: moeI / n, bias: r == 0}
		g.q0, g.i0, g.e0 = r*g.nh, r*g.I, r*g.moeI
		if nkv >= n {
			g.nkv = nkv / n
			g.kv0 = r * g.nkv
		} else {
			g.nkv, g.kv0 = 1, r/(n/nkv)
		}
		// The vocabulary need not divide: ranks get ⌊V/n⌋ or ⌈V/n⌉ rows.
		g.v0 = r * V / n
		g.vl = (r+1)*V/n - g.v0
		geos[r] = g
	}
	return geos, nil
}

// shard is a rank's place in a tensor-parallel group.
type shard struct {
	geometry
	rank, n int
	comm    ml.Collective
	// vocab: the embedding and lm_head hold the vocabulary slice only
	// (more than one rank).
	vocab bool
	host  []float32 // the rank's logits on their way to the step's
}

// localTokens maps token ids to rows of the rank's embedding slice: its
// own tokens to theirs, the others to the zero row after them.
func (s *shard) localTokens(toks []int32) {
	v0, vl := int32(s.v0), int32(s.vl)
	for i, t := range toks {
		t -= v0
		if t < 0 || t >= vl {
			t = vl
		}
		toks[i] = t
	}
}

// fetch copies the rank's logits of the step's L rows into their columns
// of logits ([L, V]).
func (s *shard) fetch(m *Model, vw *stepViews, L int, logits []float32) error {
	lg := vw.logits
	if vw.L != L {
		lg = m.be.View(vw.logits, 0, L) // padded rows stay on the device
	}
	if !s.vocab {
		return m.be.Download(logits, lg)
	}
	n := L * m.vl
	if cap(s.host) < n {
		s.host = make([]float32, n)
	}
	if err := m.be.Download(s.host[:n], lg); err != nil {
		return err
	}
	for i := range L {
		copy(logits[i*m.V+s.v0:i*m.V+s.v0+m.vl], s.host[i*m.vl:(i+1)*m.vl])
	}
	return nil
}

// vocabShard loads the rank's rows of the embedding and a row of zeros
// after them (the row of every token of other ranks).
func (m *Model) vocabShard(w *model.Weights, store ml.DType, g geometry) (ml.Tensor, error) {
	const name = "model.embed_tokens.weight"
	t, err := w.GetSlice(name, []int{m.V, m.H}, 0, g.v0, g.v0+g.vl)
	if err != nil {
		return nil, err
	}
	data := make([]byte, len(t.Data)+m.H*t.DType.Size())
	copy(data, t.Data)
	x, err := w.Upload(name, data, t.DType, store, g.vl+1, m.H)
	if err != nil {
		return nil, err
	}
	m.tensors = append(m.tensors, x)
	return x, nil
}

// Parallel is a decoder model split over the ranks of a tensor-parallel
// group (see model.TensorParallel), driven by one engine: each step runs
// on every rank at once, one goroutine each, the ranks meeting in their
// all-reduces.
type Parallel struct {
	cfg   *model.Config
	ranks []*Model
	comms []ml.Collective
	work  []chan func(*Model) error
	done  chan rankErr
	// Bound once, so that a step does not allocate a closure.
	stepFn, profileFn func(*Model) error

	// The step in flight (set by the driver before the ranks run).
	b              *model.Batch
	logits         []float32
	profT, profRow int

	broken error // a step failed on a rank: the group is aborted
	closed bool
}

type rankErr struct {
	rank int
	err  error
}

var (
	_ model.DeviceArgmaxer   = (*Parallel)(nil)
	_ model.Profiler         = (*Parallel)(nil)
	_ model.WarmUpper        = (*Parallel)(nil)
	_ model.TensorParalleler = (*Parallel)(nil)
)

// NewParallel loads rank r's shard of the model onto w.TP.Backends[r], for
// every rank at once; each rank reads only its rows or columns of the
// checkpoint's tensors.
func NewParallel(cfg *model.Config, w *model.Weights, spec Spec) (*Parallel, error) {
	if w.TP == nil {
		return nil, fmt.Errorf("%w: NewParallel without a tensor-parallel group", model.ErrBadOption)
	}
	if err := spec.check(cfg); err != nil {
		return nil, err
	}
	n := w.Ranks()
	geos, err := plan(cfg, spec, n)
	if err != nil {
		return nil, err
	}
	p := &Parallel{cfg: cfg, ranks: make([]*Model, n), comms: w.TP.Comms, done: make(chan rankErr, n)}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() {
			sh := &shard{geometry: geos[r], rank: r, n: n, comm: w.TP.Comms[r], vocab: n > 1}
			p.ranks[r], errs[r] = newModel(cfg, w.ForRank(r), spec, sh)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, m := range p.ranks {
			if m != nil {
				m.Close()
			}
		}
		return nil, err
	}
	p.stepFn = p.rankStep
	p.profileFn = p.rankProfile
	p.work = make([]chan func(*Model) error, n)
	for r := range n {
		p.work[r] = make(chan func(*Model) error)
		go p.worker(r)
	}
	w.Logger.Info("tensor-parallel model loaded", "ranks", n, "heads_per_rank", geos[0].nh, "kv_heads_per_rank", geos[0].nkv,
		"weight_bytes_per_rank", p.ranks[0].weightBytes, "kv_bytes_per_token_per_rank", p.ranks[0].KVBytesPerToken())
	return p, nil
}

func (p *Parallel) worker(r int) {
	m := p.ranks[r]
	for fn := range p.work[r] {
		err := fn(m)
		if err != nil {
			// The others may wait for this rank in an all-reduce.
			p.comms[r].Abort(fmt.Errorf("rank %d: %w", r, err))
		}
		p.done <- rankErr{r, err}
	}
}

// run runs fn on every rank at once and waits for all of them. A failure
// on any rank aborts the group: later calls fail too.
func (p *Parallel) run(fn func(*Model) error) error {
	if p.closed {
		return errClosed
	}
	if p.broken != nil {
		return p.broken
	}
	for _, w := range p.work {
		w <- fn
	}
	var cause error
	for range p.work {
		re := <-p.done
		// The root cause, not the aborts it caused on the other ranks.
		if re.err != nil && (cause == nil || errors.Is(cause, ml.ErrCollectiveAborted)) {
			cause = fmt.Errorf("rank %d: %w", re.rank, re.err)
		}
	}
	if cause != nil {
		p.broken = fmt.Errorf("%w: tensor-parallel step failed: %w", ml.ErrDeviceLost, cause)
		return p.broken
	}
	return nil
}

// rankStep is one rank's part of the step in p.b; its ctx is never
// cancelled, as a rank that stopped half-way would leave the others in
// their all-reduces (the driver checks the step's ctx before it starts).
func (p *Parallel) rankStep(m *Model) error {
	return m.runStep(context.Background(), p.b, nil, nil, p.logits)
}

func (p *Parallel) rankProfile(m *Model) error {
	return m.ProfileStep(context.Background(), p.profT, p.profRow)
}

// TensorParallelSize implements model.TensorParalleler.
func (p *Parallel) TensorParallelSize() int { return len(p.ranks) }

// Ranks are the shards, rank by rank.
func (p *Parallel) Ranks() []*Model { return p.ranks }

func (p *Parallel) Config() *model.Config { return p.cfg }

// Spec is the architecture's layer spec.
func (p *Parallel) Spec() Spec { return p.ranks[0].spec }

// KVDType is the KV cache's dtype.
func (p *Parallel) KVDType() ml.DType { return p.ranks[0].kvDType }

// Backend is rank 0's backend.
func (p *Parallel) Backend() ml.Backend { return p.ranks[0].be }

// WeightBytes is the memory of all ranks' weights.
func (p *Parallel) WeightBytes() int64 {
	var n int64
	for _, m := range p.ranks {
		n += m.WeightBytes()
	}
	return n
}

// KVBytesPerToken is the KV cache memory of a token slot over all ranks
// (each holds its KV heads; replicated heads count on every rank).
func (p *Parallel) KVBytesPerToken() int64 {
	var n int64
	for _, m := range p.ranks {
		n += m.KVBytesPerToken()
	}
	return n
}

// AllocateKV gives every rank a KV cache of numBlocks blocks of its KV heads.
func (p *Parallel) AllocateKV(numBlocks, blockSize int) error {
	for r, m := range p.ranks {
		if err := m.AllocateKV(numBlocks, blockSize); err != nil {
			return fmt.Errorf("rank %d: %w", r, err)
		}
	}
	return nil
}

func (p *Parallel) Forward(ctx context.Context, b *model.Batch, logits []float32) error {
	return p.forward(ctx, b, logits)
}

// ArgmaxOnDevice is false: the ranks' logits meet on the host.
func (p *Parallel) ArgmaxOnDevice() bool { return false }

// ForwardArgmax is Forward plus a host argmax of the greedy rows.
func (p *Parallel) ForwardArgmax(ctx context.Context, b *model.Batch, greedy []bool, tokens []int32, logits []float32) error {
	if len(greedy) != len(b.LogitIndices) || len(tokens) != len(b.LogitIndices) {
		return fmt.Errorf("%w: %d greedy flags and %d token slots for %d logit rows",
			model.ErrBadBatch, len(greedy), len(tokens), len(b.LogitIndices))
	}
	V := p.cfg.VocabSize
	if err := p.forward(ctx, b, logits); err != nil {
		return err
	}
	var mask []uint32
	for i, g := range greedy {
		if g {
			allowed := []uint32(nil)
			if b.AllowedTokens != nil {
				mask = slices.Grow(mask[:0], maskWords(V))[:maskWords(V)]
				if b.AllowedTokens(i, mask) {
					allowed = mask
				}
			}
			tokens[i] = int32(hostArgmax(logits[i*V:(i+1)*V], allowed))
		}
	}
	return nil
}

func (p *Parallel) forward(ctx context.Context, b *model.Batch, logits []float32) error {
	m := p.ranks[0]
	if p.closed {
		return errClosed
	}
	if m.kv == nil {
		return fmt.Errorf("%w: Forward before AllocateKV", model.ErrBadBatch)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// A bad batch fails here, before any rank starts (the ranks would all
	// fail too, but a failure on a rank aborts the group).
	if _, err := m.validate(b, logits); err != nil {
		return err
	}
	if len(b.Tokens) == 0 {
		return nil
	}
	p.b, p.logits = b, logits
	err := p.run(p.stepFn)
	p.b, p.logits = nil, nil
	return err
}

// ProfileStep implements model.Profiler on every rank.
func (p *Parallel) ProfileStep(ctx context.Context, tokens, rows int) error {
	if p.closed {
		return errClosed
	}
	if p.ranks[0].kv != nil {
		return fmt.Errorf("%w: ProfileStep after AllocateKV", model.ErrBadConfig)
	}
	if tokens < 1 || rows < 1 || rows > tokens {
		return fmt.Errorf("%w: profile step of %d tokens with %d logit rows", model.ErrBadBatch, tokens, rows)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	p.profT, p.profRow = tokens, rows
	return p.run(p.profileFn)
}

// WarmUp implements model.WarmUpper.
func (p *Parallel) WarmUp(ctx context.Context, o model.WarmUpOptions) (int, error) {
	return warmUp(ctx, p, p.cfg.VocabSize, p.ranks[0].pad, o)
}

// Close stops the ranks' goroutines and frees every shard (not the
// backends nor the collectives, which the caller owns).
func (p *Parallel) Close() error {
	if p.closed {
		return nil
	}
	p.closed = true
	for _, w := range p.work {
		close(w)
	}
	var errs []error
	for _, m := range p.ranks {
		errs = append(errs, m.Close())
	}
	return errors.Join(errs...)
}
