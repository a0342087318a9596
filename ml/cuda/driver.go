package cuda

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/ebitengine/purego"

	"github.com/llmserve/llmserve/ml"
)

// Driver API constants (cuda.h).
const (
	attrMultiprocessorCount = 16
	attrComputeMajor        = 75
	attrComputeMinor        = 76
	// The most shared memory a block may opt in to (static and dynamic).
	attrMaxSharedPerBlockOptin = 97
	attrL2CacheSize            = 38
	// cuFuncSetAttribute: a kernel's dynamic shared memory limit, and the
	// part of L1 it prefers as shared memory (a percentage).
	funcAttrMaxDynamicShared  = 8
	funcAttrPreferredCarveout = 9
	streamNonBlocking         = 1
	captureModeThreadLocal    = 1
	launchParamEnd            = 0
	launchParamBufPtr         = 1
	launchParamBufSize        = 2
)

// cuBLAS constants (cublas_api.h, library_types.h).
const (
	cublasOpN       = 0
	cublasOpT       = 1
	cudaR32F        = 0
	cudaR16F        = 2
	cudaR16BF       = 14
	cublasCompute32 = 68
)

// call invokes a driver function and turns a non-zero CUresult into an error.
//
//go:uintptrescapes
func (l *libs) call(fn uintptr, name string, args ...uintptr) error {
	r, _, _ := purego.SyscallN(fn, args...)
	if int32(r) != 0 {
		return l.cuErr(name, int32(r))
	}
	return nil
}

func (l *libs) cuErr(name string, code int32) error {
	var ename, estr uintptr
	if l.cuGetErrorName != 0 {
		purego.SyscallN(l.cuGetErrorName, uintptr(code), uintptr(unsafe.Pointer(&ename)))
		purego.SyscallN(l.cuGetErrorString, uintptr(code), uintptr(unsafe.Pointer(&estr)))
	}
	return &driverError{call: name, code: code, name: gostr(ename), desc: gostr(estr)}
}

// driverError is a failing CUDA driver call (errors.Is ErrDriver); code is
// its CUresult.
type driverError struct {
	call       string
	code       int32
	name, desc string
}

func (e *driverError) Error() string {
	return fmt.Sprintf("%v: %s: %s (%d): %s", ErrDriver, e.call, e.name, e.code, e.desc)
}

func (e *driverError) Unwrap() error { return ErrDriver }

// Is makes the sticky CUresults match ml.ErrDeviceLost: after one of them
// the context is corrupt and every later call fails (CUDA's documentation
// of each code says so), so the server must be restarted.
func (e *driverError) Is(target error) bool {
	if target != ml.ErrDeviceLost {
		return false
	}
	switch e.code {
	case 214, // CUDA_ERROR_ECC_UNCORRECTABLE
		700, // CUDA_ERROR_ILLEGAL_ADDRESS
		702, // CUDA_ERROR_LAUNCH_TIMEOUT
		709, // CUDA_ERROR_CONTEXT_IS_DESTROYED
		710, // CUDA_ERROR_ASSERT
		714, // CUDA_ERROR_HARDWARE_STACK_ERROR
		715, // CUDA_ERROR_ILLEGAL_INSTRUCTION
		716, // CUDA_ERROR_MISALIGNED_ADDRESS
		717, // CUDA_ERROR_INVALID_ADDRESS_SPACE
		718, // CUDA_ERROR_INVALID_PC
		719: // CUDA_ERROR_LAUNCH_FAILED
		return true
	}
	return false
}

// CUresults of a cooperative launch whose grid the device will not hold at
// once (another process's work on the GPU, an MPS SM limit) or cannot run.
const (
	cudaErrorCooperativeLaunchTooLarge = 720
	cudaErrorNotSupported              = 801
)

// coopRefused reports whether err is a cooperative launch the device refused.
func coopRefused(err error) bool {
	var de *driverError
	return errors.As(err, &de) && (de.code == cudaErrorCooperativeLaunchTooLarge || de.code == cudaErrorNotSupported)
}

