package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
)

var (
	tinyTokOnce sync.Once
	tinyTokDir  string
	tinyTokErr  error
)

// tinyTokenizer writes (once per test binary) a byte-level BPE tokenizer
// that fits the tiny test models' 512-row vocabulary: the Qwen3
// tokenizer's first 500 tokens and the merges among them, with
// <|endoftext|>, <|im_start|> and <|im_end|> as ids 500-502, and Qwen3's
// chat template.
func tinyTokenizer(t *testing.T) string {
	t.Helper()
	src := filepath.Join(shareddata.Dir(t), "tokenizers", "qwen3")
	tinyTokOnce.Do(func() { tinyTokDir, tinyTokErr = writeTinyTokenizer(src) })
	if tinyTokErr != nil {
		t.Fatal(tinyTokErr)
	}
	return tinyTokDir
}

func writeTinyTokenizer(src string) (string, error) {
	const keep = 500
	var tj map[string]any
	b, err := os.ReadFile(filepath.Join(src, "tokenizer.json"))
	if err != nil {
		return "", err
	}
	if err := json.Unmarshal(b, &tj); err != nil {
		return "", err
	}
	m := tj["model"].(map[string]any)
	vocab := map[string]any{}
	for tok, id := range m["vocab"].(map[string]any) {
		if id.(float64) < keep {
			vocab[tok] = id
		}
	}
	var merges []any
	for _, mg := range m["merges"].([]any) {
		pair := mg.([]any)
		a, b := pair[0].(string), pair[1].(string)
		if vocab[a] != nil && vocab[b] != nil && vocab[a+b] != nil {
			merges = append(merges, mg)
		}
	}
	m["vocab"], m["merges"] = vocab, merges
	var added []any
	for i, content := range []string{"<|endoftext|>", "<|im_start|>", "<|im_end|>"} {
		added = append(added, map[string]any{"id": keep + i, "content": content, "single_word": false,
			"lstrip": false, "rstrip": false, "normalized": false, "special": true})
	}
	tj["added_tokens"] = added

	var cfg map[string]any
	if b, err = os.ReadFile(filepath.Join(src, "tokenizer_config.json")); err != nil {
		return "", err
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return "", err
	}
	delete(cfg, "added_tokens_decoder")
	cfg["additional_special_tokens"] = []string{"<|im_start|>", "<|im_end|>"}

	dir, err := os.MkdirTemp("", "llmserve-tinytok-")
	if err != nil {
		return "", err
	}
	for name, v := range map[string]any{"tokenizer.json": tj, "tokenizer_config.json": cfg} {
		out, err := json.Marshal(v)
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, name), out, 0o644); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// removeFixtures deletes what the tests generated (TestMain calls it).
func removeFixtures() {
	if tinyTokDir != "" {
		os.RemoveAll(tinyTokDir)
	}
}
