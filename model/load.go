package model

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/weights"
)

// More sentinel errors (see model.go for the others).
var (
	// ErrBadOption: an unsupported --dtype, --quantization, --load-format
	// or --kv-cache-dtype value.
	ErrBadOption = errors.New("model: unsupported option")
	// ErrNotFound: the model path is neither a directory with config.json
	// nor a built-in model name.
	ErrNotFound = errors.New("model: not found")
	// ErrBadBatch: a Forward batch that is inconsistent or out of range.
	ErrBadBatch = errors.New("model: bad batch")
)

// Factory builds a model of one architecture from its config and weights.
type Factory func(cfg *Config, w *Weights) (Model, error)

// registry maps HF architecture names to factories. It is written only by
// Register from init functions of architecture packages.
var registry = struct {
	sync.RWMutex
	m map[string]Factory
}{m: map[string]Factory{}}

// Register makes an architecture loadable by name; it panics on a
// duplicate name or a nil factory (both programming errors).
func Register(arch string, f Factory) {
	registry.Lock()
	defer registry.Unlock()
	if f == nil {
		panic("model: Register " + arch + " with nil factory")
	}
	if _, dup := registry.m[arch]; dup {
		panic("model: architecture " + arch + " registered twice")
	}
	registry.m[arch] = f
}

