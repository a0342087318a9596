package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/server"
)

// phaseLog logs each start-up phase with its duration, and the total.
type phaseLog struct {
	log   *slog.Logger
	start time.Time
	last  time.Time
}

func newPhaseLog(log *slog.Logger) *phaseLog {
	now := time.Now()
	return &phaseLog{log: log, start: now, last: now}
}

// done logs the phase that ends now.
func (p *phaseLog) done(phase string, attrs ...any) {
	now := time.Now()
	args := append([]any{"phase", phase, "seconds", seconds(now.Sub(p.last))}, attrs...)
	p.log.Info("start-up phase done", args...)
	p.last = now
}

func (p *phaseLog) total() string { return seconds(time.Since(p.start)) }

func seconds(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

// chatTemplateSource resolves --chat-template as vLLM does: a file's
// contents when the value names a file, else the value itself when it
// looks like a Jinja template.
func chatTemplateSource(v string) (string, error) {
	if b, err := os.ReadFile(v); err == nil {
		return string(b), nil
	} else if !errors.Is(err, os.ErrNotExist) && !strings.ContainsAny(v, "{\n") {
		return "", fmt.Errorf("--chat-template %s: %w", v, err)
	}
	if strings.Contains(v, "{{") || strings.Contains(v, "{%") {
		return v, nil
	}
	return "", fmt.Errorf("--chat-template %q: no such file, and not an inline Jinja template (no {{ or {%%)", v)
}

// generationDefaults reads --generation-config: auto takes the model
// directory's generation_config.json, vllm takes none, anything else is a
// directory holding one. Its temperature, top_p, top_k and
// repetition_penalty become the defaults of requests that do not set them.
func generationDefaults(cfg *config, modelDir string) (server.SamplingDefaults, string, error) {
	var gc struct {
		Temperature       *float64 `json:"temperature"`
		TopP              *float64 `json:"top_p"`
		TopK              *int     `json:"top_k"`
		RepetitionPenalty *float64 `json:"repetition_penalty"`
	}
	dir, path := "", ""
	switch cfg.GenerationConfig {
	case "vllm":
	case "auto", "":
		dir = modelDir // "" for a built-in config: none
	default:
		dir = cfg.GenerationConfig
	}
	if dir != "" {
		path = filepath.Join(dir, "generation_config.json")
		b, err := os.ReadFile(path)
		switch {
		case errors.Is(err, os.ErrNotExist) && cfg.GenerationConfig == "auto":
			path = ""
		case err != nil:
			return server.SamplingDefaults{}, "", fmt.Errorf("--generation-config: %w", err)
		default:
			if err := json.Unmarshal(b, &gc); err != nil {
				return server.SamplingDefaults{}, "", fmt.Errorf("--generation-config: %s: %w", path, err)
			}
		}
	}
	if cfg.OverrideGenConfig != "" {
		// Fields it names replace the file's; the others stay.
		dec := json.NewDecoder(strings.NewReader(cfg.OverrideGenConfig))
		if err := dec.Decode(&gc); err != nil {
			return server.SamplingDefaults{}, "", fmt.Errorf("--override-generation-config: %w", err)
		}
		path = strings.TrimPrefix(path+" + --override-generation-config", " + ")
	}
	return server.SamplingDefaults{Temperature: gc.Temperature, TopP: gc.TopP, TopK: gc.TopK, RepetitionPenalty: gc.RepetitionPenalty}, path, nil
}

// checkTokenizerVocab refuses a tokenizer that can produce ids the model
// has no embedding row for: every text request would fail.
func checkTokenizerVocab(tokVocab int, tdir string, mc *model.Config) error {
	if mc.VocabSize > 0 && tokVocab > mc.VocabSize {
		return fmt.Errorf("the tokenizer in %s has %d tokens but the model has %d embedding rows (vocab_size in config.json): "+
			"its ids would be out of range for every text request; use the model's own tokenizer (--tokenizer DIR) "+
			"or send token ids with --skip-tokenizer-init", tdir, tokVocab, mc.VocabSize)
	}
	return nil
}

// notBuiltin explains a failed dummy load of a name that is neither a
// local directory nor a built-in config.
func notBuiltin(name string, err error) error {
	return fmt.Errorf("--model %s with --load-format dummy: not a local directory and not a built-in name; built-in names are %s "+
		"(fetching its config.json from the Hugging Face hub failed too: %w)", name, strings.Join(model.BuiltinModels(), ", "), err)
}
