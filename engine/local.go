package engine

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/llmserve/llmserve/kvcache"
	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/sample"
)

// streamSlack is how many not-yet-final events a request's stream buffers
// before the engine starts coalescing them.
const streamSlack = 16

// Options configure a Local engine (vLLM's flag names in comments).
type Options struct {
	MaxNumSeqs          int // --max-num-seqs (default 256)
	MaxNumBatchedTokens int // --max-num-batched-tokens (default 2048)
	MaxModelLen         int // --max-model-len (default: the model's max_position_embeddings)
	BlockSize           int // --block-size (default 16)
	// NumBlocks is the number of KV blocks (the caller computes it from
	// --kv-cache-memory or --gpu-memory-utilization and KVBytesPerToken).
	NumBlocks           int
	EnablePrefixCaching bool  // --enable-prefix-caching
	EOSTokenIDs         []int // the model's end-of-sequence ids
	// Detokenizer may be nil (--skip-tokenizer-init): outputs carry token
	// ids only, and stop strings are rejected.
	Detokenizer Detokenizer
	Logger      *slog.Logger
	// Seed seeds the per-request seeds of requests that bring none (--seed).
	Seed int64
	// MaxLogprobs caps Params.Logprobs (vLLM's max_logprobs, default 20).
	MaxLogprobs int
	// OnStep, if set, is called from the engine loop with the number of
	// tokens of each step it runs (vllm:iteration_tokens_total); it must
	// not block.
	OnStep func(tokens int)
	// MaxStepFailures is how many model steps in a row may fail before the
	// engine turns unhealthy (default 3): an error the backend does not
	// call unrecoverable (ml.ErrDeviceLost) may still be one.
	MaxStepFailures int
}

// Local is the in-process engine: a continuous-batching scheduler over a
// paged KV cache driving a model.Model, one step at a time, from Run.
//
// All scheduling state belongs to Run's goroutine; Submit and context
// cancellations hand requests and aborts over under a mutex and wake it, and
// no lock is held during Forward. Output.TokenIDs alias the engine's token
// history: consumers must treat them as read-only.
type Local struct {
	m     model.Model
	opts  Options
	log   *slog.Logger
	vocab int
	kv    *kvcache.Manager
	// samplers[0] is the loop's; the others belong to sampling workers.
	samplers []*sampler

	// mu guards the hand-over from Submit and ctx hooks to the loop.
	mu         sync.Mutex
	inbox      []*request
	aborts     []*request
	closed     bool
	started    bool
	unhealthy  error // set once, by the loop: Submit refuses work
	numInbox   int
	abortHooks uint64        // cancellations seen (tests wait on it)
	wake       chan struct{} // capacity 1: "the inbox changed"
	statsMu    sync.Mutex
	stats      Stats
	maxRunning int

	// Loop-owned state.
	seedRNG    *rand.Rand
	order      uint64
	waiting    waitQueue
	running    []*sequence
	seatsUsed  int
	scheduled  []*sequence
	candidates []*sequence
	flush      []*request
	batch      model.Batch
	logits     []float32
	rawCopy    []float32
	toSample   []*sequence
	// Greedy rows reduced on the device (model.DeviceArgmaxer): argmaxer is
	// nil when the model cannot; greedy[r] flags this step's logit row r,
	// greedyTok[r] receives its token, and toDraw are the sequences still
	// sampled on the host.
	argmaxer  model.DeviceArgmaxer
	greedy    []bool
	greedyTok []int32
	// rowSeq[r] is the sequence of the step's logit row r.
	rowSeq []*sequence
	// allowedTokens as a method value, made once.
	allowedFn func(int, []uint32) bool
	anyGreedy bool
	toDraw    []*sequence
	work      chan sampleTask
	workWG    sync.WaitGroup
	// parallelSteps counts steps whose sampling was spread over workers.
	parallelSteps int
	counters      Stats
	stepTime      time.Time
	stepFailures  int // consecutive failed steps
}

