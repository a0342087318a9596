"""The GPU's device-to-device copy rate, the bandwidth floor the decode
figures are set against: the median of 20 copies of 2 GiB (torch copy_),
counted as bytes read plus bytes written."""
import torch

a = torch.empty(2**31, dtype=torch.uint8, device="cuda")
b = torch.empty_like(a)
for _ in range(3):
    b.copy_(a)
torch.cuda.synchronize()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
times = []
for _ in range(20):
    start.record()
    b.copy_(a)
    end.record()
    end.synchronize()
    times.append(start.elapsed_time(end))
times.sort()
ms = times[len(times) // 2]
print(f"device-to-device copy of 2 GiB: median {ms:.3f} ms, {2 * 2**31 / ms / 1e9:.2f} TB/s (read+write)")
