package cuda

import (
	"fmt"

	"github.com/llmserve/llmserve/ml"
)

func (b *Backend) RMSNormHeads(x, w ml.Tensor, headDim int, eps float32) error {
	return fmt.Errorf("%w: cuda RMSNormHeads", ml.ErrUnsupported)
}

func (b *Backend) TopKSoftmax(weights, ids, logits ml.Tensor, k int, normalize bool) error {
	return fmt.Errorf("%w: cuda TopKSoftmax", ml.ErrUnsupported)
}

func (b *Backend) MatMulExperts(dst, x, w, experts ml.Tensor) error {
	return fmt.Errorf("%w: cuda MatMulExperts", ml.ErrUnsupported)
}

func (b *Backend) ScatterAdd(dst, src, idx, scale ml.Tensor) error {
	return fmt.Errorf("%w: cuda ScatterAdd", ml.ErrUnsupported)
}
