package cuda

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"unsafe"

	"github.com/ebitengine/purego"
)

// Sentinel errors.
var (
	// ErrLibrary means a CUDA library (driver, NVRTC or cuBLAS) could not be loaded.
	ErrLibrary = errors.New("cuda: library not available")
	// ErrNoDevice means the driver loaded but no usable NVIDIA GPU was found.
	ErrNoDevice = errors.New("cuda: no usable NVIDIA GPU")
	// ErrDriver wraps a failing CUDA driver, NVRTC or cuBLAS call.
	ErrDriver = errors.New("cuda: driver call failed")
)

// libs holds the resolved entry points of the three libraries. Calls go
// through purego.SyscallN on raw symbol addresses (no reflection on the hot
// path).
type libs struct {
	cudaPath, nvrtcPath, cublasPath string

	// driver
	cuInit, cuDriverGetVersion, cuDeviceGetCount, cuDeviceGet, cuDeviceGetName,
	cuDeviceGetAttribute, cuDeviceTotalMem, cuDevicePrimaryCtxRetain, cuDevicePrimaryCtxRelease,
	cuCtxSetCurrent, cuMemAlloc, cuMemFree, cuMemGetInfo, cuMemcpyHtoD, cuMemcpyHtoDAsync,
	cuMemcpyDtoH, cuMemcpyDtoHAsync, cuMemcpyDtoDAsync, cuMemsetD8Async, cuModuleLoadData,
	cuModuleUnload, cuModuleGetFunction, cuLaunchKernel, cuStreamCreate, cuStreamDestroy,
	cuStreamSynchronize, cuStreamBeginCapture, cuStreamEndCapture, cuGraphInstantiate,
	cuGraphLaunch, cuGraphDestroy, cuGraphExecDestroy, cuGetErrorString, cuGetErrorName uintptr
	// cuLaunchKernelEx (CUDA 12+) is optional: without it kernels launch
	// without programmatic dependent launch, and one-token steps run
	// layer by layer (no cooperative decode-step kernel).
	cuLaunchKernelEx, cuOccupancyMaxActiveBlocksPerMultiprocessor uintptr
	// cuFuncGetAttribute is optional: it only adds a kernel's registers
	// and spills to the decode-step kernel's log line.
	cuFuncGetAttribute uintptr
	// cuFuncSetAttribute is optional: without it no kernel launches with
	// more than 48 KiB of dynamic shared memory.
	cuFuncSetAttribute uintptr
	// cuMemAllocHost and cuMemFreeHost are optional too: without them
	// uploads and downloads go through pageable memory.
	cuMemAllocHost, cuMemFreeHost uintptr

	// nvrtc
	nvrtcVersion, nvrtcCreateProgram, nvrtcCompileProgram, nvrtcGetProgramLogSize,
	nvrtcGetProgramLog, nvrtcGetCUBINSize, nvrtcGetCUBIN, nvrtcGetPTXSize, nvrtcGetPTX,
	nvrtcDestroyProgram, nvrtcGetErrorString uintptr

	// cublas
	cublasCreate, cublasDestroy, cublasSetStream, cublasSetWorkspace, cublasGemmEx,
	cublasGetVersion uintptr
}

const rtldNowGlobal = purego.RTLD_NOW | purego.RTLD_GLOBAL

// searchDirs lists directories to look for CUDA libraries in, most specific first.
func searchDirs() []string {
	var dirs []string
	for _, env := range []string{"CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"} {
		if v := os.Getenv(env); v != "" {
			dirs = append(dirs, filepath.Join(v, "lib64"), filepath.Join(v, "lib"),
				filepath.Join(v, "targets", runtime.GOARCH+"-linux", "lib"))
		}
	}
	dirs = append(dirs, "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib",
		"/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/nvidia/lib64", "/usr/lib/wsl/lib")
	// pip wheels (nvidia-cublas, nvidia-cuda-nvrtc) put the libraries here.
	for _, pat := range []string{
		"/usr/local/lib/python3*/dist-packages/nvidia/*/lib",
		"/usr/local/lib/python3*/site-packages/nvidia/*/lib",
		"/usr/lib/python3*/dist-packages/nvidia/*/lib",
		"/usr/local/lib/python3*/dist-packages/nvidia/cu*/lib",
	} {
		m, _ := filepath.Glob(pat)
		sort.Sort(sort.Reverse(sort.StringSlice(m)))
		dirs = append(dirs, m...)
	}
	return dirs
}

