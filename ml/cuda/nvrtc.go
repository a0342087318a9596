package cuda

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"time"
	"unsafe"
)

// compileKernels returns a loadable image (CUBIN, else PTX) of src for the
// device, from the on-disk cache when present. The cache key covers the
// source, the NVRTC version, the architecture, the options and the driver
// version (a cached PTX image is JIT-compiled by the driver that loads it).
func (l *libs) compileKernels(src []byte, major, minor, driver int32, cacheDir string, log *slog.Logger) ([]byte, error) {
	t0 := time.Now()
	var vmaj, vmin int32
	if err := l.nvcall(l.nvrtcVersion, "nvrtcVersion", uintptr(unsafe.Pointer(&vmaj)), uintptr(unsafe.Pointer(&vmin))); err != nil {
		return nil, err
	}
	opts := []string{"-std=c++17", "-default-device", "--extra-device-vectorization"}
	h := sha256.New()
	fmt.Fprintf(h, "nvrtc %d.%d sm_%d%d driver %d %v\n", vmaj, vmin, major, minor, driver, opts)
	h.Write(src)
	key := hex.EncodeToString(h.Sum(nil))[:32]

	var path string
	if cacheDir != "-" {
		if cacheDir == "" {
			if d, err := os.UserCacheDir(); err == nil {
				cacheDir = filepath.Join(d, "llmserve", "cuda")
			}
		}
		if cacheDir != "" {
			path = filepath.Join(cacheDir, key+".bin")
			if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
				log.Info("cuda: kernels from the cache", "path", path, "seconds", fmt.Sprintf("%.3f", time.Since(t0).Seconds()))
				return b, nil
			}
		}
	}

	// Prefer SASS for the exact architecture; fall back to PTX for the
	// newest virtual architecture this NVRTC knows (the driver JITs it).
	img, err := l.nvrtcCompile(src, append(opts, fmt.Sprintf("--gpu-architecture=sm_%d%d", major, minor)), true)
	if err != nil {
		var err2 error
		img, err2 = l.nvrtcCompile(src, append(opts, fmt.Sprintf("--gpu-architecture=compute_%d%d", major, minor)), false)
		if err2 != nil {
			return nil, fmt.Errorf("%w (PTX fallback: %v)", err, err2)
		}
	}
	log.Info("cuda: kernels compiled", "seconds", fmt.Sprintf("%.3f", time.Since(t0).Seconds()), "cache", path)
	if path != "" {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
			tmp := path + fmt.Sprintf(".tmp%d", os.Getpid())
			if os.WriteFile(tmp, img, 0o644) == nil {
				_ = os.Rename(tmp, path)
			}
		}
	}
	return img, nil
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