// Architectures lists the registered architecture names, sorted.
func Architectures() []string {
	registry.RLock()
	defer registry.RUnlock()
	out := make([]string, 0, len(registry.m))
	for k := range registry.m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func lookup(cfg *Config) (Factory, string, error) {
	registry.RLock()
	defer registry.RUnlock()
	for _, a := range cfg.Architectures {
		if f, ok := registry.m[a]; ok {
			return f, a, nil
		}
	}
	sup := make([]string, 0, len(registry.m))
	for k := range registry.m {
		sup = append(sup, k)
	}
	sort.Strings(sup)
	return nil, "", fmt.Errorf("%w: %v (supported: %s)", ErrUnsupportedArch, cfg.Architectures, strings.Join(sup, ", "))
}

// Options resolved from LoadOptions.
type resolved struct {
	format   string   // safetensors | dummy
	ckpt     ml.DType // dtype of the checkpoint's tensors (dummy: generated in)
	compute  ml.DType // --dtype: storage of the matmul weights before quantization
	store    ml.DType // storage of matmul weights: compute, or I8
	kvAuto   bool     // --kv-cache-dtype auto: the backend's activation dtype
	kv       ml.DType
	quantize bool
	// prequantized: the checkpoint's weights are quantized (FP8) and its
	// other tensors keep the compute dtype.
	prequantized bool
}

// CheckOptions validates the option strings (--load-format, --dtype,
// --quantization, --kv-cache-dtype) before anything is read or downloaded,
// so a typo fails at once.
func CheckOptions(o LoadOptions) error {
	_, err := resolveOptions(&Config{}, o)
	return err
}

func resolveOptions(cfg *Config, o LoadOptions) (resolved, error) {
	var r resolved
	switch f := strings.ToLower(o.LoadFormat); f {
	case "", "auto", "safetensors":
		r.format = "safetensors"
	case "dummy":
		r.format = "dummy"
	default:
		return r, fmt.Errorf("%w: --load-format %q (supported: auto, safetensors, dummy)", ErrBadOption, o.LoadFormat)
	}
	ck, err := ParseDType(cfg.CheckpointDType())
	if err != nil {
		return r, fmt.Errorf("%w: config.json dtype %q (supported: float32, bfloat16, float16)", ErrBadConfig, cfg.CheckpointDType())
	}
	r.ckpt = ck
	switch strings.ToLower(o.DType) {
	case "", "auto":
		r.compute = ck
	default:
		if r.compute, err = ParseDType(o.DType); err != nil {
			return r, fmt.Errorf("%w: --dtype %q (supported: auto, float32, bfloat16, float16)", ErrBadOption, o.DType)
		}
	}
	r.store = r.compute
	q, err := cfg.Quantized()
	if err != nil {
		return r, err
	}
	if q != "" {
		// A pre-quantized checkpoint is served as it is quantized (as vLLM
		// reads quantization_config); --quantization may only repeat it.
		if oq := strings.ToLower(o.Quantization); oq != "" && oq != strings.TrimSuffix(q, "-block") {
			return r, fmt.Errorf("%w: --quantization %q for a checkpoint quantized as %s (leave it unset)", ErrBadOption, o.Quantization, q)
		}
		r.quantize, r.store, r.prequantized = true, ml.F8, true
		if q == "fp8-block" && o.Quantization == "" {
			// No kernel reads block scales yet: the weights are widened at
			// load to --dtype, exactly up to its rounding (a per-row FP8
			// store would round them a second time; --quantization fp8
			// asks for that, for the memory).
			r.store = r.compute
		}
		return resolveKV(r, o)
	}
	switch strings.ToLower(o.Quantization) {
	case "", "none":
	case "int8":
		r.quantize, r.store = true, ml.I8
	case "fp8":
		r.quantize, r.store = true, ml.F8
	default:
		return r, fmt.Errorf("%w: --quantization %q (supported: int8, fp8, or none)", ErrBadOption, o.Quantization)
	}
	return resolveKV(r, o)
}

// resolveKV completes r with --kv-cache-dtype.
func resolveKV(r resolved, o LoadOptions) (resolved, error) {
	switch strings.ToLower(o.KVCacheDType) {
	case "", "auto":
		r.kv, r.kvAuto = r.compute, true
	case "fp8", "fp8_e4m3":
		// E4M3 with scale 1, as vLLM's fp8 cache without calibrated scales.
		r.kv = ml.F8
	default:
		var err error
		if r.kv, err = ParseDType(o.KVCacheDType); err != nil {
			return r, fmt.Errorf("%w: --kv-cache-dtype %q (supported: auto, float32, bfloat16, float16, fp8, fp8_e4m3)", ErrBadOption, o.KVCacheDType)
		}
	}
	return r, nil
}

// Load loads a model: path is a Hugging Face model directory (config.json
// plus model.safetensors or a sharded index), or with LoadFormat "dummy" a
// directory holding only config.json or a built-in model name (see
// BuiltinModels). opts.Backend nil means a CPU backend over all cores,
// closed with the model.
func Load(path string, opts LoadOptions) (Model, error) {
	return LoadContext(context.Background(), path, opts)
}

// LoadContext is Load that gives up between tensors once ctx is done (a
// SIGTERM while a large checkpoint loads), returning ctx's error.
func LoadContext(ctx context.Context, path string, opts LoadOptions) (Model, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, dir, err := locate(path)
	if err != nil {
		return nil, err
	}
	r, err := resolveOptions(cfg, opts)
	if err != nil {
		return nil, err
	}
	factory, arch, err := lookup(cfg)
	if err != nil {
		return nil, err
	}
	w := &Weights{Config: cfg, DType: r.store, Compute: r.compute, KVDType: r.kv, Logger: log,
		ckpt: r.ckpt, seed: uint64(opts.Seed), ctx: ctx, prequantized: r.prequantized, times: &loadTimes{}}
	if r.format == "safetensors" {
		if dir == "" {
			return nil, fmt.Errorf("%w: %q is a built-in config without local weights; use --load-format dummy or download the model", ErrNotFound, path)
		}
		src, err := weights.Open(dir)
		if err != nil {
			return nil, fmt.Errorf("model: loading %s: %w", dir, err)
		}
		// The backend copies what it keeps, unless the factory took the
		// mapping over (Keep) to use weights in place.
		defer func() {
			if !w.kept {
				src.Close()
			}
		}()
		w.src = src
	}
	be := opts.Backend
	if tp := opts.TensorParallel; tp != nil {
		if tp.Size() < 1 || len(tp.Comms) != tp.Size() || (be != nil && be != tp.Backends[0]) {
			return nil, fmt.Errorf("%w: a tensor-parallel group of %d backends and %d collectives (and Backend its first)",
				ErrBadOption, tp.Size(), len(tp.Comms))
		}
		for r, c := range tp.Comms {
			if c.Rank() != r || c.Size() != tp.Size() {
				return nil, fmt.Errorf("%w: collective %d is rank %d of %d, want rank %d of %d", ErrBadOption, r, c.Rank(), c.Size(), r, tp.Size())
			}
		}
		be, opts.Backend = tp.Backends[0], tp.Backends[0]
		w.TP = tp
	}
	if be == nil {
		be = cpu.New(cpu.Options{Logger: log})
	}
	w.Backend = be
	if r.kvAuto {
		if a, ok := be.(ml.ActivationDTyper); ok {
			w.KVDType = a.ActivationDType(r.compute)
			r.kv = w.KVDType
		}
	}
	needs := ml.KernelNeeds{HeadDim: cfg.HeadDim, Weights: r.store, KV: r.kv}
	for i := range cfg.NumHiddenLayers {
		needs.MoE = needs.MoE || cfg.SparseLayer(i)
	}
	backends := []ml.Backend{be}
	if w.TP != nil {
		backends = w.TP.Backends
	}
	for _, b := range backends {
		if p, ok := b.(ml.KernelPreparer); ok {
			p.PrepareKernels(needs)
		}
	}
	log.Info("loading model", "path", path, "arch", arch, "format", r.format,
		"dtype", r.compute, "weights", r.store, "kv_cache_dtype", r.kv, "backend", be.Name())
	start := time.Now()
	m, err := factory(cfg, w)
	if err != nil {
		if opts.Backend == nil {
			be.Close()
		}
		return nil, err
	}
	log.Info("weights loaded", "seconds", fmt.Sprintf("%.3f", time.Since(start).Seconds()),
		"get_seconds", fmt.Sprintf("%.3f", time.Duration(w.times.get.Load()).Seconds()),
		"upload_seconds", fmt.Sprintf("%.3f", time.Duration(w.times.upload.Load()).Seconds()))
	if tp := opts.TensorParallel; tp != nil {
		if p, ok := m.(TensorParalleler); !ok || p.TensorParallelSize() != tp.Size() {
			m.Close()
			return nil, fmt.Errorf("%w: architecture %s does not support tensor parallelism", ErrBadOption, arch)
		}
	}
	if opts.Backend == nil {
		return &owning{Model: m, be: be}, nil
	}
	return m, nil
}

// owning closes the backend Load created along with the model.
type owning struct {
	Model
	be ml.Backend
}

func (o *owning) Close() error {
	return errors.Join(o.Model.Close(), o.be.Close())
}

// Unwrap returns the architecture's model (for benchmarks and tests).
func (o *owning) Unwrap() Model { return o.Model }

// locate finds the config: a directory's config.json, else a built-in
// name. dir is "" for a built-in.
func locate(path string) (*Config, string, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		cfg, err := ReadConfig(path)
		return cfg, path, err
	}
	if cfg, ok := BuiltinConfig(path); ok {
		return cfg, "", nil
	}
	return nil, "", fmt.Errorf("%w: %q is neither a directory with %s nor a built-in model (%s)",
		ErrNotFound, path, ConfigFile, strings.Join(BuiltinModels(), ", "))
}