// ldconfigPaths returns the paths `ldconfig -p` knows for libraries whose
// name starts with prefix.
func ldconfigPaths(prefix string) []string {
	var out []byte
	for _, bin := range []string{"/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"} {
		o, err := exec.Command(bin, "-p").Output()
		if err == nil {
			out = o
			break
		}
	}
	var paths []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		if i := strings.Index(line, "=> "); i >= 0 {
			paths = append(paths, strings.TrimSpace(line[i+3:]))
		}
	}
	return paths
}

// openFirst dlopens the first loadable library among names (tried bare, in the
// search dirs, then as ldconfig reports them) and returns its handle and path.
func openFirst(names []string, globPrefix string) (uintptr, string, error) {
	var tried []string
	try := func(p string) (uintptr, bool) {
		h, err := purego.Dlopen(p, rtldNowGlobal)
		if err != nil {
			tried = append(tried, p+": "+err.Error())
			return 0, false
		}
		return h, true
	}
	for _, n := range names {
		if h, ok := try(n); ok {
			return h, n, nil
		}
	}
	dirs := searchDirs()
	for _, d := range dirs {
		for _, n := range names {
			p := filepath.Join(d, n)
			if _, err := os.Stat(p); err != nil {
				continue
			}
			if h, ok := try(p); ok {
				return h, p, nil
			}
		}
		// Versioned names not in our list (e.g. libnvrtc.so.13.1).
		m, _ := filepath.Glob(filepath.Join(d, globPrefix+".so.*"))
		sort.Sort(sort.Reverse(sort.StringSlice(m)))
		for _, p := range m {
			if strings.Contains(filepath.Base(p), "builtins") || strings.Contains(filepath.Base(p), "alt") {
				continue
			}
			if h, ok := try(p); ok {
				return h, p, nil
			}
		}
	}
	for _, p := range ldconfigPaths(globPrefix + ".so") {
		if h, ok := try(p); ok {
			return h, p, nil
		}
	}
	msg := "not found in CUDA_HOME, /usr/local/cuda, pip wheels or the ldconfig cache"
	if len(tried) > 0 {
		msg = strings.Join(tried, "; ")
	}
	return 0, "", fmt.Errorf("%w: %s (%s)", ErrLibrary, names[0], msg)
}

func sym(h uintptr, name string, dst *uintptr, errs *[]string) {
	p, err := purego.Dlsym(h, name)
	if err != nil || p == 0 {
		*errs = append(*errs, name)
		return
	}
	*dst = p
}