// nvcall invokes an NVRTC function.
//
//go:uintptrescapes
func (l *libs) nvcall(fn uintptr, name string, args ...uintptr) error {
	r, _, _ := purego.SyscallN(fn, args...)
	if int32(r) != 0 {
		s, _, _ := purego.SyscallN(l.nvrtcGetErrorString, r)
		return fmt.Errorf("%w: %s: %s (%d)", ErrDriver, name, gostr(s), int32(r))
	}
	return nil
}

// blascall invokes a cuBLAS function.
//
//go:uintptrescapes
func (l *libs) blascall(fn uintptr, name string, args ...uintptr) error {
	r, _, _ := purego.SyscallN(fn, args...)
	if int32(r) != 0 {
		return fmt.Errorf("%w: %s: cublasStatus %d", ErrDriver, name, int32(r))
	}
	return nil
}

// deviceInfo describes the selected GPU.
type deviceInfo struct {
	ordinal      int
	dev          int32
	name         string
	major, minor int32
	sms          int32
	sharedOptin  int32 // the most shared memory a block may opt in to
	l2           int32 // L2 cache bytes
	totalMem     uint64
	driver       int32
}

// probe initialises the driver and reads device ordinal's properties.
func (l *libs) probe(ordinal int) (*deviceInfo, error) {
	if err := l.call(l.cuInit, "cuInit", 0); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoDevice, err)
	}
	var n int32
	if err := l.call(l.cuDeviceGetCount, "cuDeviceGetCount", uintptr(unsafe.Pointer(&n))); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoDevice, err)
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: the driver reports 0 devices", ErrNoDevice)
	}
	if ordinal < 0 || ordinal >= int(n) {
		return nil, fmt.Errorf("%w: device %d requested, %d present", ErrNoDevice, ordinal, n)
	}
	d := &deviceInfo{ordinal: ordinal}
	if err := l.call(l.cuDeviceGet, "cuDeviceGet", uintptr(unsafe.Pointer(&d.dev)), uintptr(ordinal)); err != nil {
		return nil, err
	}
	name := make([]byte, 256)
	if err := l.call(l.cuDeviceGetName, "cuDeviceGetName", uintptr(unsafe.Pointer(&name[0])), 256, uintptr(d.dev)); err != nil {
		return nil, err
	}
	for i, c := range name {
		if c == 0 {
			name = name[:i]
			break
		}
	}
	d.name = string(name)
	for _, a := range []struct {
		attr int
		dst  *int32
	}{{attrComputeMajor, &d.major}, {attrComputeMinor, &d.minor}, {attrMultiprocessorCount, &d.sms},
		{attrMaxSharedPerBlockOptin, &d.sharedOptin}, {attrL2CacheSize, &d.l2}} {
		if err := l.call(l.cuDeviceGetAttribute, "cuDeviceGetAttribute", uintptr(unsafe.Pointer(a.dst)), uintptr(a.attr), uintptr(d.dev)); err != nil {
			return nil, err
		}
	}
	_ = l.call(l.cuDeviceTotalMem, "cuDeviceTotalMem", uintptr(unsafe.Pointer(&d.totalMem)), uintptr(d.dev))
	_ = l.call(l.cuDriverGetVersion, "cuDriverGetVersion", uintptr(unsafe.Pointer(&d.driver)))
	if d.major < 7 {
		return nil, fmt.Errorf("%w: %s has compute capability %d.%d, need 7.0 or newer", ErrNoDevice, d.name, d.major, d.minor)
	}
	return d, nil
}

// Available reports whether the CUDA backend can run here: the driver,
// NVRTC and cuBLAS load and at least one GPU of compute capability ≥ 7.0 is
// present. The error says what is missing.
func Available() error {
	l, err := loadLibs()
	if err != nil {
		return err
	}
	_, err = l.probe(0)
	return err
}

// gemmAlgoDefault is CUBLAS_GEMM_DEFAULT (-1) as the 32-bit enum the callee reads.
const gemmAlgoDefault = uint32(0xFFFFFFFF)
