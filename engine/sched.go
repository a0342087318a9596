package engine

import (
	"cmp"
	"container/heap"
	"runtime"
	"slices"
	"time"

	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/sample"
)

// schedule picks this step's work in the manner of vLLM v1's scheduler: a
// token budget of MaxNumBatchedTokens shared by running sequences (decodes
// first, so a long prompt being prefilled in chunks never holds them back;
// then by priority and arrival) and then waiting ones, whose prompts are
// chunked to what is left of the budget. When a running sequence needs a
// block and none is free, the lowest-priority, latest-arrived running
// sequence is preempted (its blocks freed, to be recomputed later), and no
// waiting sequence is admitted in that step.
func (e *Local) schedule() {
	e.scheduled = e.scheduled[:0]
	budget := e.opts.MaxNumBatchedTokens
	preempted := false

	cands := append(e.candidates[:0], e.running...)
	slices.SortFunc(cands, func(a, b *sequence) int {
		if a == b {
			return 0
		}
		if ad, bd := a.remaining() == 1, b.remaining() == 1; ad != bd {
			if ad {
				return -1
			}
			return 1
		}
		if a.before(b) {
			return -1
		}
		return 1
	})
	for _, s := range cands {
		if budget == 0 {
			break
		}
		if s.state != stRunning { // preempted for an earlier one
			continue
		}
		n := min(s.remaining(), budget)
		for !e.kv.Allocate(&s.table, nil, s.numComputed+n) {
			v := e.victim()
			budget += e.preempt(v)
			preempted = true
			if v == s {
				break
			}
		}
		if s.state != stRunning {
			continue
		}
		s.newToks = n
		budget -= n
		e.scheduled = append(e.scheduled, s)
	}
	clear(cands)
	e.candidates = cands[:0]
	if preempted {
		e.compactRunning()
		return
	}

	for len(e.waiting) > 0 && budget > 0 {
		s := e.waiting[0]
		if e.seatsUsed+s.seats() > e.opts.MaxNumSeqs {
			break
		}
		hits := e.kv.Match(&s.table, s.tokens)
		cached := len(hits) * e.opts.BlockSize
		n := min(len(s.tokens)-cached, budget)
		if !e.kv.Allocate(&s.table, hits, cached+n) {
			break // strict order: nothing jumps the queue head
		}
		if e.kv.PrefixCaching() {
			e.kv.RecordLookup(len(s.tokens), cached)
		}
		heap.Pop(&e.waiting)
		s.numComputed = cached
		if !s.everScheduled {
			s.everScheduled = true
			s.cachedTokens = min(cached, s.promptLen)
			if s.req.scheduled.IsZero() {
				s.req.scheduled = e.stepTime
				if s.req.onSched != nil {
					close(s.req.onSched)
				}
			}
		}
		s.state = stRunning
		e.running = append(e.running, s)
		e.seatsUsed += s.seats()
		s.newToks = n
		budget -= n
		e.scheduled = append(e.scheduled, s)
	}
}

// victim is the running sequence to preempt: the lowest priority (largest
// value), latest arrived.
func (e *Local) victim() *sequence {
	var v *sequence
	for _, s := range e.running {
		if s.state == stRunning && (v == nil || v.before(s)) {
			v = s
		}
	}
	return v
}

// preempt frees v's blocks and queues it to be recomputed from scratch
// (its tokens and sampling state are kept, so it continues exactly where it
// stopped). It returns the budget v had been given this step.
func (e *Local) preempt(v *sequence) int {
	back := 0
	if i := slices.Index(e.scheduled, v); i >= 0 {
		e.scheduled = slices.Delete(e.scheduled, i, i+1)
		back = v.newToks
		v.newToks = 0
	}
	e.kv.Free(&v.table)
	v.numComputed = 0
	v.state = stWaiting
	e.seatsUsed -= v.seats()
	heap.Push(&e.waiting, v)
	e.counters.Preemptions++
	e.log.Debug("engine: preempted", "request", v.req.id, "index", v.index, "tokens", len(v.tokens))
	return back
}