var (
	_ Engine        = (*Local)(nil)
	_ HealthChecker = (*Local)(nil)
)

// New makes an engine for m and allocates its KV cache
// (m.AllocateKV(NumBlocks, BlockSize)).
func New(m model.Model, opts Options) (*Local, error) {
	cfg := m.Config()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxNumSeqs <= 0 {
		opts.MaxNumSeqs = 256
	}
	if opts.MaxNumBatchedTokens <= 0 {
		opts.MaxNumBatchedTokens = 2048
	}
	if opts.BlockSize <= 0 {
		opts.BlockSize = 16
	}
	if opts.MaxModelLen <= 0 {
		opts.MaxModelLen = cfg.MaxPositionEmbeddings
	}
	if opts.MaxLogprobs <= 0 {
		opts.MaxLogprobs = 20
	}
	if opts.MaxStepFailures <= 0 {
		opts.MaxStepFailures = 3
	}
	if cfg.VocabSize <= 0 {
		return nil, fmt.Errorf("engine: model vocabulary size %d", cfg.VocabSize)
	}
	if opts.MaxModelLen <= 0 {
		return nil, errors.New("engine: max model length unknown (set MaxModelLen)")
	}
	capTokens := opts.NumBlocks * opts.BlockSize
	if opts.NumBlocks <= 0 || capTokens < opts.MaxModelLen {
		return nil, fmt.Errorf("engine: the KV cache holds %d tokens (%d blocks of %d), less than one sequence of max model length %d: give it more memory or lower --max-model-len",
			capTokens, opts.NumBlocks, opts.BlockSize, opts.MaxModelLen)
	}
	kv, err := kvcache.New(kvcache.Options{NumBlocks: opts.NumBlocks, BlockSize: opts.BlockSize, EnablePrefixCaching: opts.EnablePrefixCaching})
	if err != nil {
		return nil, err
	}
	if err := m.AllocateKV(opts.NumBlocks, opts.BlockSize); err != nil {
		return nil, fmt.Errorf("engine: allocating the KV cache: %w", err)
	}
	e := &Local{
		m:        m,
		opts:     opts,
		log:      opts.Logger,
		vocab:    cfg.VocabSize,
		kv:       kv,
		samplers: []*sampler{{smp: sample.NewSampler(cfg.VocabSize)}},
		wake:     make(chan struct{}, 1),
		seedRNG:  rand.New(rand.NewPCG(uint64(opts.Seed), 0x5eed)),
	}
	if da, ok := m.(model.DeviceArgmaxer); ok && da.ArgmaxOnDevice() {
		e.argmaxer = da
	}
	e.allowedFn = e.allowedTokens
	e.stats = Stats{KVBlocksTotal: opts.NumBlocks, KVBlocksFree: opts.NumBlocks, BlockSize: opts.BlockSize}
	e.log.Info("KV cache",
		"blocks", opts.NumBlocks, "block_size", opts.BlockSize,
		"capacity_tokens", capTokens,
		"max_model_len", opts.MaxModelLen,
		"max_concurrency", fmt.Sprintf("%.2fx", e.MaxConcurrency()),
		"prefix_caching", opts.EnablePrefixCaching)
	return e, nil
}

// BlocksForMemory is how many KV blocks of blockSize tokens fit in memBytes
// (--kv-cache-memory, or the GPU memory left for the cache) for a model
// taking kvBytesPerToken (model.Model.KVBytesPerToken).
func BlocksForMemory(memBytes, kvBytesPerToken int64, blockSize int) int {
	if memBytes <= 0 || kvBytesPerToken <= 0 || blockSize <= 0 {
		return 0
	}
	return int(memBytes / (kvBytesPerToken * int64(blockSize)))
}

// KVCapacityTokens is the number of token slots in the KV cache.
func (e *Local) KVCapacityTokens() int { return e.opts.NumBlocks * e.opts.BlockSize }

// MaxConcurrency is how many sequences of MaxModelLen tokens fit in the KV
// cache at once.
func (e *Local) MaxConcurrency() float64 {
	return float64(e.KVCapacityTokens()) / float64(e.opts.MaxModelLen)
}

