// Package model defines the model-runner seam the engine drives, the Hugging
// Face config, and the registry of architectures.
package model

import (
	"context"
	"errors"
)

// Sentinel errors; wrapped with %w and details.
var (
	ErrUnsupportedArch = errors.New("model: unsupported architecture")
	ErrMissingTensor   = errors.New("model: missing tensor")
	ErrShape           = errors.New("model: shape mismatch")
	ErrBadConfig       = errors.New("model: bad config")
)

// Batch is one model-runner step, as in vLLM v1: a flat token batch over many
// sequences; prefill chunks and decode tokens share it.
type Batch struct {
	Tokens    []int32 // all sequences' new tokens, concatenated sequence by sequence
	Positions []int32 // position of each token in its sequence
	Seqs      []SeqChunk
	// LogitIndices are indices into Tokens whose logits Forward returns, in order.
	LogitIndices []int32
	// AllowedTokens, when set, is asked by ForwardArgmax for the tokens
	// each greedy logit row may pick, once the step's computation is under
	// way (so that a grammar's mask is computed while the device works): it
	// writes row's bitset into words (bit t%32 of word t/32 allows token t;
	// ceil(VocabSize/32) words) and reports whether the row is constrained
	// at all (false: every token is allowed and words is ignored). Rows
	// whose logits are returned are not masked: their caller applies its
	// own processing.
	AllowedTokens func(row int, words []uint32) bool
}

// SeqChunk is one sequence's share of a Batch.
type SeqChunk struct {
	Start, Len int     // its new tokens are Tokens[Start:Start+Len]
	BlockTable []int32 // its KV blocks by logical block index; covers every position in the chunk
}

// Model is a loaded model with its paged KV cache.
type Model interface {
	Config() *Config
	// WeightBytes is the memory the weights take.
	WeightBytes() int64
	// KVBytesPerToken is the KV cache memory one token slot takes over all layers.
	KVBytesPerToken() int64
	// AllocateKV creates the paged KV cache; call once before Forward.
	AllocateKV(numBlocks, blockSize int) error
	// Forward runs one step: writes the KV of every token in b into its
	// sequence's blocks, and fills logits (len(b.LogitIndices)*VocabSize) with
	// the logits at b.LogitIndices.
	Forward(ctx context.Context, b *Batch, logits []float32) error
	Close() error
}

// Profiler is an optional Model capability for sizing the KV cache the way
// vLLM does: before AllocateKV, ProfileStep runs one throwaway step of
// tokens tokens with rows logit rows (the largest step the engine will
// schedule) on a temporary KV cache it frees again, leaving the model's and
// the backend's step buffers at their largest. Device memory still in use
// afterwards is weights plus activations; the KV cache gets what the memory
// budget leaves.
type Profiler interface {
	ProfileStep(ctx context.Context, tokens, rows int) error
}

// DeviceArgmaxer is an optional Model capability: greedy rows are reduced to
// their argmax where the logits are computed (on a GPU), so a greedy
// sequence costs 4 bytes of device-to-host copy and no O(vocab) host work
// instead of a whole logits row.
type DeviceArgmaxer interface {
	Model
	// ArgmaxOnDevice reports whether ForwardArgmax really reduces on the
	// device; when false it costs Forward plus a host argmax, and callers
	// may as well call Forward.
	ArgmaxOnDevice() bool
	// ForwardArgmax is Forward where, for every logit row i (of
	// len(b.LogitIndices)) with greedy[i], tokens[i] receives the index of
	// the row's largest logit among the tokens b.AllowedTokens allows (the
	// lowest index on ties; 0 when none is allowed) and logits' row i is
	// left unspecified; the other rows get their logits as from
	// Forward. logits keeps Forward's length (len(b.LogitIndices)*VocabSize),
	// and greedy and tokens have len(b.LogitIndices).
	ForwardArgmax(ctx context.Context, b *Batch, greedy []bool, tokens []int32, logits []float32) error
}

// WarmUpper is an optional Model capability: before serving, it runs the
// throwaway steps that load what the first requests would otherwise wait
// for (kernels loaded lazily on first use, CUDA graphs captured per step
// shape): decode batches of 1 to MaxSeqs rows, and the largest step and
// every padded prefill shape up to MaxBatchedTokens. The keys and values
// it writes land in KV blocks that hold nothing yet. It returns the
// number of steps run.
type WarmUpper interface {
	WarmUp(ctx context.Context, o WarmUpOptions) (steps int, err error)
}

// WarmUpOptions bound a warm-up by the engine's limits and the KV cache.
type WarmUpOptions struct {
	NumBlocks, BlockSize int // the allocated KV cache
	MaxSeqs              int // --max-num-seqs
	MaxBatchedTokens     int // --max-num-batched-tokens
}
