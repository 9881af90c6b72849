"""Run under horovodrun -np 2: float16 Sum allreduces of many lengths (below one 8-wide vector,
odd, exact multiples, a million and more) with Inf, NaN, overflow, subnormals and rounding ties at
both ends (the vectorised body and the scalar tail). Every rank builds both ranks' inputs from the
same seeds and compares Horovod's result with the float32 sum rounded once to float16. Prints one
JSON line per rank; exit 3 on any mismatch."""

import json
import sys

import horovod.torch as hvd
import torch

LENGTHS = [1, 2, 7, 8, 9, 15, 16, 17, 31, 64, 65, 1001, 1 << 20, (1 << 20) + 3]
# (rank 0, rank 1) pairs: specials, overflow to Inf, subnormal sums, and round-to-nearest-even ties
PAIRS = [(float("inf"), 1.0), (float("-inf"), -2.0), (float("nan"), 3.0), (float("inf"),
         float("-inf")), (60000.0, 60000.0), (-65504.0, -65504.0), (6e-8, 6e-8), (-0.0, -0.0),
         (1.0, 2.0 ** -11), (1.0 + 2.0 ** -10, 2.0 ** -11), (2048.0, 1.0), (2050.0, 1.0),
         (0.1, 0.2), (-3.5, 3.5)]


def inputs(n: int, rank: int) -> torch.Tensor:
    t = (torch.randn(n, generator=torch.Generator().manual_seed(n * 2 + rank)) * 100).half()
    specials = torch.tensor([p[rank] for p in PAIRS], dtype=torch.float16)
    k = min(n, len(PAIRS))
    t[:k] = specials[:k]  # at the start: inside the vector loop when n >= 8
    if n > 2 * len(PAIRS):
        t[-k:] = specials[:k]  # and at the very end: the scalar tail when n % 8 != 0
    return t


def main() -> int:
    # Horovod: join the job (Gloo rendezvous).
    hvd.init()
    assert hvd.size() == 2, "run with -np 2"
    bad = {}
    for n in LENGTHS:
        mine = inputs(n, hvd.rank())
        # Horovod: the float16 Sum allreduce under test (Gloo's reduction function).
        got = hvd.allreduce(mine, op=hvd.Sum, name=f"fp16_sum_{n}")
        want = (inputs(n, 0).float() + inputs(n, 1).float()).half()
        same_nan = torch.equal(torch.isnan(got), torch.isnan(want))
        numbers = ~torch.isnan(want)
        same_bits = torch.equal(got[numbers].view(torch.int16), want[numbers].view(torch.int16))
        if not (same_nan and same_bits):
            wrong = (got.view(torch.int16) != want.view(torch.int16)) & numbers
            bad[n] = wrong.nonzero().flatten()[:5].tolist()
    print(json.dumps({"rank": hvd.rank(), "lengths": LENGTHS, "mismatches": bad}), flush=True)
    return 3 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