// buildBatch lays out the scheduled sequences' new tokens as one flat batch.
func (e *Local) buildBatch() {
	b := &e.batch
	b.Tokens, b.Positions, b.Seqs, b.LogitIndices = b.Tokens[:0], b.Positions[:0], b.Seqs[:0], b.LogitIndices[:0]
	b.AllowedTokens = nil
	clear(e.rowSeq)
	e.rowSeq = e.rowSeq[:0]
	e.greedy, e.anyGreedy = e.greedy[:0], false
	rows := 0
	// Decodes first, then the prompt chunks by size, as vLLM lays out its
	// batches: a backend may then serve the rows of few-token sequences
	// apart from the prompts' (the CUDA backend's per-token attention
	// beside flash).
	slices.SortStableFunc(e.scheduled, func(a, b *sequence) int { return cmp.Compare(a.newToks, b.newToks) })
	for _, s := range e.scheduled {
		start := len(b.Tokens)
		for p := s.numComputed; p < s.numComputed+s.newToks; p++ {
			b.Tokens = append(b.Tokens, int32(s.tokens[p]))
			b.Positions = append(b.Positions, int32(p))
		}
		b.Seqs = append(b.Seqs, model.SeqChunk{Start: start, Len: s.newToks, BlockTable: s.table.Blocks})
		s.logitRow = -1
		if s.numComputed+s.newToks == len(s.tokens) {
			b.LogitIndices = append(b.LogitIndices, int32(len(b.Tokens)-1))
			s.logitRow = rows
			rows++
			g := e.argmaxer != nil && e.deviceGreedy(s)
			e.greedy = append(e.greedy, g)
			e.anyGreedy = e.anyGreedy || g
			e.rowSeq = append(e.rowSeq, s)
			if g && s.sampling.HasProcessors() {
				b.AllowedTokens = e.allowedFn
			}
		}
	}
	e.greedyTok = slices.Grow(e.greedyTok[:0], rows)[:rows]
	need := rows * e.vocab
	if cap(e.logits) < need {
		e.logits = make([]float32, need)
	}
	e.logits = e.logits[:need]
	if e.opts.OnStep != nil {
		e.opts.OnStep(len(b.Tokens))
	}
}

// allowedTokens is the step's model.Batch.AllowedTokens: the tokens the
// processors of row's sequence allow next. The model asks once the step is
// under way; the sequence's mask has been computed in the background since
// its last token was accepted, and this waits for it.
func (e *Local) allowedTokens(row int, words []uint32) bool {
	mask := e.rowSeq[row].sampling.AllowedTokens(e.vocab)
	if mask == nil {
		return false
	}
	copy(words, mask)
	return true
}

// deviceGreedy reports whether s's next token is the argmax of its logits
// among the tokens its processors allow (a grammar's mask, sent with the
// step), so the device can pick it: greedy with no other logits processing
// sample.Sampler.Sample would apply (penalties, logit_bias, min_tokens
// masking of stop tokens), no logprobs to return, and no children to fork
// from the same row.
func (e *Local) deviceGreedy(s *sequence) bool {
	p := &s.req.params
	if !p.Greedy() || p.Logprobs >= 0 || s.pendingChildren > 0 || len(p.LogitBias) != 0 || !s.sampling.Maskable() ||
		p.PresencePenalty != 0 || p.FrequencyPenalty != 0 || p.RepetitionPenalty != 1 {
		return false
	}
	// Below min_tokens the sampler masks stop token ids and (unless
	// ignore_eos) EOS.
	return s.numOutput() >= p.MinTokens ||
		len(p.StopTokenIDs) == 0 && (p.IgnoreEOS || len(e.opts.EOSTokenIDs) == 0)
}

