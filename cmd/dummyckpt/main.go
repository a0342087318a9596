// Command dummyckpt writes a Hugging Face model directory whose weights are
// those --load-format dummy generates (same model, same --seed): config.json,
// model.safetensors and, with -tokenizer, the tokenizer files. It gives a
// real checkpoint of a model's shape to load from disk (memory use, load
// time) and to convert for other runtimes.
//
//	dummyckpt -model Qwen/Qwen2.5-0.5B -tokenizer ../shared/testdata/tokenizers/qwen3 -out /tmp/qwen05
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/llmserve/llmserve/model"
	_ "github.com/llmserve/llmserve/model/models" // registers every architecture
)

func main() {
	name := flag.String("model", "Qwen/Qwen2.5-0.5B", "built-in model name or directory with config.json")
	out := flag.String("out", "", "directory to write (created)")
	seed := flag.Int64("seed", 0, "the --seed of the dummy weights")
	tok := flag.String("tokenizer", "", "directory whose tokenizer.json and tokenizer_config.json are copied")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "dummyckpt: -out is required")
		os.Exit(2)
	}
	if err := run(*name, *out, *seed, *tok); err != nil {
		fmt.Fprintln(os.Stderr, "dummyckpt:", err)
		os.Exit(1)
	}
}

func run(name, out string, seed int64, tok string) error {
	if err := model.WriteDummyCheckpoint(out, name, seed); err != nil {
		return err
	}
	if tok != "" {
		for _, f := range []string{"tokenizer.json", "tokenizer_config.json"} {
			b, err := os.ReadFile(filepath.Join(tok, f))
			if err != nil {
				if f == "tokenizer_config.json" && os.IsNotExist(err) {
					continue
				}
				return err
			}
			if err := os.WriteFile(filepath.Join(out, f), b, 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}