// Weights is what a Factory loads tensors through: from the checkpoint, or
// generated for --load-format dummy. Shapes are checked here.
type Weights struct {
	Config  *Config
	Backend ml.Backend
	// DType is the storage of matmul weights (I8 when quantized); Compute
	// is --dtype (for tensors that are not quantized, e.g. an untied
	// embedding); KVDType is the KV cache's.
	DType, Compute, KVDType ml.DType
	Logger                  *slog.Logger

	src  weights.Source // nil: dummy
	ckpt ml.DType
	seed uint64
	ctx  context.Context // nil: never cancelled
	// kept: the factory owns src (Keep), so weights may alias its memory.
	kept bool
	// prequantized: the checkpoint stores its matmul weights in FP8 with
	// scales (Get dequantizes them); its other weights keep Compute.
	prequantized bool
	// record, when set, sees every dummy tensor generated (WriteDummyCheckpoint).
	record func(*weights.Tensor)
	// Bytes counts the memory of the tensors loaded through Load; Aliased
	// the part of it used in place (in the mapped checkpoint, or the
	// generated dummy tensors), not copied.
	Bytes, Aliased int64
	// TP is the tensor-parallel group the model is split over (nil: one
	// backend); a factory loads rank r's shard through ForRank(r).
	TP   *TensorParallel
	rank int
	// times is shared by every rank's loader (ForRank copies the pointer).
	times *loadTimes
}

// loadTimes adds up where a load's time goes: getting the tensors (read
// from the checkpoint, dequantized, or generated) and handing them to the
// backend (converted and copied to the device). Ranks load concurrently,
// so with several the sums can exceed the wall time.
type loadTimes struct{ get, upload atomic.Int64 } // nanoseconds

