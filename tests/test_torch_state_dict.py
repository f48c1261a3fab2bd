"""The torch-free state-dict reader: exact values from real torch.save output, and safety."""

import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lrp_cli.importers.torch_state_dict import LEGACY_MAGIC, LEGACY_PROTOCOL, load_state_dict

FIXTURES = Path(__file__).parent / "fixtures"

# What scripts/make_state_dict_fixture.py saved (with torch 2.13), as literals.
EXPECTED = {
    "dense.weight": np.array([[-1.0, -0.5, 0.0], [0.5, 1.0, 1.5]], np.float32),
    "transposed": np.array([[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]], np.float32),
    "offset_view": np.array([4.5, 6.0, 7.5, 9.0], np.float32),
    "strided_view": np.array([1.5, 6.0, 10.5], np.float32),
    "double": np.array([1 / 3, -2.5e-300, 1e300], np.float64),
    "long": np.array([-(2**40), 0, 7], np.int64),
    "bn.num_batches_tracked": np.array(5, np.int64),
    "half": np.array([0.5, -2.0, 65504.0], np.float16),
    "bf16": np.array([1.0, -3.5, 0.15625], np.float32),  # bfloat16 is widened to float32
    "flag": np.array([True, False, True]),
    "empty": np.zeros((0, 3), np.float32),
}


@pytest.mark.parametrize("name", ["legacy_state_dict.pth", "zip_state_dict.pth"])
def test_fixture_round_trips_exactly(name):
    sd = load_state_dict(FIXTURES / name)
    assert list(sd) == list(EXPECTED)  # order kept, as in the OrderedDict
    for key, want in EXPECTED.items():
        got = sd[key]
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        np.testing.assert_array_equal(got, want, err_msg=key)
        assert got.flags.c_contiguous and got.flags.writeable, key


def test_views_are_copies_not_aliases():
    sd = load_state_dict(FIXTURES / "legacy_state_dict.pth")
    sd["offset_view"][0] = -1  # must not leak into another view of the same storage
    assert sd["strided_view"][1] == 6.0


def _legacy_header() -> bytes:
    """Return the three header pickles of a valid legacy checkpoint."""
    sys_info = {"protocol_version": LEGACY_PROTOCOL, "little_endian": True}
    return b"".join(pickle.dumps(v, protocol=2) for v in (LEGACY_MAGIC, LEGACY_PROTOCOL, sys_info))


def _os_system_pickle(marker: Path) -> bytes:
    """Return a protocol-0 pickle whose REDUCE would run os.system('touch MARKER')."""
    return b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."


def _eval_pickle(marker: Path) -> bytes:
    """Return a protocol-4 pickle (STACK_GLOBAL) whose REDUCE would run builtins.eval(...)."""

    class Payload:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w').close()",))

    return pickle.dumps(Payload(), protocol=4)


@pytest.mark.parametrize("where", ["header", "main", "zip"])
def test_refuses_os_system_and_does_not_run_it(tmp_path, where):
    marker = tmp_path / "pwned"
    payload = _os_system_pickle(marker)
    path = tmp_path / "evil.pth"
    if where == "header":
        path.write_bytes(payload)
    elif where == "main":
        path.write_bytes(_legacy_header() + payload)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("evil/data.pkl", payload)
    with pytest.raises(ValueError, match=r"os\.system") as err:
        load_state_dict(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_refuses_builtins_eval_and_does_not_run_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_header() + _eval_pickle(marker))
    with pytest.raises(ValueError, match=r"builtins\.eval"):
        load_state_dict(path)
    assert not marker.exists()


def test_refuses_non_tensor_entries(tmp_path):
    path = tmp_path / "notensor.pth"
    path.write_bytes(_legacy_header() + pickle.dumps({"a": 1}, protocol=2) + pickle.dumps([]))
    with pytest.raises(ValueError, match="not a tensor"):
        load_state_dict(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "cannot read|malformed"),
        (b"\x00garbage\xff" * 10, "malformed"),
        (pickle.dumps(12345, protocol=2) * 3, "not a PyTorch checkpoint"),
    ],
)
def test_not_a_checkpoint(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        load_state_dict(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_truncated_storage_bytes(tmp_path):
    data = (FIXTURES / "legacy_state_dict.pth").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[:-5])
    with pytest.raises(ValueError, match="truncated"):
        load_state_dict(path)


def test_wrong_storage_count_header(tmp_path):
    # A storage whose int64 element count disagrees with the pickle is rejected, not misread.
    data = bytearray((FIXTURES / "legacy_state_dict.pth").read_bytes())
    f = io.BytesIO(bytes(data))
    for _ in range(3):  # magic, protocol, sys_info: plain values
        pickle.load(f)
    _skip_pickle(f)  # the main pickle names torch globals, so only walk over it
    pickle.load(f)  # storage keys; the first storage's element count follows
    data[f.tell() : f.tell() + 8] = struct.pack("<q", 10**6)
    path = tmp_path / "count.pth"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="truncated or inconsistent"):
        load_state_dict(path)


def _skip_pickle(f):
    """Advance f past one pickle without resolving its globals (pickletools never imports)."""
    import pickletools

    for op, _arg, _pos in pickletools.genops(f):
        if op.name == "STOP":
            return


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.pth"):
        load_state_dict(tmp_path / "nope.pth")