// Options returns the engine's options with defaults filled in.
func (e *Local) Options() Options { return e.opts }

// Stats returns the latest counters and gauges (updated after every step).
func (e *Local) Stats() Stats {
	e.statsMu.Lock()
	s := e.stats
	e.statsMu.Unlock()
	e.mu.Lock()
	s.Waiting += e.numInbox
	e.mu.Unlock()
	return s
}

// Limits are what Submit checks a request against. The server validates at
// the API edge with the same numbers (naming the client's fields), and its
// fuzz test holds every request it accepts to Check: a client never sees
// this check's messages for bad input.
type Limits struct {
	Vocab       int // token ids must be in [0, Vocab)
	MaxModelLen int // prompt tokens at most
	MaxNumSeqs  int // n at most: a prompt's n sequences run in one batch
	MaxLogprobs int
	Detokenize  bool // stop strings need a detokenizer
}

// Limits returns the engine's limits.
func (e *Local) Limits() Limits {
	return Limits{Vocab: e.vocab, MaxModelLen: e.opts.MaxModelLen, MaxNumSeqs: e.opts.MaxNumSeqs,
		MaxLogprobs: e.opts.MaxLogprobs, Detokenize: e.opts.Detokenizer != nil}
}

// Check validates req, its params normalized as Submit does.
func (l Limits) Check(req *Request) error {
	if req == nil {
		return fmt.Errorf("%w: nil request", ErrInvalidRequest)
	}
	p := req.Params
	p.Normalize()
	if err := p.Validate(l.Vocab, l.MaxLogprobs); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	if len(req.PromptIDs) == 0 {
		return fmt.Errorf("%w: empty prompt", ErrInvalidRequest)
	}
	if len(req.PromptIDs) > l.MaxModelLen {
		return fmt.Errorf("%w: %d prompt tokens, max model length is %d", ErrTooLong, len(req.PromptIDs), l.MaxModelLen)
	}
	for _, t := range req.PromptIDs {
		if t < 0 || t >= l.Vocab {
			return fmt.Errorf("%w: prompt token %d out of vocabulary (size %d)", ErrInvalidRequest, t, l.Vocab)
		}
	}
	if p.N > l.MaxNumSeqs {
		return fmt.Errorf("%w: n=%d exceeds max-num-seqs %d", ErrInvalidRequest, p.N, l.MaxNumSeqs)
	}
	if len(p.Stop) > 0 && !l.Detokenize {
		return fmt.Errorf("%w: stop strings need a tokenizer", ErrInvalidRequest)
	}
	return nil
}

// Submit validates req and queues it; see Engine.
func (e *Local) Submit(ctx context.Context, req *Request) (<-chan Output, error) {
	if err := e.Limits().Check(req); err != nil {
		return nil, err
	}
	p := req.Params
	p.Normalize()
	// Copy what the caller may reuse.
	p.Stop = slices.Clone(p.Stop)
	p.StopTokenIDs = slices.Clone(p.StopTokenIDs)
	if p.LogitBias != nil {
		lb := make(map[int]float64, len(p.LogitBias))
		for k, v := range p.LogitBias {
			lb[k] = v
		}
		p.LogitBias = lb
	}
	if p.Seed != nil {
		s := *p.Seed
		p.Seed = &s
	}
	var stop *stopMatcher
	if len(p.Stop) > 0 {
		stop = newStopMatcher(p.Stop) // here, not in the step loop
	}
	r := &request{
		stop:       stop,
		ctx:        ctx,
		id:         req.ID,
		params:     p,
		priority:   req.Priority,
		onSched:    req.Scheduled,
		prompt:     slices.Clone(req.PromptIDs),
		arrival:    time.Now(),
		out:        make(chan Output, p.N+streamSlack),
		pending:    make([]Output, p.N),
		hasPending: make([]bool, p.N),
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, ErrClosed
	}
	if e.unhealthy != nil {
		err := e.unhealthy
		e.mu.Unlock()
		return nil, err
	}
	// Registered under the lock: the hook (its own goroutine) can only
	// queue the abort after the request is in the inbox, so the loop never
	// sees an abort for a request it has not admitted.
	r.stopAbort = context.AfterFunc(ctx, func() {
		e.mu.Lock()
		if !e.closed {
			e.aborts = append(e.aborts, r)
			e.abortHooks++
		}
		e.mu.Unlock()
		e.signal()
	})
	e.inbox = append(e.inbox, r)
	e.numInbox++
	e.mu.Unlock()
	e.signal()
	return r.out, nil
}