// addElapsed adds the time since start to d.
func addElapsed(d *atomic.Int64, start time.Time) { d.Add(int64(time.Since(start))) }

// Ranks is the size of the tensor-parallel group (1 without one).
func (w *Weights) Ranks() int {
	if w.TP == nil {
		return 1
	}
	return w.TP.Size()
}

// Rank is the rank whose shard w loads (0 without a group).
func (w *Weights) Rank() int { return w.rank }

// ForRank is w loading onto rank r's backend, with its own Bytes count.
func (w *Weights) ForRank(r int) *Weights {
	c := *w
	c.rank, c.Bytes, c.Aliased = r, 0, 0
	if w.TP != nil {
		c.Backend = w.TP.Backends[r]
	}
	return &c
}

// GetSlice is Get of the range [lo, hi) of the tensor's dimension dim
// (0: rows, 1: columns of a matrix): a rank's shard. Rows share the
// checkpoint's mapped bytes; columns are copied, the shard's bytes only.
func (w *Weights) GetSlice(name string, shape []int, dim, lo, hi int) (*weights.Tensor, error) {
	t, err := w.Get(name, shape...)
	if err != nil {
		return nil, err
	}
	if dim < 0 || dim >= len(shape) || len(shape) > 2 || lo < 0 || hi > shape[dim] || lo >= hi {
		return nil, fmt.Errorf("%w: slice [%d,%d) of dimension %d of %q %v", ErrShape, lo, hi, dim, name, shape)
	}
	if lo == 0 && hi == shape[dim] {
		return t, nil
	}
	es := t.DType.Size()
	out := &weights.Tensor{Name: name, DType: t.DType, Shape: slices.Clone(shape)}
	out.Shape[dim] = hi - lo
	inner := es // bytes of one index of dim
	if dim == 0 && len(shape) == 2 {
		inner = shape[1] * es
	}
	if dim == 0 {
		out.Data = t.Data[lo*inner : hi*inner : hi*inner]
		return out, nil
	}
	rows, cols, n := shape[0], shape[1], hi-lo
	out.Data = make([]byte, rows*n*es)
	for r := range rows {
		copy(out.Data[r*n*es:(r+1)*n*es], t.Data[(r*cols+lo)*es:(r*cols+hi)*es])
	}
	return out, nil
}