// afterStep commits the computed KV, samples the next token of every
// sequence that reached its end (in parallel when that is worth it), and
// checks stop conditions and streams the results (in order).
func (e *Local) afterStep() {
	now := time.Now()
	e.toSample = e.toSample[:0]
	for _, s := range e.scheduled {
		s.numComputed += s.newToks
		s.newToks = 0
		e.kv.Commit(&s.table, s.tokens, s.numComputed)
		if s.logitRow < 0 {
			continue
		}
		e.toSample = append(e.toSample, s)
		if e.anyGreedy && e.greedy[s.logitRow] {
			s.next, s.nextLogprobs = int(e.greedyTok[s.logitRow]), nil
		} else {
			e.toDraw = append(e.toDraw, s)
		}
	}
	e.sampleAll()
	for _, s := range e.toSample {
		if s.pendingChildren > 0 {
			e.fork(s, e.row(s), now)
		}
		e.emit(s, now)
	}
	clear(e.toSample)
	clear(e.toDraw)
	e.toDraw = e.toDraw[:0]
	clear(e.scheduled)
	e.scheduled = e.scheduled[:0]
	e.compactRunning()
}

func (e *Local) row(s *sequence) []float32 {
	return e.logits[s.logitRow*e.vocab : (s.logitRow+1)*e.vocab]
}

// fork creates the request's other N-1 sequences once the prompt is
// computed: they share its full blocks and sample their first token from
// the same logits (each with its own RNG).
func (e *Local) fork(parent *sequence, row []float32, now time.Time) {
	r := parent.req
	k := parent.pendingChildren
	parent.pendingChildren = 0 // its seats pass to the children
	for i := 1; i <= k; i++ {
		c := e.newSequence(r, i, r.seed, cap(parent.tokens))
		c.tokens = append(c.tokens, r.prompt...)
		c.numComputed = e.kv.Fork(&c.table, &parent.table, parent.promptLen)
		c.everScheduled = true
		c.cachedTokens = parent.cachedTokens
		c.state = stRunning
		e.running = append(e.running, c)
		r.seqs = append(r.seqs, c)
		e.samplers[0].sample(c, row)
		e.emit(c, now)
	}
}

// sampler is one goroutine's sampling scratch.
type sampler struct {
	smp *sample.Sampler
	top []sample.TopLogprob
}

// sample picks s's next token (and its logprobs) from its logits row into
// s.next. Sequences own their RNG and penalty state, so sequences can be
// sampled concurrently, each by one sampler.
func (w *sampler) sample(s *sequence, row []float32) {
	p := &s.req.params
	tok := w.smp.Sample(s.sampling, row)
	s.next, s.nextLogprobs = tok, nil
	if p.Logprobs >= 0 {
		lp, top := w.smp.Logprobs(row, tok, p.Logprobs, w.top[:0])
		w.top = top
		tl := TokenLogprob{TokenID: tok, Logprob: lp}
		if len(top) > 0 {
			tl.Top = make([]TopLogprob, len(top))
			for i, t := range top {
				tl.Top[i] = TopLogprob(t)
			}
		}
		s.nextLogprobs = []TokenLogprob{tl}
	}
}

// sampleTask is a share of e.toDraw for sampler w.
type sampleTask struct{ lo, hi, w int }

// parallelSampleWork is the vocabulary entries a step must sample before
// it is spread over workers (below it the hand-off costs more than it saves).
const parallelSampleWork = 1 << 18

// startSamplers starts the sampling workers (GOMAXPROCS-1 of them, at most
// 15), which live as long as Run.
func (e *Local) startSamplers() {
	n := min(runtime.GOMAXPROCS(0), 16)
	if n < 2 {
		return
	}
	e.work = make(chan sampleTask, n)
	for len(e.samplers) < n {
		e.samplers = append(e.samplers, &sampler{smp: sample.NewSampler(e.vocab)})
	}
	for range n - 1 {
		go func(work <-chan sampleTask) {
			for t := range work {
				w := e.samplers[t.w]
				for _, s := range e.toDraw[t.lo:t.hi] {
					w.sample(s, e.row(s))
				}
				e.workWG.Done()
			}
		}(e.work)
	}
}

