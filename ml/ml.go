// Package ml is the compute backend seam: the model is written once against
// Backend, and ml/cpu and ml/cuda implement it (see ml/mltest for the shared
// conformance suite).
//
// All tensors are row-major 2-D matrices (rows × cols) owned by the backend.
// Ops write into caller-given tensors and must not allocate on the hot path.
// On asynchronous backends (CUDA) ops are queued; Download and Sync block.
package ml

import (
	"errors"
	"fmt"
)

// DType is an element type.
type DType uint8

const (
	F32 DType = iota
	F16
	BF16
	I8 // weight-only int8, symmetric per output row (row scales held by the tensor)
	I32
	F8 // weight-only FP8 E4M3, one scale per output row as I8 (see fp8.go)
)

func (d DType) String() string {
	switch d {
	case F32:
		return "float32"
	case F16:
		return "float16"
	case BF16:
		return "bfloat16"
	case I8:
		return "int8"
	case I32:
		return "int32"
	case F8:
		return "fp8_e4m3"
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Size is the bytes per element (I8 and F8 exclude their per-row scales).
func (d DType) Size() int {
	switch d {
	case F32, I32:
		return 4
	case F16, BF16:
		return 2
	case I8, F8:
		return 1
	}
	return 0
}

// ErrUnsupported is returned for a dtype or op a backend does not implement.
var ErrUnsupported = errors.New("ml: unsupported")

// ErrRetryStep is returned when the device refused, at launch, work a
// backend had accepted for a step (ml/cuda's cooperative decode step when
// the GPU is shared, e.g. under MPS). None of the step's writes were made
// past that point and the backend declines that work from then on, so the
// caller may run the step again.
var ErrRetryStep = errors.New("ml: step refused at launch, run it again")

// ErrDeviceLost marks a device error the backend cannot recover from (CUDA's
// sticky errors: an illegal address, a kernel fault): every later call on
// the device fails or computes garbage, so the process must be restarted.
// Backends make their errors match it with errors.Is.
var ErrDeviceLost = errors.New("ml: device in an unrecoverable state")

// Tensor is backend-owned memory holding a rows×cols matrix.
type Tensor interface {
	DType() DType
	Rows() int
	Cols() int
}

// KVCache is the backend-owned paged key/value memory of all layers:
// numBlocks blocks of blockSize token slots, each slot holding numKVHeads×headDim
// keys and values. Slot s of the cache is block s/blockSize, offset s%blockSize.
type KVCache interface {
	NumBlocks() int
	BlockSize() int
}

// AttentionMeta describes one step's flat token batch for attention. All
// tensors are I32 and uploaded once per step.
type AttentionMeta struct {
	NumTokens   int
	NumSeqs     int
	TokenSeq    Tensor // [1, NumTokens]: index of the sequence each token belongs to
	Positions   Tensor // [1, NumTokens]: position of each token; it attends to keys at positions 0..pos of its sequence
	BlockTables Tensor // [NumSeqs, MaxBlocks]: KV block ids of each sequence, by logical block
	MaxBlocks   int
	MaxContext  int // the largest position+1 of any token in the step (lets kernels size their work)
	NumHeads    int
	NumKVHeads  int
	HeadDim     int
	Scale       float32
	// HostTokenSeq, when not nil, is a host copy of TokenSeq's NumTokens
	// entries, which a backend may use to plan its launches.
	HostTokenSeq []int32
	// Window, when positive, is a sliding attention window: a token at
	// position p attends to keys at positions max(0, p-Window+1)..p only
	// (Mistral's and Qwen's sliding_window, as transformers masks it).
	// Zero attends to the whole context. It may change between the
	// layers of one step.
	Window int
}

// DecoderLayer is one pre-norm decoder layer's weights in the layout a
// LayerFuser takes them: q, k and v stacked into one [qd+2kvd, H] matrix,
// gate and up into one [2I, H] (gate rows first). Biases and the per-head
// norms may be nil. A layer whose GateUp and Down are both nil has a
// sparse MLP (mixture of experts) that the model runs: FusedStep.MLP.
type DecoderLayer struct {
	InNorm, PostNorm                     Tensor
	QKV, O, GateUp, Down                 Tensor
	QKVBias, OBias, GateUpBias, DownBias Tensor
	// QNorm and KNorm are the [1, HeadDim] per-head RMSNorm weights of q
	// and k (LayerSpec.QKNorm), applied before RoPE.
	QNorm, KNorm Tensor
	// A sparse MLP's weights, for fusions that run it themselves (the hook
	// runs it otherwise): the router [E, H], the experts' gate/up stacked
	// [E·2I, H] (each expert's gate rows, then its up rows) and down
	// [E·H, I]; each token takes its TopK experts, their softmax weights
	// renormalized when NormTopK.
	Router, ExpGateUp, ExpDown Tensor
	TopK                       int
	NormTopK                   bool
}

// LayerSpec is the shape of a model's decoder layers as a fused
// implementation needs it: every layer is pre-norm attention over the
// paged cache (RoPE in the HF rotate_half layout) and then a dense
// SiLU-gated MLP, each added to the residual stream.
type LayerSpec struct {
	Hidden, Intermediate          int
	NumHeads, NumKVHeads, HeadDim int
	Eps                           float32
	// QKNorm: q and k are RMS-normed head by head before RoPE
	// (DecoderLayer.QNorm, KNorm).
	QKNorm bool
	// Windows holds each layer's sliding attention window (0: full
	// attention); nil means full attention everywhere.
	Windows []int
}

// LayerFuser is implemented by backends that run whole decoder layers with
// kernels of their own (ml/cuda folds norms, RoPE and residual adds into
// its GEMVs and runs a one-token step in one launch). The model states its
// layers once; the backend chooses, step by step, how to run them. A model
// on a backend without it composes the layers from the base ops, and
// ml/mltest's ReferenceLayers is that composition, which fused
// implementations are tested against.
type LayerFuser interface {
	// FusesLayers reports whether FuseLayers takes layers of spec; the
	// model then loads its weights in DecoderLayer's layout.
	FusesLayers(spec LayerSpec) bool
	// FuseLayers binds the layers, the final norm and the lm_head for
	// fused execution.
	FuseLayers(spec LayerSpec, layers []DecoderLayer, finalNorm, lmHead Tensor) (FusedLayers, error)
}

// FusedLayers runs the layers a LayerFuser bound.
type FusedLayers interface {
	// Forward runs every layer over a step of T tokens: h [T, Hidden]
	// holds the embedded tokens on entry and the residual stream after the
	// last layer on return (the final norm not applied); each layer's keys
	// and values are stored in st.Cache at st.Slots. It may return
	// ErrRetryStep (see there).
	Forward(h Tensor, st *FusedStep) error
	// Head writes logits[R, V] = lm_head · RMSNorm(x, final norm) for R rows
	// x [R, Hidden] of the residual stream; xn [R, Hidden] is scratch.
	Head(logits, x, xn Tensor) error
}

// FusedStep is a step's inputs for FusedLayers.Forward, with work tensors
// of T rows that the caller owns: XN and Down [T, Hidden], QKV [T,
// qd+2kvd], Attn [T, qd], GateUp [T, 2I], Act [T, I].
type FusedStep struct {
	Positions, InvFreq, Slots        Tensor
	Cache                            KVCache
	Meta                             *AttentionMeta
	XN, QKV, Attn, Down, GateUp, Act Tensor
	// MLP runs the sparse MLP of layer i (one without GateUp and Down):
	// h is the residual stream after the layer's attention, xn is h after
	// the layer's PostNorm, and MLP adds its output to h.
	MLP func(i int, h, xn Tensor) error
}

// SparseMLP runs layer i's sparse MLP through the step's hook (h the
// residual after the layer's attention, XN its post-attention norm).
func (st *FusedStep) SparseMLP(i int, h Tensor) error {
	if st.MLP == nil {
		return fmt.Errorf("%w: layer %d has a sparse MLP and the step no MLP hook", ErrUnsupported, i)
	}
	if err := st.MLP(i, h, st.XN); err != nil {
		return fmt.Errorf("layer %d: sparse MLP: %w", i, err)
	}
	return nil
}

// WeightAliaser is implemented by backends that can use host memory as a
// weight in place, without a copy: a memory-mapped checkpoint whose tensors
// are stored in the weight dtype. The weight is parts stacked row-wise (each
// a whole number of rows of cols little-endian values of dt), e.g. the gate
// and up projections of an MLP, which then run as one matmul. The memory
// must stay valid and unchanged until the tensor is freed. A backend that
// cannot use the memory as it is (dtype, alignment, layout) returns an error
// wrapping ErrUnsupported, and the caller copies it with LoadWeight instead.
// Such a weight is read by MatMul only (and, when it has one part, by every
// op that reads weights).
type WeightAliaser interface {
	AliasWeight(rows, cols int, dt DType, parts ...[]byte) (Tensor, error)
}

// ActivationDTyper is implemented by backends that compute activations in
// a dtype other than the weights': the CPU upcasts bf16/f16 weights and
// computes in f32. A KV cache of dtype "auto" takes the activations' dtype,
// so that keys and values are not rounded further than the activations
// they come from (rounding them to bf16 alone moves the logits of the tiny
// test checkpoints by up to 0.3).
type ActivationDTyper interface {
	ActivationDType(weights DType) DType
}

// KernelPreparer is implemented by backends that compile kernels at run
// time and only those a model asks for (ml/cuda with LazyKernels): the
// loader tells them, before the weights load, what the model will run, so
// that those compiles overlap the load.
type KernelPreparer interface {
	PrepareKernels(KernelNeeds)
}

// KernelNeeds is what a model will run: its attention head dim, the dtype
// its matmul weights are stored in, its KV cache's, and whether any layer
// has a sparse (MoE) MLP.
type KernelNeeds struct {
	HeadDim     int
	Weights, KV DType
	MoE         bool
}

// Backend creates tensors and runs ops on them.
type Backend interface {
	Name() string

	// NewTensor allocates a zeroed rows×cols tensor of dtype dt (F32, I32, or a weight dtype).
	NewTensor(dt DType, rows, cols int) (Tensor, error)
	// LoadWeight creates a weight matrix from host data of dtype src
	// (little-endian), stored as dtype store (F32, F16, BF16, or I8 with
	// per-row symmetric scales computed here).
	LoadWeight(rows, cols int, data []byte, src, store DType) (Tensor, error)
	// View is rows [start, start+rows) of t, sharing its memory (for steps
	// that use fewer rows than a scratch buffer holds).
	View(t Tensor, start, rows int) Tensor
	// UploadI32 and UploadF32 copy host data into the first len(src) elements of t.
	UploadI32(t Tensor, src []int32) error
	UploadF32(t Tensor, src []float32) error
	// Download copies the F32 tensor t to dst (len rows*cols), waiting for queued work.
	Download(dst []float32, t Tensor) error
	Free(t Tensor)

	NewKVCache(layers, numBlocks, blockSize, numKVHeads, headDim int, dt DType) (KVCache, error)
	FreeKVCache(c KVCache)

	// Embedding: dst[i] = table[ids[i]] (table of any weight dtype, dst F32).
	Embedding(dst, table, ids Tensor) error
	// RMSNorm: dst[i] = x[i] / rms(x[i]) * w.
	RMSNorm(dst, x, w Tensor, eps float32) error
	// AddRMSNorm: residual[i] += x[i]; dst[i] = RMSNorm(residual[i]).
	AddRMSNorm(residual, dst, x, w Tensor, eps float32) error
	// MatMul: dst[T,N] = x[T,K] · w[N,K]ᵀ (+ bias[1,N] when bias is non-nil).
	MatMul(dst, x, w, bias Tensor) error
	// RoPE rotates x[T, numHeads*headDim] in place, HF "rotate_half" layout,
	// by positions[1,T] and invFreq[1, headDim/2].
	RoPE(x, positions, invFreq Tensor, numHeads, headDim int) error
	// WriteKV stores k and v ([T, numKVHeads*headDim]) of layer at slots[1,T].
	WriteKV(c KVCache, layer int, k, v, slots Tensor) error
	// Attention: dst[T, numHeads*headDim] = causal softmax(q·Kᵀ·scale)·V over
	// each token's sequence in the paged cache (GQA: head h uses KV head
	// h/(numHeads/numKVHeads)).
	Attention(dst, q Tensor, c KVCache, layer int, meta *AttentionMeta) error
	// SiLUMul: dst[T,I] = silu(gateUp[T,:I]) * gateUp[T,I:].
	SiLUMul(dst, gateUp Tensor) error
	// GatherRows: dst[i] = src[idx[i]] (F32).
	GatherRows(dst, src, idx Tensor) error

	// RMSNormHeads normalizes x[T, n*headDim] in place head by head: each
	// headDim-wide slice of a row is divided by its own rms and scaled by
	// w[1, headDim] (Qwen3's q_norm and k_norm, before RoPE).
	RMSNormHeads(x, w Tensor, headDim int, eps float32) error
	// TopKSoftmax routes tokens to experts: for each row t of logits[T, E]
	// (F32) it takes the softmax over the E experts (in float32 or wider),
	// and writes the k largest probabilities to weights[t*k+j] (F32) and
	// their expert indices to ids[t*k+j] (I32), largest first, the lower
	// index first on ties. With normalize the k weights are divided by
	// their sum (norm_topk_prob). weights and ids are read as flat arrays
	// of at least T*k elements, like index tensors.
	TopKSoftmax(weights, ids, logits Tensor, k int, normalize bool) error
	// MatMulExperts is the grouped expert matmul of a mixture of experts:
	// w holds E experts' [N, K] matrices stacked as one [E*N, K] weight,
	// and dst[r, N] = x[r/f, K] · w[experts[r]]ᵀ for each of the R rows of
	// dst, where f = R / x.Rows() (so each token's row of x feeds its f
	// consecutive expert rows). Only the experts named in experts are
	// read; a backend groups rows by expert for large R.
	MatMulExperts(dst, x, w, experts Tensor) error
	// ScatterAdd: dst[idx[i]] += scale[i] * src[i] for each row i of src
	// (F32; scale nil means 1). A run of equal adjacent indices (a
	// token's expert rows) is summed in increasing i, so its result is
	// deterministic; repeats that are not adjacent may meet in any order.
	ScatterAdd(dst, src, idx, scale Tensor) error

	// Sync waits for all queued work.
	Sync() error
	Close() error
}

// Collective is one rank's end of a communicator that joins the ranks of a
// tensor-parallel group, one backend (device) each. Its calls are
// collective: every rank makes the same calls in the same order, each from
// its own goroutine, and a call returns on a rank once that rank's part is
// done (queued, on an asynchronous backend).
type Collective interface {
	// Rank is this end's index in the group, Size the group's.
	Rank() int
	Size() int
	// AllReduceSum replaces the F32 tensor t of every rank, in place, by
	// the elementwise sum of all ranks' t (of one shape). Every rank gets
	// the same bits. On an asynchronous backend it is queued on the
	// rank's stream after the rank's earlier ops.
	AllReduceSum(t Tensor) error
	// Abort makes the pending and later calls of every rank fail with
	// ErrCollectiveAborted: a rank that fails half-way through a step
	// would otherwise leave the others waiting in a collective forever.
	Abort(cause error)
	// Close releases this rank's end.
	Close() error
}

// ErrCollectiveAborted is returned by the calls of a Collective whose
// group was aborted.
var ErrCollectiveAborted = errors.New("ml: collective aborted")