// Keep hands the checkpoint's memory mapping over to the caller, which
// closes it after freeing every tensor loaded through w: from then on
// Load, Upload and LoadParts let a backend that can (ml.WeightAliaser) use
// tensors stored in the weight dtype in place, in the mapped file, instead
// of copying them. For dummy weights it returns a no-op closer (generated
// tensors are aliased too: they are garbage-collected memory).
func (w *Weights) Keep() io.Closer {
	w.kept = true
	if w.src == nil {
		return nopCloser{}
	}
	return w.src
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// Dummy reports whether weights are generated.
func (w *Weights) Dummy() bool { return w.src == nil }

// Has reports whether the checkpoint holds a tensor (always true for dummy).
func (w *Weights) Has(name string) bool {
	if w.src == nil {
		return true
	}
	return slices.Contains(w.src.Names(), name)
}

// Get returns the named tensor, which must have the given shape.
func (w *Weights) Get(name string, shape ...int) (*weights.Tensor, error) {
	if err := w.cancelled(); err != nil {
		return nil, err
	}
	if w.times != nil {
		defer addElapsed(&w.times.get, time.Now())
	}
	if w.src == nil {
		t := w.dummy(name, shape)
		if w.record != nil {
			w.record(t)
		}
		return t, nil
	}
	t, err := w.src.Tensor(name)
	if err != nil {
		if errors.Is(err, weights.ErrMissingTensor) {
			return nil, fmt.Errorf("%w: %q: %w", ErrMissingTensor, name, err)
		}
		return nil, fmt.Errorf("model: tensor %q: %w", name, err)
	}
	if !slices.Equal(t.Shape, shape) {
		return nil, fmt.Errorf("%w: tensor %q has shape %v, want %v", ErrShape, name, t.Shape, shape)
	}
	if t.DType == ml.F8 {
		return w.dequantize(name, t)
	}
	return t, nil
}

// dequantize widens an FP8 checkpoint tensor to f32 with its scales:
// <name>_scale holding one value or one per output row, or <name>_scale_inv
// holding one per block of the config's weight_block_size (the scale the
// codes are multiplied by, whatever its name says). The backend then
// stores the values as DType (F8 again with a scale per row, which gives
// back the checkpoint's codes when its scales were per row).
func (w *Weights) dequantize(name string, t *weights.Tensor) (*weights.Tensor, error) {
	rows, n := 1, len(t.Data)
	if len(t.Shape) > 0 {
		rows = t.Shape[0]
	}
	if rows == 0 || n%rows != 0 {
		return nil, fmt.Errorf("%w: FP8 tensor %q has shape %v", ErrShape, name, t.Shape)
	}
	cols := n / rows
	// Row r's scales: element (r, c) has rowScales(r)[c/step].
	var rowScales func(r int) []float32
	step := cols
	if st, err := w.src.Tensor(name + "_scale"); err == nil {
		scales := st.ToF32()
		switch len(scales) {
		case 1:
			rowScales = func(int) []float32 { return scales }
		case rows:
			rowScales = func(r int) []float32 { return scales[r : r+1] }
		default:
			return nil, fmt.Errorf("%w: FP8 tensor %q %v has %d scales (want 1 or %d)", ErrShape, name, t.Shape, len(scales), rows)
		}
	} else if st, err := w.src.Tensor(name + "_scale_inv"); err == nil {
		var bs []int
		if q := w.Config.QuantizationConfig; q != nil {
			bs = q.WeightBlockSize
		}
		if len(bs) != 2 {
			return nil, fmt.Errorf("%w: FP8 tensor %q has block scales %q but the config no weight_block_size", ErrBadConfig, name, name+"_scale_inv")
		}
		br, bc := (rows+bs[0]-1)/bs[0], (cols+bs[1]-1)/bs[1]
		scales := st.ToF32()
		if len(scales) != br*bc {
			return nil, fmt.Errorf("%w: FP8 tensor %q %v has %d block scales, want %dx%d for blocks of %v", ErrShape, name, t.Shape, len(scales), br, bc, bs)
		}
		rowScales = func(r int) []float32 { return scales[r/bs[0]*bc : (r/bs[0]+1)*bc] }
		step = bs[1]
	} else {
		return nil, fmt.Errorf("%w: FP8 tensor %q has no scale (%q or %q)", ErrMissingTensor, name, name+"_scale", name+"_scale_inv")
	}
	out := make([]byte, 4*n)
	for r := range rows {
		sr := rowScales(r)
		for c, q := range t.Data[r*cols : (r+1)*cols] {
			binary.LittleEndian.PutUint32(out[4*(r*cols+c):], math.Float32bits(sr[c/step]*ml.F8Value(q)))
		}
	}
	if r, ok := w.src.(weights.Releaser); ok {
		r.Release(t.Data)
	}
	return &weights.Tensor{Name: name, DType: ml.F32, Shape: t.Shape, Data: out}, nil
}

// checkpointFP8 reports whether the checkpoint stores the named tensor
// (the first of a stack "a+...+b") in FP8.
func (w *Weights) checkpointFP8(name string) bool {
	first, _, _ := strings.Cut(name, "+...+")
	t, err := w.src.Tensor(first)
	return err == nil && t.DType == ml.F8
}

// dummy makes a deterministic tensor: norm weights are ones (so
// activations keep their scale), everything else N(0, 0.02²) like an HF
// initializer.
func (w *Weights) dummy(name string, shape []int) *weights.Tensor {
	t := &weights.Tensor{Name: name, DType: w.ckpt, Shape: shape}
	if strings.HasSuffix(name, "norm.weight") {
		n := 1
		for _, d := range shape {
			n *= d
		}
		ones := make([]float32, n)
		for i := range ones {
			ones[i] = 1
		}
		t.DType = ml.F32
		t.Data = make([]byte, 4*n)
		weights.ConvertFromF32(t.Data, ones, ml.F32)
		return t
	}
	t.Data = weights.Random(w.ckpt, shape, w.seed, name, 0.02)
	return t
}

// Load creates a backend tensor rows×cols from the named tensor stored as
// store (norms and biases: F32; matmul weights: w.DType).
func (w *Weights) Load(name string, store ml.DType, rows, cols int, shape ...int) (ml.Tensor, error) {
	if len(shape) == 0 {
		shape = []int{rows, cols}
	}
	t, err := w.Get(name, shape...)
	if err != nil {
		return nil, err
	}
	return w.upload(name, [][]byte{t.Data}, t.DType, store, rows, cols)
}

// cancelled is the load context's error, checked before each tensor.
func (w *Weights) cancelled() error {
	if w.ctx == nil {
		return nil
	}
	if err := w.ctx.Err(); err != nil {
		return fmt.Errorf("model: loading stopped: %w", err)
	}
	return nil
}

// Part is one checkpoint tensor of a row-wise concatenation (LoadParts)
// and its expected shape.
type Part struct {
	Name  string
	Shape []int
}

// LoadParts loads tensors of one dtype as one rows×cols tensor stored as
// store, their flattened data back to back (row-wise for weights of one
// width): q, k and v, or the gate and up projections, as one matmul. The
// parts are used in place where the backend can (see Keep).
func (w *Weights) LoadParts(parts []Part, store ml.DType, rows, cols int) (ml.Tensor, error) {
	if len(parts) == 0 {
		return nil, fmt.Errorf("%w: no parts", ErrShape)
	}
	data := make([][]byte, len(parts))
	var dt ml.DType
	for i, p := range parts {
		t, err := w.Get(p.Name, p.Shape...)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			dt = t.DType
		} else if t.DType != dt {
			return nil, fmt.Errorf("%w: %q is %s but %q is %s", ErrShape, parts[0].Name, dt, p.Name, t.DType)
		}
		data[i] = t.Data
	}
	name := parts[0].Name
	if len(parts) > 1 {
		name = parts[0].Name + "+...+" + parts[len(parts)-1].Name
	}
	return w.upload(name, data, dt, store, rows, cols)
}