func (e *Local) signal() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Run is the step loop. It returns nil once ctx is done, after aborting every
// request left (their streams end with FinishAbort and are closed); Submit
// then fails with ErrClosed. It returns an error only if called twice.
func (e *Local) Run(ctx context.Context) error {
	e.mu.Lock()
	if e.started {
		e.mu.Unlock()
		return errors.New("engine: Run called twice")
	}
	e.started = true
	e.mu.Unlock()
	e.startSamplers()
	defer e.shutdown()
	for {
		e.drain()
		if ctx.Err() != nil {
			return nil
		}
		if len(e.waiting) == 0 && len(e.running) == 0 {
			e.publishStats()
			select {
			case <-e.wake:
			case <-ctx.Done():
			}
			continue
		}
		e.stepTime = time.Now()
		e.schedule()
		if len(e.scheduled) == 0 {
			// Nothing fits (cannot happen with New's capacity check): wait
			// for an abort or new work instead of spinning.
			e.log.Error("engine: no sequence could be scheduled", "waiting", len(e.waiting), "running", len(e.running), "free_blocks", e.kv.NumFree())
			e.publishStats()
			select {
			case <-e.wake:
			case <-ctx.Done():
			}
			continue
		}
		e.buildBatch()
		e.publishStats()
		var err error
		if e.anyGreedy {
			err = e.argmaxer.ForwardArgmax(ctx, &e.batch, e.greedy, e.greedyTok, e.logits)
		} else {
			err = e.m.Forward(ctx, &e.batch, e.logits)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			e.stepFailed(err)
			continue
		}
		e.stepFailures = 0
		e.afterStep()
		e.flushPending()
		e.publishStats()
	}
}

// Health implements HealthChecker: nil until a step failure turned the
// engine unhealthy.
func (e *Local) Health() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.unhealthy
}

// stepFailed ends the failed step's requests with the error (their
// clients get an error, not a truncated success). An error the backend
// calls unrecoverable, or MaxStepFailures failures in a row, turn the
// engine unhealthy: every other request fails too and Submit refuses work,
// since further steps would fail again or compute garbage.
func (e *Local) stepFailed(err error) {
	e.stepFailures++
	e.log.Error("engine: model step failed; failing its requests", "err", err,
		"tokens", len(e.batch.Tokens), "seqs", len(e.batch.Seqs), "failures_in_a_row", e.stepFailures)
	// Unhealthy is published before any request ends, so a client that
	// has seen its request fail and then asks /health sees the failure.
	var uerr error
	var inbox []*request
	if errors.Is(err, ml.ErrDeviceLost) || e.stepFailures >= e.opts.MaxStepFailures {
		uerr = fmt.Errorf("%w: %w", ErrUnhealthy, err)
		e.log.Error("engine: unhealthy, refusing work until restarted", "err", err)
		e.mu.Lock()
		e.unhealthy = uerr
		inbox = e.inbox
		e.inbox = nil
		e.numInbox = 0
		e.mu.Unlock()
	}
	ferr := fmt.Errorf("%w: %w", ErrStepFailed, err)
	for _, s := range e.scheduled {
		e.endRequest(s.req, ferr)
	}
	clear(e.scheduled)
	e.scheduled = e.scheduled[:0]
	e.compactRunning()
	if uerr != nil {
		for _, r := range inbox {
			e.admit(r)
		}
		for len(e.waiting) > 0 {
			e.endRequest(e.waiting[0].req, uerr)
		}
		for len(e.running) > 0 {
			e.endRequest(e.running[0].req, uerr)
			e.compactRunning()
		}
	}
	e.publishStats()
}

