package main

import (
	"fmt"
	"log/slog"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/ml/cuda"
)

// newBackend opens the compute backend for --device: cpu, cuda, or auto
// (CUDA when a usable GPU and its libraries are found, else the CPU).
// The one place backends are chosen.
func newBackend(device string) (ml.Backend, error) {
	switch device {
	case "cpu":
		return cpu.New(cpu.Options{Logger: slog.Default()}), nil
	case "cuda":
		b, err := cuda.New(cuda.Options{Logger: slog.Default()})
		if err != nil {
			return nil, fmt.Errorf("CUDA backend not available: %w", err)
		}
		return b, nil
	case "auto", "":
		if b, err := cuda.New(cuda.Options{Logger: slog.Default()}); err == nil {
			return b, nil
		} else {
			slog.Default().Info("no usable CUDA device, using the CPU", "reason", err.Error())
		}
		return cpu.New(cpu.Options{Logger: slog.Default()}), nil
	}
	return nil, fmt.Errorf("--device %q: want auto, cpu or cuda", device)
}
