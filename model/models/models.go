// Package models registers every architecture: import it for its side
// effect where models are loaded by name (servers, tools, tests that load
// any checkpoint).
package models

import (
	_ "github.com/llmserve/llmserve/model/llama" // LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM
	_ "github.com/llmserve/llmserve/model/qwen3" // Qwen3ForCausalLM, Qwen3MoeForCausalLM
)
