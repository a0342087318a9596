// Package engine runs requests: a continuous-batching scheduler over a paged
// KV cache driving a model.Model step by step.
package engine

import (
	"context"
	"errors"
	"time"

	"github.com/llmserve/llmserve/sample"
	"github.com/llmserve/llmserve/tokenizer"
)

// Sentinel errors, mapped to HTTP status at the server edge.
var (
	ErrInvalidRequest = errors.New("engine: invalid request") // 400
	ErrTooLong        = errors.New("engine: prompt too long") // 400
	ErrClosed         = errors.New("engine: closed")          // 503
	// ErrStepFailed ends the requests of a model step that failed (a
	// device error, an out-of-memory): Output.Err wraps it and the cause.
	ErrStepFailed = errors.New("engine: model step failed") // 500
	// ErrUnhealthy: the device is in a state the engine cannot recover from
	// (ml.ErrDeviceLost, or step after step failing); it refuses work until
	// the process is restarted.
	ErrUnhealthy = errors.New("engine: unhealthy") // 503
)

// Engine is what the HTTP layer sees.
type Engine interface {
	// Submit queues req. The channel receives outputs in order and is closed
	// after the last one (which has FinishReason set for every one of the
	// request's N sequences). Cancelling ctx aborts the request within one
	// step and frees its KV blocks; its sequences finish with "abort".
	// A request the engine could not run to the end (a failed step) gets
	// final events with FinishReason FinishAbort and Err set.
	Submit(ctx context.Context, req *Request) (<-chan Output, error)
	Stats() Stats
}

// HealthChecker is implemented by engines that can turn unhealthy: Health
// returns nil while they serve, else why not (errors.Is ErrUnhealthy).
type HealthChecker interface {
	Health() error
}

// Request is one generation request.
type Request struct {
	ID        string
	PromptIDs []int
	Params    sample.Params
	Priority  int // lower runs first (vLLM's convention); FCFS within a priority
	// Scheduled, when non-nil, is closed by the engine the first time the
	// request is scheduled: its queue time is over (the server's
	// --max-queue-wait). The engine never closes it otherwise.
	Scheduled chan struct{}
}

// Finish reasons.
const (
	FinishStop   = "stop"
	FinishLength = "length"
	FinishAbort  = "abort"
)

// TokenLogprob is one sampled token's logprob and the top alternatives.
type TokenLogprob struct {
	TokenID int
	Logprob float32
	Top     []TopLogprob // descending
}

// TopLogprob is an alternative token at one step.
type TopLogprob struct {
	TokenID int
	Logprob float32
}

// Output is one event of a request's stream.
type Output struct {
	RequestID    string
	Index        int    // which of the request's N sequences
	Text         string // new text since the previous event of this sequence
	TokenIDs     []int  // new token ids
	Logprobs     []TokenLogprob
	FinishReason string // "" while running
	StopReason   any    // the matched stop string or stop token id, when FinishReason is "stop" by one
	// Err is set on a final event when the sequence ended because the
	// engine failed (errors.Is ErrStepFailed or ErrUnhealthy), not by
	// the caller's cancellation; FinishReason is then FinishAbort.
	Err error

	PromptTokens     int
	CompletionTokens int // so far, this sequence
	CachedTokens     int // prompt tokens served from the prefix cache

	ArrivalTime   time.Time // Submit
	ScheduledTime time.Time // first scheduled (queue time = ScheduledTime - ArrivalTime)
	FirstToken    time.Time // first output token
	Time          time.Time // this event
}

// Stats are engine-level counters and gauges for /metrics and /health.
type Stats struct {
	Running, Waiting int
	KVBlocksTotal    int
	KVBlocksFree     int
	KVUsage          float64 // fraction of blocks in use, 0..1
	BlockSize        int
	Preemptions      uint64
	PrefixQueries    uint64 // prompt tokens looked up in the prefix cache
	PrefixHits       uint64 // of which were found
	PromptTokens     uint64
	GenerationTokens uint64
}

// Detokenizer makes per-sequence text streams (nil engine option = token ids only).
type Detokenizer interface {
	NewTextStream(promptIDs []int, skipSpecialTokens bool) tokenizer.TextStream
}
