package main

import "testing"

func TestRewriteDynShared(t *testing.T) {
	for in, want := range map[string]string{
		"extern __shared__ __align__(16) unsigned char smem[];": "unsigned char* const smem = (unsigned char*)cudaemu_dynsmem();",
		"  extern __shared__ float buf [ ] ;":                   "  float* const buf = (float*)cudaemu_dynsmem();",
		"__shared__ float fixed[64];":                           "__shared__ float fixed[64];",
		"extern __shared__ int n[8];":                           "extern __shared__ int n[8];",
	} {
		if got := rewriteDynShared(in); got != want {
			t.Errorf("rewriteDynShared(%q) = %q, want %q", in, got, want)
		}
	}
}