// Upload creates a backend tensor from raw data.
func (w *Weights) Upload(name string, data []byte, src, store ml.DType, rows, cols int) (ml.Tensor, error) {
	return w.upload(name, [][]byte{data}, src, store, rows, cols)
}

// upload creates a backend tensor from parts stacked row-wise: aliased in
// place when the caller keeps the source (Keep), the tensor is stored in
// its source dtype and the backend can; otherwise copied (and converted)
// by LoadWeight.
func (w *Weights) upload(name string, parts [][]byte, src, store ml.DType, rows, cols int) (ml.Tensor, error) {
	if err := w.cancelled(); err != nil {
		return nil, err
	}
	if w.prequantized && store == ml.F8 && w.src != nil && !w.checkpointFP8(name) {
		// Left unquantized in the checkpoint (its quantization_config's
		// ignore list: lm_head, say): kept so, as vLLM keeps it.
		store = w.Compute
	}
	if w.times != nil {
		defer addElapsed(&w.times.upload, time.Now())
	}
	var x ml.Tensor
	// Generated (dummy) parts are separate garbage-collected objects: a
	// backend that joins parts adjacent in memory would span two of them
	// with one slice, which keeps only the first alive. So only one-part
	// dummy tensors are aliased; mapped checkpoint parts always are.
	gcParts := w.src == nil && len(parts) > 1
	if wa, ok := w.Backend.(ml.WeightAliaser); ok && w.kept && src == store && !gcParts {
		var err error
		x, err = wa.AliasWeight(rows, cols, store, parts...)
		if err != nil && !errors.Is(err, ml.ErrUnsupported) {
			return nil, fmt.Errorf("model: loading %q: %w", name, err)
		}
		if x != nil {
			w.Aliased += int64(rows) * int64(cols) * int64(store.Size())
		}
	}
	if x == nil {
		data := parts[0]
		if len(parts) > 1 {
			n := 0
			for _, p := range parts {
				n += len(p)
			}
			data = make([]byte, 0, n)
			for _, p := range parts {
				data = append(data, p...)
			}
		}
		var err error
		if x, err = w.Backend.LoadWeight(rows, cols, data, src, store); err != nil {
			return nil, fmt.Errorf("model: loading %q: %w", name, err)
		}
		// The backend has its own copy: the checkpoint's pages of it need
		// not stay resident while the rest loads (converting a checkpoint
		// would otherwise hold all of it and all of the copy at once).
		if r, ok := w.src.(weights.Releaser); ok {
			for _, p := range parts {
				r.Release(p)
			}
		}
	}
	w.Bytes += int64(rows) * int64(cols) * int64(store.Size())
	if store == ml.I8 || store == ml.F8 {
		w.Bytes += 4 * int64(rows) // the row scales
	}
	return x, nil
}
