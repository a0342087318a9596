//go:build !amd64 || purego

package kernels

func selectImpl() impl { return genericImpl }

// impls lists every implementation usable on this machine, for tests.
func impls() []impl { return []impl{genericImpl} }