// sampleAll samples every sequence in e.toDraw.
func (e *Local) sampleAll() {
	n := len(e.toDraw)
	if n == 0 {
		return
	}
	workers := min(len(e.samplers), n)
	if e.work == nil || n*e.vocab < parallelSampleWork {
		workers = 1
	}
	per := (n + workers - 1) / workers
	if workers > 1 {
		e.parallelSteps++
	}
	for w := 1; w < workers; w++ {
		lo, hi := w*per, min((w+1)*per, n)
		if lo >= hi {
			break
		}
		e.workWG.Add(1)
		e.work <- sampleTask{lo, hi, w}
	}
	for _, s := range e.toDraw[:per] {
		e.samplers[0].sample(s, e.row(s))
	}
	e.workWG.Wait()
}

// emit appends s's sampled token, applies the stop rules (vLLM's order:
// length, min_tokens, EOS, stop token ids, then stop strings) and sends the
// event.
func (e *Local) emit(s *sequence, now time.Time) {
	r := s.req
	p := &r.params
	tok, lps := s.next, s.nextLogprobs
	s.nextLogprobs = nil
	s.sampling.Accept(tok)
	s.tokens = append(s.tokens, tok)
	e.counters.GenerationTokens++
	if r.firstTok.IsZero() {
		r.firstTok = now
		e.counters.PromptTokens += uint64(len(r.prompt))
	}

	nOut := s.numOutput()
	var finish string
	var stopReason any
	switch {
	case nOut >= p.MaxTokens || len(s.tokens) >= e.opts.MaxModelLen:
		finish = FinishLength
	case nOut < p.MinTokens:
	case !p.IgnoreEOS && slices.Contains(e.opts.EOSTokenIDs, tok):
		finish = FinishStop
	case slices.Contains(p.StopTokenIDs, tok):
		finish, stopReason = FinishStop, tok
	}

	var text string
	if s.detok != nil {
		// A stop token's own text is not part of the output (vLLM).
		stopTok := finish == FinishStop
		switch {
		case len(p.Stop) == 0:
			if !stopTok {
				text = s.detok.Add(tok)
			}
			if finish != "" {
				// Bytes of an unfinished character held back so far.
				text += s.detok.Flush()
			}
		default:
			from := s.text.Len()
			if !stopTok {
				s.text.WriteString(s.detok.Add(tok))
			}
			if finish != "" {
				s.text.WriteString(s.detok.Flush())
			}
			full := s.text.String()
			end := len(full)
			var pos, which int
			s.stopState, pos, which = r.stop.scan(s.stopState, full, from)
			if pos >= 0 && nOut >= p.MinTokens && !stopTok {
				finish, stopReason = FinishStop, p.Stop[which]
				end = max(pos, s.emitted)
			} else if finish == "" {
				end -= r.stop.holdBack(s.stopState, end-s.emitted)
			}
			text = full[s.emitted:end]
			s.emitted = end
		}
	}

	o := Output{
		RequestID:        r.id,
		Index:            s.index,
		Text:             text,
		TokenIDs:         s.tokens[len(s.tokens)-1 : len(s.tokens) : len(s.tokens)],
		Logprobs:         lps,
		FinishReason:     finish,
		StopReason:       stopReason,
		PromptTokens:     s.promptLen,
		CompletionTokens: nOut,
		CachedTokens:     s.cachedTokens,
		ArrivalTime:      r.arrival,
		ScheduledTime:    r.scheduled,
		FirstToken:       r.firstTok,
		Time:             now,
	}
	if finish != "" {
		e.finishSeq(s)
	}
	e.send(r, o)
	if finish != "" {
		e.maybeFinishRequest(r)
	}
}