// drain moves submitted requests into the waiting queue and applies aborts.
func (e *Local) drain() {
	e.mu.Lock()
	inbox, aborts := e.inbox, e.aborts
	e.inbox, e.aborts = nil, nil
	e.numInbox = 0
	e.mu.Unlock()
	for _, r := range inbox {
		e.admit(r)
	}
	for _, r := range aborts {
		e.abortRequest(r)
	}
	if len(aborts) > 0 {
		e.compactRunning()
	}
}

// admit creates r's first sequence and queues it.
func (e *Local) admit(r *request) {
	e.order++
	r.order = e.order
	var seed uint64
	if r.params.Seed != nil {
		seed = uint64(*r.params.Seed)
	} else {
		seed = e.seedRNG.Uint64()
	}
	r.params.Seed = nil // the seed in use is in the sampling state
	s := e.newSequence(r, 0, seed, len(r.prompt)+min(r.params.MaxTokens, e.opts.MaxModelLen))
	s.tokens = append(s.tokens, r.prompt...)
	s.pendingChildren = r.params.N - 1
	r.seqs = make([]*sequence, 1, r.params.N)
	r.seqs[0] = s
	r.seed = seed
	heap.Push(&e.waiting, s)
}

func (e *Local) newSequence(r *request, index int, seed uint64, capTokens int) *sequence {
	s := &sequence{
		req:       r,
		index:     index,
		promptLen: len(r.prompt),
		heapIdx:   -1,
		logitRow:  -1,
		// Sized for the whole output up front (capped, in case max_tokens
		// is huge) so that appending rarely copies.
		tokens: make([]int, 0, min(capTokens, len(r.prompt)+4096)),
	}
	// Sequence i of a seeded request uses seed+i, as vLLM's n>1 does.
	s.sampling = sample.NewState(&r.params, seed+uint64(index), r.prompt, e.opts.EOSTokenIDs)
	if e.opts.Detokenizer != nil {
		s.detok = e.opts.Detokenizer.NewTextStream(r.prompt, r.params.SkipSpecialTokens)
	}
	return s
}

// abortRequest finishes every unfinished sequence of r with FinishAbort and
// frees its blocks. The caller compacts e.running.
func (e *Local) abortRequest(r *request) { e.endRequest(r, nil) }

// endRequest is abortRequest with the final events carrying err (nil for a
// cancellation or shutdown).
func (e *Local) endRequest(r *request, err error) {
	if r.done {
		return
	}
	now := time.Now()
	for _, s := range r.seqs {
		if s.state == stFinished {
			continue
		}
		e.finishSeq(s)
		e.send(r, Output{
			RequestID:        r.id,
			Index:            s.index,
			FinishReason:     FinishAbort,
			Err:              err,
			PromptTokens:     s.promptLen,
			CompletionTokens: s.numOutput(),
			CachedTokens:     s.cachedTokens,
			ArrivalTime:      r.arrival,
			ScheduledTime:    r.scheduled,
			FirstToken:       r.firstTok,
			Time:             now,
		})
	}
	// Children never created are aborted too.
	for i := len(r.seqs); i < r.params.N; i++ {
		r.numDone++
		e.send(r, Output{RequestID: r.id, Index: i, FinishReason: FinishAbort, Err: err, PromptTokens: len(r.prompt),
			ArrivalTime: r.arrival, ScheduledTime: r.scheduled, FirstToken: r.firstTok, Time: now})
	}
	if len(r.seqs) > 0 {
		r.seqs[0].pendingChildren = 0
	}
	e.maybeFinishRequest(r)
}

