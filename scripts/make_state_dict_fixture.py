"""Write the tiny PyTorch checkpoints tests/test_torch_state_dict.py reads (needs torch; run once).

    python scripts/make_state_dict_fixture.py tests/fixtures

The tensors cover what a state-dict reader must get right: several dtypes, a 0-d tensor,
an empty tensor, a transposed (non-contiguous) view, and two views at non-zero offsets
into one shared storage. The expected values are written as literals in the test, so the
test itself never needs torch. Storage keys come from object ids, so the bytes differ
between runs while the contents do not.
"""

import collections
import sys
from pathlib import Path

import torch


def fixture_state_dict() -> "collections.OrderedDict[str, torch.Tensor]":
    """Return the fixture state dict."""
    shared = torch.arange(10, dtype=torch.float32) * 1.5
    sd = collections.OrderedDict()
    sd["dense.weight"] = torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.5 - 1
    sd["transposed"] = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    sd["offset_view"] = shared[3:7]
    sd["strided_view"] = shared[1::3]
    sd["double"] = torch.tensor([1 / 3, -2.5e-300, 1e300], dtype=torch.float64)
    sd["long"] = torch.tensor([-(2**40), 0, 7], dtype=torch.int64)
    sd["bn.num_batches_tracked"] = torch.tensor(5)
    sd["half"] = torch.tensor([0.5, -2.0, 65504.0], dtype=torch.float16)
    sd["bf16"] = torch.tensor([1.0, -3.5, 0.15625], dtype=torch.bfloat16)
    sd["flag"] = torch.tensor([True, False, True])
    sd["empty"] = torch.zeros(0, 3)
    assert not sd["transposed"].is_contiguous() and sd["offset_view"].storage_offset() == 3
    return sd


def main(out_dir: str) -> None:
    """Write legacy_state_dict.pth (pickle stream) and zip_state_dict.pth (zip) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = fixture_state_dict()
    torch.save(sd, out / "legacy_state_dict.pth", _use_new_zipfile_serialization=False)
    torch.save(sd, out / "zip_state_dict.pth")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
