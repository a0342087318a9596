//go:build !amd64 || purego

package kernels

import "unsafe"

func selectFlash() flashImpl { return genericFlash }

// flashImpls lists every flash implementation usable here, for tests.
func flashImpls() []flashImpl { return []flashImpl{genericFlash} }

func prefetch(unsafe.Pointer, int) {}
