package cuda

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
	"github.com/llmserve/llmserve/ml"
)

// NCCL: the all-reduce of tensor parallelism over the GPUs of one host,
// loaded at run time like the other CUDA libraries (no cgo). One process
// drives every GPU: NewNCCL makes one communicator per backend with
// ncclCommInitAll, and each rank's all-reduce is recorded with the rank's
// other ops, launched on its stream (and captured in its CUDA graphs).

// ErrNCCL wraps a failing NCCL call.
var ErrNCCL = errors.New("cuda: NCCL call failed")

// NCCL's enums (nccl.h).
const (
	ncclFloat32 = 7
	ncclSum     = 0
)

type ncclLib struct {
	path                                                                       string
	getVersion, commInitAll, allReduce, commDestroy, commAbort, getErrorString uintptr
}

var ncclNames = []string{"libnccl.so.2", "libnccl.so"}

// ncclDirs adds the pip nvidia-nccl wheels' directories (nvidia/nccl/lib
// under a site-packages) of a virtualenv and the user's site to the CUDA
// search dirs.
func ncclDirs() []string {
	var pats []string
	if v := os.Getenv("VIRTUAL_ENV"); v != "" {
		pats = append(pats, filepath.Join(v, "lib", "python3*", "site-packages", "nvidia", "nccl", "lib"))
	}
	if h, err := os.UserHomeDir(); err == nil {
		pats = append(pats, filepath.Join(h, ".local", "lib", "python3*", "site-packages", "nvidia", "nccl", "lib"))
	}
	pats = append(pats, "/usr/local/lib/python3*/dist-packages/nvidia/nccl/lib",
		"/usr/local/lib/python3*/site-packages/nvidia/nccl/lib", "/usr/lib/python3*/dist-packages/nvidia/nccl/lib",
		"/opt/conda/lib/python3*/site-packages/nvidia/nccl/lib")
	var dirs []string
	for _, p := range pats {
		m, _ := filepath.Glob(p)
		sort.Sort(sort.Reverse(sort.StringSlice(m)))
		dirs = append(dirs, m...)
	}
	return dirs
}

// loadNCCL finds libnccl like cuBLAS (bare name, CUDA_HOME and the CUDA
// dirs, the pip wheels, the ldconfig cache) and resolves its symbols.
func loadNCCL() (*ncclLib, error) {
	var h uintptr
	var path string
	for _, d := range ncclDirs() {
		for _, n := range ncclNames {
			p := filepath.Join(d, n)
			if _, err := os.Stat(p); err != nil {
				continue
			}
			if x, err := purego.Dlopen(p, rtldNowGlobal); err == nil {
				h, path = x, p
				break
			}
		}
		if h != 0 {
			break
		}
	}
	if h == 0 {
		var err error
		if h, path, err = openFirst(ncclNames, "libnccl"); err != nil {
			return nil, fmt.Errorf("%w (tensor parallelism over GPUs needs NCCL: install it, or `pip install nvidia-nccl-cu12`, or point CUDA_HOME at it)", err)
		}
	}
	l := &ncclLib{path: path}
	var missing []string
	for _, s := range []struct {
		name string
		dst  *uintptr
	}{
		{"ncclGetVersion", &l.getVersion}, {"ncclCommInitAll", &l.commInitAll}, {"ncclAllReduce", &l.allReduce},
		{"ncclCommDestroy", &l.commDestroy}, {"ncclCommAbort", &l.commAbort}, {"ncclGetErrorString", &l.getErrorString},
	} {
		sym(h, s.name, s.dst, &missing)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: %s lacks %s (NCCL too old?)", ErrLibrary, path, strings.Join(missing, ", "))
	}
	return l, nil
}

func (l *ncclLib) call(fn uintptr, name string, args ...uintptr) error {
	r, _, _ := purego.SyscallN(fn, args...)
	if int32(r) != 0 {
		var msg string
		if l.getErrorString != 0 {
			p, _, _ := purego.SyscallN(l.getErrorString, r)
			msg = gostr(p)
		}
		return fmt.Errorf("%w: %s: ncclResult %d (%s)", ErrNCCL, name, int32(r), msg)
	}
	return nil
}

// DeviceCount is the number of CUDA devices the driver reports.
func DeviceCount() (int, error) {
	l, err := loadLibs()
	if err != nil {
		return 0, err
	}
	if err := l.call(l.cuInit, "cuInit", 0); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrNoDevice, err)
	}
	var n int32
	if err := l.call(l.cuDeviceGetCount, "cuDeviceGetCount", uintptr(unsafe.Pointer(&n))); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrNoDevice, err)
	}
	return int(n), nil
}

// ncclGroup is the communicators of one ncclCommInitAll.
type ncclGroup struct {
	l       *ncclLib
	comms   []uintptr
	mu      sync.Mutex
	aborted error
}

