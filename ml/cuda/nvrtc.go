package cuda

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// kernelUnits is the number of parallel NVRTC compiles of the kernel source
// (KUNIT in kernels/common.cu): NVRTC compiles one program on one thread,
// and the whole source takes minutes that way. Units 9 to 12, 16 to 19 and
// 25 to 28 each hold one decode-step kernel (stepUnit), the largest
// compiles; 13 to 15 and 21 the kernels of FP8 weights and an FP8 KV cache
// (fp8Units). The others each take a few seconds; the slowest of them is
// what a server on a machine without the cache waits for.
const kernelUnits = 38

// stepVariant is a decode-step kernel's kind of layer: dense with bf16 or
// FP8 weights, or bf16 with sparse (MoE) MLPs, each a kernel of its own
// (see decodeStep in kernels/step.cu).
type stepVariant int

const (
	stepDense stepVariant = iota
	stepDenseF8
	stepMoE
)

// stepVariants are every variant, in the order of their units.
var stepVariants = [...]stepVariant{stepDense, stepDenseF8, stepMoE}

// stepVariantFor is the decode-step kernel for FP8 or bf16 weights, with
// sparse MLPs or not; false when there is none (the step's sparse MLPs
// read bf16 experts only).
func stepVariantFor(f8, moe bool) (stepVariant, bool) {
	switch {
	case f8 && moe:
		return 0, false
	case f8:
		return stepDenseF8, true
	case moe:
		return stepMoE, true
	}
	return stepDense, true
}

// stepUnit is the kernel unit of the decode-step kernel for epl elements
// per lane (1, 2, 4 or 8) and variant v.
func stepUnit(epl int, v stepVariant) int {
	return [...]int{stepDense: 9, stepDenseF8: 16, stepMoE: 25}[v] + bits.TrailingZeros(uint(epl))
}

// nvrtcOptions are the options of every kernel unit's compile.
var nvrtcOptions = []string{"-std=c++17", "-default-device", "--extra-device-vectorization"}

// isStepUnit reports whether unit u holds a decode-step kernel.
func isStepUnit(u int) bool { return u >= 9 && u <= 12 || u >= 16 && u <= 19 || u >= 25 && u <= 28 }

// fp8Units are the units of the FP8 kernels outside the decode step.
var fp8Units = [...]int{13, 14, 15, 21}

// isFP8Unit reports whether unit u is one of fp8Units.
func isFP8Unit(u int) bool { return slices.Contains(fp8Units[:], u) }

// isDeferredUnit reports whether a backend with these options leaves unit
// u's compile until something asks for it (never, for an unused unit).
func isDeferredUnit(u int, lazy bool, fusedMaxT int) bool {
	return lazy && isOnDemandUnit(u) || unusedUnit(u, fusedMaxT)
}

// dgemvRowUnits are the units of the fused GEMVs for steps of 2 and of 3-4
// rows (dgemvM), bf16 and FP8: a backend whose FusedDecodeMaxT never
// launches them does not compile them (a third of the compile work).
var dgemvRowUnits = map[int][]int{2: {5, 6, 14}, 4: {7, 8, 24, 33, 15}}

// unusedUnit reports whether unit u holds only fused GEMVs for more rows
// than a step of fusedMaxT tokens takes.
func unusedUnit(u, fusedMaxT int) bool {
	for m, us := range dgemvRowUnits {
		if dgemvM(max(fusedMaxT, 1)) < m && slices.Contains(us, u) {
			return true
		}
	}
	return false
}

// dgemvRows is the M of a fused GEMV kernel's name (dgemv_<epi>[_f8]_<M>_<KS>),
// 0 for other kernels.
func dgemvRows(name string) int {
	f := strings.Split(name, "_")
	if len(f) < 4 || f[0] != "dgemv" {
		return 0
	}
	m, err := strconv.Atoi(f[len(f)-2])
	if err != nil {
		return 0
	}
	return m
}

// isOnDemandUnit reports whether unit u compiles only when asked for under
// LazyKernels.
func isOnDemandUnit(u int) bool { return isStepUnit(u) || isFP8Unit(u) }

// isFP8Kernel reports whether a kernel of that name reads FP8 weights or
// an FP8 cache (and may lie in an fp8Unit).
func isFP8Kernel(name string) bool { return strings.Contains(name, "_f8") }

// kernelUnit is one unit's compile, or its image from the cache: done is
// closed once img or err is set; mod is its module once loaded.
type kernelUnit struct {
	done chan struct{}
	img  []byte
	err  error
	secs float64 // compile time; 0 when cached
	mod  uintptr
	// start starts a deferred compile (nil: started, or cached); begin
	// calls it once.
	start func()
	once  sync.Once
	begun atomic.Bool // begin was called
}

