package engine

import (
	"context"
	"strings"
	"time"

	"github.com/llmserve/llmserve/kvcache"
	"github.com/llmserve/llmserve/sample"
	"github.com/llmserve/llmserve/tokenizer"
)

type seqState uint8

const (
	stWaiting seqState = iota
	stRunning
	stFinished
)

// request is one submitted Request and its N sequences. Everything but the
// channel and the abort flag belongs to the step loop.
type request struct {
	ctx       context.Context
	stopAbort func() bool // unregisters the ctx.Done hook
	id        string
	params    sample.Params
	stop      *stopMatcher // of params.Stop; nil when none
	priority  int
	order     uint64 // arrival order, FCFS tie-break
	seed      uint64 // sequence i samples with seed+i
	prompt    []int
	arrival   time.Time
	scheduled time.Time     // first time any sequence ran
	onSched   chan struct{} // Request.Scheduled, closed at that time
	firstTok  time.Time
	out       chan Output
	// pending[i] holds sequence i's events that did not fit in out, merged
	// into one; hasPending[i] says whether it is set (see Local.send).
	pending    []Output
	hasPending []bool
	inFlush    bool
	seqs       []*sequence // index 0 first; children appear at fork
	numDone    int
	done       bool
}

// sequence is one of a request's N completions: the scheduling unit.
type sequence struct {
	req       *request
	index     int
	state     seqState
	tokens    []int // prompt then output; never rewritten, so outputs can alias it
	promptLen int
	// numComputed tokens have their KV in the cache.
	numComputed int
	table       kvcache.Table
	// pendingChildren are sequences 1..N-1 of the request, created when
	// the prompt's prefill completes (they share its blocks); each holds a
	// running seat meanwhile.
	pendingChildren int
	cachedTokens    int // prompt tokens found in the prefix cache at first schedule
	everScheduled   bool

	sampling *sample.State
	detok    tokenizer.TextStream
	// Stop strings need the text: text holds everything detokenized so
	// far; emitted bytes of it were sent, the rest is held back while it
	// could be the start of a stop string. stopState is the request's stop
	// matcher's state after all of text.
	text      strings.Builder
	emitted   int
	stopState int32

	next         int // token sampled this step
	nextLogprobs []TokenLogprob

	heapIdx  int // in the waiting heap
	newToks  int // scheduled this step
	logitRow int // row of this step's logits, -1 when none
}

func (s *sequence) numOutput() int { return len(s.tokens) - s.promptLen }

// remaining is how many of its tokens still need their KV computed.
func (s *sequence) remaining() int { return len(s.tokens) - s.numComputed }

// seats is how many running slots the sequence holds.
func (s *sequence) seats() int { return 1 + s.pendingChildren }

// before is the scheduling order: lower priority value first, then arrival,
// then sequence index.
func (s *sequence) before(o *sequence) bool {
	if s.req.priority != o.req.priority {
		return s.req.priority < o.req.priority
	}
	if s.req.order != o.req.order {
		return s.req.order < o.req.order
	}
	return s.index < o.index
}

// waitQueue is a min-heap of waiting sequences by before.
type waitQueue []*sequence

func (q waitQueue) Len() int           { return len(q) }
func (q waitQueue) Less(i, j int) bool { return q[i].before(q[j]) }
func (q waitQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].heapIdx = i
	q[j].heapIdx = j
}
func (q *waitQueue) Push(x any) {
	s := x.(*sequence)
	s.heapIdx = len(*q)
	*q = append(*q, s)
}
func (q *waitQueue) Pop() any {
	old := *q
	s := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	s.heapIdx = -1
	return s
}

// mergeOutput appends the later event b to a (same sequence).
func mergeOutput(a *Output, b Output) {
	a.Text += b.Text
	a.TokenIDs = append(a.TokenIDs[:len(a.TokenIDs):len(a.TokenIDs)], b.TokenIDs...)
	if b.Logprobs != nil {
		a.Logprobs = append(a.Logprobs[:len(a.Logprobs):len(a.Logprobs)], b.Logprobs...)
	}
	a.FinishReason = b.FinishReason
	a.Err = b.Err
	a.StopReason = b.StopReason
	a.CompletionTokens = b.CompletionTokens
	a.CachedTokens = b.CachedTokens
	a.ScheduledTime = b.ScheduledTime
	a.FirstToken = b.FirstToken
	a.Time = b.Time
}