// finishSeq takes s out of the queues and frees its blocks.
func (e *Local) finishSeq(s *sequence) {
	switch s.state {
	case stWaiting:
		if s.heapIdx >= 0 {
			heap.Remove(&e.waiting, s.heapIdx)
		}
	case stRunning:
		e.seatsUsed -= s.seats()
		// removed from e.running by compactRunning
	}
	s.pendingChildren = 0
	s.state = stFinished
	e.kv.Free(&s.table)
	s.req.numDone++
}

func (e *Local) compactRunning() {
	e.running = slices.DeleteFunc(e.running, func(s *sequence) bool { return s.state != stRunning })
}

// maybeFinishRequest closes r's stream once all N sequences are done.
func (e *Local) maybeFinishRequest(r *request) {
	if r.done || r.numDone < r.params.N {
		return
	}
	r.done = true
	r.stopAbort()
	close(r.out)
}

// send delivers o without ever blocking the loop. The stream's last N
// slots are reserved for the sequences' final events: other events are only
// sent while more than N slots are free, and otherwise coalesced into one
// pending event per sequence (a slow consumer gets bigger deltas instead of
// stalling the engine), which the final event absorbs. So a final event
// always fits, and no goroutine is needed to deliver it.
func (e *Local) send(r *request, o Output) {
	i := o.Index
	if r.hasPending[i] {
		mergeOutput(&r.pending[i], o)
		if o.FinishReason == "" {
			return
		}
		o = r.pending[i]
		r.pending[i], r.hasPending[i] = Output{}, false
	}
	if o.FinishReason != "" || len(r.out) < cap(r.out)-r.params.N {
		select {
		case r.out <- o:
		default: // impossible by the reservation above
			e.log.Error("engine: output stream full; event dropped", "request", r.id, "index", i)
		}
		return
	}
	r.pending[i], r.hasPending[i] = o, true
	if !r.inFlush {
		r.inFlush = true
		e.flush = append(e.flush, r)
	}
}

// flushPending retries coalesced events of requests whose consumer is behind.
func (e *Local) flushPending() {
	keep := e.flush[:0]
	for _, r := range e.flush {
		left := false
		for i, ok := range r.hasPending {
			if !ok {
				continue
			}
			if len(r.out) < cap(r.out)-r.params.N {
				r.out <- r.pending[i]
				r.pending[i], r.hasPending[i] = Output{}, false
			} else {
				left = true
			}
		}
		if left && !r.done {
			keep = append(keep, r)
		} else {
			r.inFlush = false
		}
	}
	clear(e.flush[len(keep):])
	e.flush = keep
}

// shutdown aborts everything left when Run returns.
func (e *Local) shutdown() {
	e.mu.Lock()
	e.closed = true
	inbox := e.inbox
	e.inbox, e.aborts = nil, nil
	e.numInbox = 0
	e.mu.Unlock()
	for _, r := range inbox {
		e.admit(r)
	}
	for len(e.waiting) > 0 {
		e.abortRequest(e.waiting[0].req)
	}
	for len(e.running) > 0 {
		e.abortRequest(e.running[0].req)
		e.compactRunning()
	}
	e.flush = nil
	if e.work != nil {
		close(e.work) // the sampling workers exit
		e.work = nil
	}
	e.publishStats()
}

func (e *Local) publishStats() {
	q, h, _ := e.kv.PrefixStats()
	waiting := 0
	for _, s := range e.waiting {
		waiting += s.seats()
	}
	e.statsMu.Lock()
	e.stats = Stats{
		Running:          e.seatsUsed,
		Waiting:          waiting,
		KVBlocksTotal:    e.kv.NumBlocks(),
		KVBlocksFree:     e.kv.NumFree(),
		KVUsage:          e.kv.Usage(),
		BlockSize:        e.kv.BlockSize(),
		Preemptions:      e.counters.Preemptions,
		PrefixQueries:    q,
		PrefixHits:       h,
		PromptTokens:     e.counters.PromptTokens,
		GenerationTokens: e.counters.GenerationTokens,
	}
	e.statsMu.Unlock()
}