// begin starts ku's compile if it was deferred and has not started.
func (ku *kernelUnit) begin() {
	ku.once.Do(func() {
		ku.begun.Store(true)
		if ku.start != nil {
			ku.start()
		}
	})
}

// pending reports whether ku's compile was deferred and never begun.
func (ku *kernelUnit) pending() bool { return ku.start != nil && !ku.begun.Load() }

// compileKernels starts getting src's kernel units for the device, each as
// a loadable image (CUBIN, else PTX) from the on-disk cache or compiled, in
// parallel, and returns at once. A unit for which deferred is true and that
// is not in the cache compiles only once its begin is called. The cache
// key covers the source, the NVRTC version, the architecture, the options,
// the unit and the driver version (a cached PTX image is JIT-compiled by
// the driver that loads it).
func (l *libs) compileKernels(src []byte, major, minor, driver int32, cacheDir string, deferred func(u int) bool, log *slog.Logger) ([]*kernelUnit, error) {
	t0 := time.Now()
	var vmaj, vmin int32
	if err := l.nvcall(l.nvrtcVersion, "nvrtcVersion", uintptr(unsafe.Pointer(&vmaj)), uintptr(unsafe.Pointer(&vmin))); err != nil {
		return nil, err
	}
	opts := nvrtcOptions
	h := sha256.New()
	fmt.Fprintf(h, "nvrtc %d.%d sm_%d%d driver %d %v units %d\n", vmaj, vmin, major, minor, driver, opts, kernelUnits)
	h.Write(src)
	key := hex.EncodeToString(h.Sum(nil))[:32]
	if cacheDir == "" {
		if d, err := os.UserCacheDir(); err == nil {
			cacheDir = filepath.Join(d, "llmserve", "cuda")
		}
	}

	// At most one compile per core (NVRTC uses one thread), the units every
	// step needs first and the decode-step units (only one of which a model
	// uses) after them.
	workers := max(1, runtime.NumCPU())
	var order []int
	for u := range kernelUnits {
		if !isStepUnit(u) {
			order = append(order, u)
		}
	}
	for u := range kernelUnits {
		if isStepUnit(u) {
			order = append(order, u)
		}
	}
	queue := make(chan func(), kernelUnits)
	defer close(queue)
	for range workers {
		go func() {
			for job := range queue {
				job()
			}
		}()
	}
	units := make([]*kernelUnit, kernelUnits)
	for _, u := range order {
		ku := &kernelUnit{done: make(chan struct{})}
		units[u] = ku
		var path string
		if cacheDir != "-" && cacheDir != "" {
			path = filepath.Join(cacheDir, fmt.Sprintf("%s-%d.bin", key, u))
			if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
				ku.img = b
				close(ku.done)
				continue
			}
		}
		job := func() {
			defer close(ku.done)
			start := time.Now()
			uopts := append(slices.Clone(opts), fmt.Sprintf("-DKUNIT_ID=%d", u))
			// Prefer SASS for the exact architecture; fall back to PTX for
			// the newest virtual architecture this NVRTC knows (the driver
			// JITs it).
			img, err := l.nvrtcCompile(src, append(uopts, fmt.Sprintf("--gpu-architecture=sm_%d%d", major, minor)), true)
			if err != nil {
				var err2 error
				img, err2 = l.nvrtcCompile(src, append(uopts, fmt.Sprintf("--gpu-architecture=compute_%d%d", major, minor)), false)
				if err2 != nil {
					ku.err = fmt.Errorf("cuda: compiling kernel unit %d for sm_%d%d: %w (PTX fallback: %v)", u, major, minor, err, err2)
					return
				}
			}
			ku.img, ku.secs = img, time.Since(start).Seconds()
			if path != "" {
				_ = writeCacheFile(path, img)
			}
		}
		if deferred != nil && deferred(u) {
			ku.start = func() {
				go func() {
					job()
					log.Info("cuda: kernel unit compiled", "unit", u, "seconds", fmt.Sprintf("%.3f", ku.secs), "err", ku.err)
				}()
			}
			continue
		}
		queue <- job
	}
	go func() { // one line once every unit not deferred is there
		secs := make([]float64, len(units))
		for u, ku := range units {
			if ku.start != nil {
				continue
			}
			<-ku.done
			secs[u] = ku.secs
		}
		if slices.Max(secs) == 0 {
			log.Info("cuda: kernels from the cache", "dir", cacheDir, "seconds", fmt.Sprintf("%.3f", time.Since(t0).Seconds()))
			return
		}
		log.Info("cuda: kernels compiled", "units", kernelUnits, "deferred", deferredCount(units), "seconds", fmt.Sprintf("%.3f", time.Since(t0).Seconds()),
			"slowest_unit_seconds", fmt.Sprintf("%.3f", slices.Max(secs)), "unit_seconds", fmt.Sprintf("%.1f", secs), "cache", cacheDir)
	}()
	return units, nil
}

