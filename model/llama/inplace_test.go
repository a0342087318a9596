package llama

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/modeltest"
)

// TestCheckpointInPlace: a bf16 checkpoint written from the dummy weights
// (model.WriteDummyCheckpoint) loads with its matmul weights used in place
// in the mapped file, and gives the dummy model's logits exactly; with
// int8 quantization only the bf16 embedding.
func TestCheckpointInPlace(t *testing.T) {
	src := filepath.Join(shareddata.Dir(t), "models", "llama3-tiny-bf16")
	dir := t.TempDir()
	if err := model.WriteDummyCheckpoint(dir, src, 7); err != nil {
		t.Fatal(err)
	}
	dummy := modeltest.Load(t, src, model.LoadOptions{LoadFormat: "dummy", Seed: 7})
	ckpt := modeltest.Load(t, dir, model.LoadOptions{})
	int8 := modeltest.Load(t, dir, model.LoadOptions{Quantization: "int8"})
	d := ckpt.(*Model)
	// Everything but the f32 norms is bf16 in the file and in use.
	if d.WeightBytesInPlace() == 0 || float64(d.WeightBytesInPlace()) < 0.9*float64(d.WeightBytes()) {
		t.Errorf("in place: %d of %d weight bytes", d.WeightBytesInPlace(), d.WeightBytes())
	}
	// Quantized, only an untied embedding (kept in bf16) is in place.
	c := ckpt.Config()
	want := int64(0)
	if !c.TieWordEmbeddings {
		want = int64(c.VocabSize * c.HiddenSize * 2)
	}
	if n := int8.(*Model).WeightBytesInPlace(); n != want {
		t.Errorf("int8: %d bytes in place, want %d", n, want)
	}
	tokens := []int32{1, 5, 9, 2, 7, 3}
	var got [][][]float32
	for _, m := range []model.Model{dummy, ckpt} {
		if err := m.(*Model).AllocateKV(16, 4); err != nil {
			t.Fatal(err)
		}
		r := &modeltest.SeqRun{M: m, Blocks: []int32{0, 1, 2, 3}}
		rows := r.Step(t, tokens[:4])
		rows = append(rows, r.Step(t, tokens[4:5])...)
		got = append(got, rows)
	}
	for i := range got[0] {
		if !slices.Equal(got[0][i], got[1][i]) {
			t.Fatalf("position %d: logits of the checkpoint differ from the dummy model's", i)
		}
	}
}
