package cuda

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"
	"unsafe"

	"golang.org/x/sync/errgroup"
)

// kernelUnits is the number of parallel NVRTC compiles of the kernel source
// (KUNIT in kernels/common.cu): NVRTC compiles one program on one thread,
// and the whole source takes about a minute that way.
const kernelUnits = 11

// compileKernels returns loadable images (CUBIN, else PTX) of src's kernel
// units for the device, from the on-disk cache when present, compiling the
// missing ones in parallel. The cache key covers the source, the NVRTC
// version, the architecture, the options, the unit and the driver version
// (a cached PTX image is JIT-compiled by the driver that loads it).
func (l *libs) compileKernels(src []byte, major, minor, driver int32, cacheDir string, log *slog.Logger) ([][]byte, error) {
	t0 := time.Now()
	var vmaj, vmin int32
	if err := l.nvcall(l.nvrtcVersion, "nvrtcVersion", uintptr(unsafe.Pointer(&vmaj)), uintptr(unsafe.Pointer(&vmin))); err != nil {
		return nil, err
	}
	opts := []string{"-std=c++17", "-default-device", "--extra-device-vectorization"}
	h := sha256.New()
	fmt.Fprintf(h, "nvrtc %d.%d sm_%d%d driver %d %v units %d\n", vmaj, vmin, major, minor, driver, opts, kernelUnits)
	h.Write(src)
	key := hex.EncodeToString(h.Sum(nil))[:32]
	if cacheDir == "" {
		if d, err := os.UserCacheDir(); err == nil {
			cacheDir = filepath.Join(d, "llmserve", "cuda")
		}
	}

	imgs := make([][]byte, kernelUnits)
	secs := make([]float64, kernelUnits)
	var g errgroup.Group
	for u := range imgs {
		var path string
		if cacheDir != "-" && cacheDir != "" {
			path = filepath.Join(cacheDir, fmt.Sprintf("%s-%d.bin", key, u))
			if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
				imgs[u] = b
				continue
			}
		}
		g.Go(func() error {
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
					return fmt.Errorf("unit %d: %w (PTX fallback: %v)", u, err, err2)
				}
			}
			imgs[u], secs[u] = img, time.Since(start).Seconds()
			if path != "" {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
					tmp := path + fmt.Sprintf(".tmp%d", os.Getpid())
					if os.WriteFile(tmp, img, 0o644) == nil {
						_ = os.Rename(tmp, path)
					}
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	compiled := 0
	for _, s := range secs {
		if s > 0 {
			compiled++
		}
	}
	if compiled == 0 {
		log.Info("cuda: kernels from the cache", "dir", cacheDir, "seconds", fmt.Sprintf("%.3f", time.Since(t0).Seconds()))
	} else {
		log.Info("cuda: kernels compiled", "units", compiled, "of", kernelUnits, "seconds", fmt.Sprintf("%.3f", time.Since(t0).Seconds()),
			"slowest_unit_seconds", fmt.Sprintf("%.3f", slices.Max(secs)), "unit_seconds", fmt.Sprintf("%.1f", secs), "cache", cacheDir)
	}
	return imgs, nil
}

func (l *libs) nvrtcCompile(src []byte, opts []string, cubin bool) ([]byte, error) {
	csrc := append(append([]byte(nil), src...), 0)
	cname := cstr("llmserve_kernels.cu")
	var prog uintptr
	if err := l.nvcall(l.nvrtcCreateProgram, "nvrtcCreateProgram", uintptr(unsafe.Pointer(&prog)),
		uintptr(unsafe.Pointer(&csrc[0])), uintptr(unsafe.Pointer(&cname[0])), 0, 0, 0); err != nil {
		return nil, err
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
	if cerr != nil {
		var n uint64
		_ = l.nvcall(l.nvrtcGetProgramLogSize, "nvrtcGetProgramLogSize", prog, uintptr(unsafe.Pointer(&n)))
		logb := make([]byte, n+1)
		_ = l.nvcall(l.nvrtcGetProgramLog, "nvrtcGetProgramLog", prog, uintptr(unsafe.Pointer(&logb[0])))
		return nil, fmt.Errorf("%w\n%s", cerr, trimNUL(logb))
	}
	var n uint64
	sizeFn, getFn, what := l.nvrtcGetPTXSize, l.nvrtcGetPTX, "PTX"
	if cubin {
		sizeFn, getFn, what = l.nvrtcGetCUBINSize, l.nvrtcGetCUBIN, "CUBIN"
	}
	if err := l.nvcall(sizeFn, "nvrtcGet"+what+"Size", prog, uintptr(unsafe.Pointer(&n))); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: NVRTC produced an empty %s", ErrDriver, what)
	}
	img := make([]byte, n)
	if err := l.nvcall(getFn, "nvrtcGet"+what, prog, uintptr(unsafe.Pointer(&img[0]))); err != nil {
		return nil, err
	}
	if !cubin {
		// PTX must stay NUL-terminated for cuModuleLoadData.
		if img[len(img)-1] != 0 {
			img = append(img, 0)
		}
	}
	return img, nil
}

func trimNUL(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