// deferredCount is the number of units whose compile waits for begin.
func deferredCount(units []*kernelUnit) int {
	n := 0
	for _, ku := range units {
		if ku.start != nil {
			n++
		}
	}
	return n
}

func (l *libs) nvrtcCompile(src []byte, opts []string, cubin bool) ([]byte, error) {
	img, _, err := l.nvrtcCompileLog(src, opts, cubin)
	return img, err
}

// nvrtcCompileLog is nvrtcCompile that also returns NVRTC's log (warnings,
// and ptxas's report when opts ask for it).
func (l *libs) nvrtcCompileLog(src []byte, opts []string, cubin bool) ([]byte, string, error) {
	csrc := append(append([]byte(nil), src...), 0)
	cname := cstr("llmserve_kernels.cu")
	var prog uintptr
	if err := l.nvcall(l.nvrtcCreateProgram, "nvrtcCreateProgram", uintptr(unsafe.Pointer(&prog)),
		uintptr(unsafe.Pointer(&csrc[0])), uintptr(unsafe.Pointer(&cname[0])), 0, 0, 0); err != nil {
		return nil, "", err
	}
	defer l.nvcall(l.nvrtcDestroyProgram, "nvrtcDestroyProgram", uintptr(unsafe.Pointer(&prog))) //nolint:errcheck

	copts := make([][]byte, len(opts))
	ptrs := make([]uintptr, len(opts))
	for i, o := range opts {
		copts[i] = cstr(o)
		ptrs[i] = uintptr(unsafe.Pointer(&copts[i][0]))
	}
	cerr := l.nvcall(l.nvrtcCompileProgram, "nvrtcCompileProgram", prog, uintptr(len(ptrs)), uintptr(unsafe.Pointer(&ptrs[0])))
	runtime.KeepAlive(copts)
	var logSize uint64
	_ = l.nvcall(l.nvrtcGetProgramLogSize, "nvrtcGetProgramLogSize", prog, uintptr(unsafe.Pointer(&logSize)))
	logb := make([]byte, logSize+1)
	_ = l.nvcall(l.nvrtcGetProgramLog, "nvrtcGetProgramLog", prog, uintptr(unsafe.Pointer(&logb[0])))
	log := trimNUL(logb)
	if cerr != nil {
		return nil, log, fmt.Errorf("%w\n%s", cerr, log)
	}
	var n uint64
	sizeFn, getFn, what := l.nvrtcGetPTXSize, l.nvrtcGetPTX, "PTX"
	if cubin {
		sizeFn, getFn, what = l.nvrtcGetCUBINSize, l.nvrtcGetCUBIN, "CUBIN"
	}
	if err := l.nvcall(sizeFn, "nvrtcGet"+what+"Size", prog, uintptr(unsafe.Pointer(&n))); err != nil {
		return nil, log, err
	}
	if n == 0 {
		return nil, log, fmt.Errorf("%w: NVRTC produced an empty %s", ErrDriver, what)
	}
	img := make([]byte, n)
	if err := l.nvcall(getFn, "nvrtcGet"+what, prog, uintptr(unsafe.Pointer(&img[0]))); err != nil {
		return nil, log, err
	}
	if !cubin {
		// PTX must stay NUL-terminated for cuModuleLoadData.
		if img[len(img)-1] != 0 {
			img = append(img, 0)
		}
	}
	return img, log, nil
}

func trimNUL(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// writeCacheFile puts img at path whole or not at all: it is written to a
// temporary file of its own and renamed over path. Backends of one process
// compile the same unit at once (tensor parallelism opens one a GPU); a
// temporary name shared by them let one rename a file another was still
// writing, and a third read a unit cut short.
func writeCacheFile(path string, img []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	_, werr := f.Write(img)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(f.Name(), 0o644)
	}
	if werr == nil {
		werr = os.Rename(f.Name(), path)
	}
	if werr != nil {
		_ = os.Remove(f.Name())
	}
	return werr
}