// loadLibs opens the driver, NVRTC and cuBLAS and resolves every symbol used.
func loadLibs() (*libs, error) {
	if runtime.GOOS != "linux" {
		return nil, fmt.Errorf("%w: only linux is supported", ErrLibrary)
	}
	l := &libs{}
	var missing []string

	h, p, err := openFirst([]string{"libcuda.so.1", "libcuda.so"}, "libcuda")
	if err != nil {
		return nil, fmt.Errorf("%w (is the NVIDIA driver installed?)", err)
	}
	l.cudaPath = p
	for _, s := range []struct {
		name string
		dst  *uintptr
	}{
		{"cuInit", &l.cuInit}, {"cuDriverGetVersion", &l.cuDriverGetVersion},
		{"cuDeviceGetCount", &l.cuDeviceGetCount}, {"cuDeviceGet", &l.cuDeviceGet},
		{"cuDeviceGetName", &l.cuDeviceGetName}, {"cuDeviceGetAttribute", &l.cuDeviceGetAttribute},
		{"cuDeviceTotalMem_v2", &l.cuDeviceTotalMem},
		{"cuDevicePrimaryCtxRetain", &l.cuDevicePrimaryCtxRetain},
		{"cuDevicePrimaryCtxRelease_v2", &l.cuDevicePrimaryCtxRelease},
		{"cuCtxSetCurrent", &l.cuCtxSetCurrent}, {"cuMemAlloc_v2", &l.cuMemAlloc},
		{"cuMemFree_v2", &l.cuMemFree}, {"cuMemGetInfo_v2", &l.cuMemGetInfo},
		{"cuMemcpyHtoD_v2", &l.cuMemcpyHtoD}, {"cuMemcpyHtoDAsync_v2", &l.cuMemcpyHtoDAsync},
		{"cuMemcpyDtoH_v2", &l.cuMemcpyDtoH}, {"cuMemcpyDtoHAsync_v2", &l.cuMemcpyDtoHAsync},
		{"cuMemcpyDtoDAsync_v2", &l.cuMemcpyDtoDAsync}, {"cuMemsetD8Async", &l.cuMemsetD8Async},
		{"cuModuleLoadData", &l.cuModuleLoadData}, {"cuModuleUnload", &l.cuModuleUnload},
		{"cuModuleGetFunction", &l.cuModuleGetFunction}, {"cuLaunchKernel", &l.cuLaunchKernel},
		{"cuStreamCreate", &l.cuStreamCreate}, {"cuStreamDestroy_v2", &l.cuStreamDestroy},
		{"cuStreamSynchronize", &l.cuStreamSynchronize},
		{"cuStreamBeginCapture_v2", &l.cuStreamBeginCapture},
		{"cuStreamEndCapture", &l.cuStreamEndCapture},
		{"cuGraphInstantiateWithFlags", &l.cuGraphInstantiate},
		{"cuGraphLaunch", &l.cuGraphLaunch}, {"cuGraphDestroy", &l.cuGraphDestroy},
		{"cuGraphExecDestroy", &l.cuGraphExecDestroy},
		{"cuGetErrorString", &l.cuGetErrorString}, {"cuGetErrorName", &l.cuGetErrorName},
	} {
		sym(h, s.name, s.dst, &missing)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: %s lacks %s (driver too old?)", ErrLibrary, p, strings.Join(missing, ", "))
	}
	var optional []string
	sym(h, "cuLaunchKernelEx", &l.cuLaunchKernelEx, &optional)
	sym(h, "cuOccupancyMaxActiveBlocksPerMultiprocessor", &l.cuOccupancyMaxActiveBlocksPerMultiprocessor, &optional)
	sym(h, "cuFuncGetAttribute", &l.cuFuncGetAttribute, &optional)
	sym(h, "cuFuncSetAttribute", &l.cuFuncSetAttribute, &optional)
	sym(h, "cuMemAllocHost_v2", &l.cuMemAllocHost, &optional)
	sym(h, "cuMemFreeHost", &l.cuMemFreeHost, &optional)

	if err := l.loadNVRTC(); err != nil {
		return nil, err
	}

	h, p, err = openCublas()
	if err != nil {
		return nil, err
	}
	l.cublasPath = p
	for _, s := range []struct {
		name string
		dst  *uintptr
	}{
		{"cublasCreate_v2", &l.cublasCreate}, {"cublasDestroy_v2", &l.cublasDestroy},
		{"cublasSetStream_v2", &l.cublasSetStream}, {"cublasSetWorkspace_v2", &l.cublasSetWorkspace},
		{"cublasGemmEx", &l.cublasGemmEx}, {"cublasGetVersion_v2", &l.cublasGetVersion},
	} {
		sym(h, s.name, s.dst, &missing)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: %s lacks %s", ErrLibrary, p, strings.Join(missing, ", "))
	}
	return l, nil
}

