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