// NewNCCL joins backends (one per GPU, distinct devices, rank r on
// backends[r]) into an NCCL group and returns each rank's end. NVLink
// SHARP multicast (NVLS) is turned off first: NCCL_NVLS_ENABLE=0 is set in
// the process environment before NCCL initialises.
func NewNCCL(backends []*Backend) ([]ml.Collective, error) {
	if len(backends) == 0 {
		return nil, fmt.Errorf("%w: NCCL group of no GPU", ErrShape)
	}
	seen := map[int]bool{}
	devs := make([]int32, len(backends))
	for r, b := range backends {
		if seen[b.dev.ordinal] {
			return nil, fmt.Errorf("%w: GPU %d given to two ranks", ErrShape, b.dev.ordinal)
		}
		seen[b.dev.ordinal] = true
		devs[r] = int32(b.dev.ordinal)
	}
	// Go's os.Setenv reaches the C environment NCCL reads (purego's
	// runtime hooks setenv), so this holds for the NCCL loaded below.
	if v, ok := os.LookupEnv("NCCL_NVLS_ENABLE"); !ok || v != "0" {
		if err := os.Setenv("NCCL_NVLS_ENABLE", "0"); err != nil {
			return nil, err
		}
	}
	l, err := loadNCCL()
	if err != nil {
		return nil, err
	}
	var ver int32
	_ = l.call(l.getVersion, "ncclGetVersion", uintptr(unsafe.Pointer(&ver)))
	g := &ncclGroup{l: l, comms: make([]uintptr, len(backends))}
	if err := l.call(l.commInitAll, "ncclCommInitAll", uintptr(unsafe.Pointer(&g.comms[0])), uintptr(len(backends)),
		uintptr(unsafe.Pointer(&devs[0]))); err != nil {
		return nil, err
	}
	backends[0].log.Info("cuda: NCCL group ready", "ranks", len(backends), "nccl", ver, "libnccl", l.path, "devices", devs)
	out := make([]ml.Collective, len(backends))
	for r, b := range backends {
		b.mu.Lock()
		b.nccl = l
		b.mu.Unlock()
		out[r] = &ncclComm{g: g, b: b, rank: r}
	}
	return out, nil
}

// ncclComm is one rank's end of an ncclGroup.
type ncclComm struct {
	g      *ncclGroup
	b      *Backend
	rank   int
	closed bool
}

var _ ml.Collective = (*ncclComm)(nil)

func (c *ncclComm) Rank() int { return c.rank }
func (c *ncclComm) Size() int { return len(c.g.comms) }

// AllReduceSum implements ml.Collective: an in-place ncclAllReduce of t,
// recorded among the backend's ops and launched on its stream with them.
func (c *ncclComm) AllReduceSum(t ml.Tensor) error {
	if err := c.g.err(); err != nil {
		return err
	}
	b := c.b
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	x, err := b.f32(t, "AllReduceSum")
	if err != nil {
		return err
	}
	b.pushAllReduce(x.ptr, x.n(), c.g.comms[c.rank])
	return nil
}

func (g *ncclGroup) err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.aborted
}

// Abort implements ml.Collective: every communicator of the group is
// aborted (its kernels stop waiting for the others).
func (c *ncclComm) Abort(cause error) {
	g := c.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.aborted != nil {
		return
	}
	g.aborted = fmt.Errorf("%w: %w", ml.ErrCollectiveAborted, cause)
	for i, comm := range g.comms {
		if comm != 0 {
			_ = g.l.call(g.l.commAbort, "ncclCommAbort", comm)
			g.comms[i] = 0
		}
	}
}

// Close implements ml.Collective: destroys this rank's communicator.
func (c *ncclComm) Close() error {
	g := c.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	comm := g.comms[c.rank]
	if comm == 0 {
		return nil
	}
	g.comms[c.rank] = 0
	return g.l.call(g.l.commDestroy, "ncclCommDestroy", comm)
}

// pushAllReduce records an in-place f32 sum over comm of n values at p. It
// ends the record-time fusions and drops the bf16 shadow of p (the op
// rewrites it), and enters the step's trace so that graphs replay it.
func (b *Backend) pushAllReduce(p uint64, n int, comm uintptr) {
	b.skinnyRec.valid, b.ropeRec.valid = false, false
	b.invalidate(p, int64(n)*4)
	b.ops = append(b.ops, op{kind: opAllReduce, coll: collArgs{ptr: p, count: n, comm: comm},
		traceOff: len(b.trace), argOff: len(b.args)})
	b.trace = append(b.trace, 0xFE)
	b.trace = binary.LittleEndian.AppendUint64(b.trace, p)
	b.trace = binary.LittleEndian.AppendUint64(b.trace, uint64(n))
	b.trace = binary.LittleEndian.AppendUint64(b.trace, uint64(comm))
}

// collArgs are a recorded all-reduce's.
type collArgs struct {
	ptr   uint64
	count int
	comm  uintptr
}

// launchAllReduce issues a recorded all-reduce on the stream (in a graph
// capture, NCCL 2.9+ records it into the graph).
func (b *Backend) launchAllReduce(a *collArgs) error {
	if b.nccl == nil {
		l, err := loadNCCL()
		if err != nil {
			return err
		}
		b.nccl = l
	}
	return b.nccl.call(b.nccl.allReduce, "ncclAllReduce", uintptr(a.ptr), uintptr(a.ptr), uintptr(a.count),
		ncclFloat32, ncclSum, a.comm, b.stream)
}
