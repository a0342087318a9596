//go:build amd64 && !purego

package kernels

// Assembly kernels land here; until then amd64 uses the portable ones.

func selectImpl() impl { return genericImpl }

// impls lists every implementation usable on this machine, for tests.
func impls() []impl { return []impl{genericImpl} }