// loadNVRTC loads NVRTC's functions into l.
func (l *libs) loadNVRTC() error {
	h, p, err := openNVRTC()
	if err != nil {
		return err
	}
	l.nvrtcPath = p
	var missing []string
	for _, s := range []struct {
		name string
		dst  *uintptr
	}{
		{"nvrtcVersion", &l.nvrtcVersion}, {"nvrtcCreateProgram", &l.nvrtcCreateProgram},
		{"nvrtcCompileProgram", &l.nvrtcCompileProgram},
		{"nvrtcGetProgramLogSize", &l.nvrtcGetProgramLogSize},
		{"nvrtcGetProgramLog", &l.nvrtcGetProgramLog}, {"nvrtcGetCUBINSize", &l.nvrtcGetCUBINSize},
		{"nvrtcGetCUBIN", &l.nvrtcGetCUBIN}, {"nvrtcGetPTXSize", &l.nvrtcGetPTXSize},
		{"nvrtcGetPTX", &l.nvrtcGetPTX}, {"nvrtcDestroyProgram", &l.nvrtcDestroyProgram},
		{"nvrtcGetErrorString", &l.nvrtcGetErrorString},
	} {
		sym(h, s.name, s.dst, &missing)
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s lacks %s", ErrLibrary, p, strings.Join(missing, ", "))
	}
	return nil
}

var nvrtcNames = []string{"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2"}

// openNVRTC loads NVRTC. NVRTC dlopens its builtins library by soname at
// compile time; preloading it from the same directory makes that work when
// the directory is not on the loader path (pip wheels, CUDA_HOME).
func openNVRTC() (uintptr, string, error) {
	return openBeside("libnvrtc.so", "libnvrtc-builtins.so.", nvrtcNames, "libnvrtc")
}

// openCublas loads cuBLAS, preloading cuBLASLt from the same directory.
func openCublas() (uintptr, string, error) {
	return openBeside("libcublas.so", "libcublasLt.so",
		[]string{"libcublas.so", "libcublas.so.13", "libcublas.so.12", "libcublas.so.11"}, "libcublas")
}

// openBeside loads the newest name* in the first search dir that has one
// (CUDA_HOME first, so that a toolkit or tools/cudaemu named there wins
// over a system copy), first preloading RTLD_GLOBAL the newest companion*
// beside it, if any; with none in the search dirs, it tries openFirst.
func openBeside(name, companion string, names []string, ldPrefix string) (uintptr, string, error) {
	for _, d := range searchDirs() {
		libs, _ := filepath.Glob(filepath.Join(d, name+"*"))
		if len(libs) == 0 {
			continue
		}
		comp, _ := filepath.Glob(filepath.Join(d, companion+"*"))
		sort.Sort(sort.Reverse(sort.StringSlice(comp)))
		for _, p := range comp {
			if _, err := purego.Dlopen(p, rtldNowGlobal); err == nil {
				break
			}
		}
		sort.Sort(sort.Reverse(sort.StringSlice(libs)))
		for _, p := range libs {
			if h, err := purego.Dlopen(p, rtldNowGlobal); err == nil {
				return h, p, nil
			}
		}
	}
	return openFirst(names, ldPrefix)
}

func cstr(s string) []byte { return append([]byte(s), 0) }

// gostr reads a NUL-terminated C string.
func gostr(p uintptr) string {
	if p == 0 {
		return ""
	}
	// Reinterpret without a uintptr->Pointer conversion (C memory, not Go's).
	base := *(*unsafe.Pointer)(unsafe.Pointer(&p))
	var b []byte
	for i := 0; i < 4096; i++ {
		c := *(*byte)(unsafe.Add(base, i))
		if c == 0 {
			break
		}
		b = append(b, c)
	}
	return string(b)
}
