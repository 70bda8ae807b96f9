"""QuantLinear: accuracy vs fp32, exactness vs the op sequence, native kernels per ISA, state_dict and
init_kwargs round trips, repr, bad input.

SQNR thresholds (20*log10(|y|/|y - y_q|)) come from the rounding noise: symmetric int8 with a
per-row scale amax/127 has step amax/127 and noise step^2/12; for Gaussian rows of K >= 64 amax is
about 3-3.6 sigma, so one quantized operand gives about 41-43 dB and two (W8A8) about 38-40 dB
(measured 38.3-39.6 dB on these shapes). Thresholds sit ~2 dB below the lowest expected value.
"""

import copy
import io
import json
import math

import pytest
import torch

import fastq
from fastq import _native
from fastq.nn import QuantLinear, UnsupportedLayerError
from fastq.ops import reference

W8A8_SQNR_DB = 36.0  # two quantized operands: >= 38 dB expected
WO_SQNR_DB = 39.0  # weight only: >= 41 dB expected
TORCHAO_REL_ERR = 0.013  # torchao Int8DynamicActivationInt8WeightConfig on random Gaussian layers

CONFIGS = {
    "w8a8_sym": fastq.Int8DynamicConfig(),
    "w8a8_asym": fastq.Int8DynamicConfig(act_symmetric=False),
    "wo_channel": fastq.Int8WeightOnlyConfig(),
    "wo_g32": fastq.Int8WeightOnlyConfig(group_size=32),
}


def sqnr(ref: torch.Tensor, y: torch.Tensor) -> float:
    ref, y = ref.double(), y.double()
    return 20 * math.log10(ref.norm() / (ref - y).norm())


def gaussian_linear(k: int, n: int, bias: bool = True, seed: int = 0) -> torch.nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) / math.sqrt(k))
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return lin


def native_op(op: str) -> bool:
    return fastq.kernel_for(op, "cpu") != "reference"


def op_for(cfg) -> str:
    return "int8_linear_dynamic" if isinstance(cfg, fastq.Int8DynamicConfig) else "int8_weight_only_linear"


@pytest.fixture(params=_native.ISA_NAMES)
def isa(request):
    """Force each CPU ISA the machine has (skips others), restoring the original afterwards."""
    if not fastq.native_available():
        pytest.skip("native extension not built")
    if _native.ISA_NAMES.index(request.param) > _native.ISA_NAMES.index(fastq.detected_cpu_isa()):
        pytest.skip(f"this CPU lacks {request.param}")
    original = fastq.cpu_isa()
    fastq.set_cpu_isa(request.param)
    yield request.param
    fastq.set_cpu_isa(original)


# ---- accuracy ------------------------------------------------------------------------------------

REAL_SHAPES = [(384, 1536), (1536, 384), (768, 768), (768, 3072), (3072, 768)]  # MiniLM / BERT-base (K, N)


@pytest.mark.parametrize("k,n", REAL_SHAPES, ids=[f"K{k}_N{n}" for k, n in REAL_SHAPES])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_sqnr_vs_fp32(name, k, n):
    cfg = CONFIGS[name]
    lin = gaussian_linear(k, n)
    x = torch.randn(33, k)
    q = QuantLinear.from_float(lin, cfg)
    with torch.no_grad():
        ref, y = lin(x), q(x)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    bound = W8A8_SQNR_DB if isinstance(cfg, fastq.Int8DynamicConfig) else WO_SQNR_DB
    assert sqnr(ref, y) >= bound


def _torchao_rel_err(lin: torch.nn.Linear, x: torch.Tensor):
    """torchao's int8 dynamic relative error on this layer, or None when torchao does not import."""
    try:
        import torchao.quantization as tq
    except Exception:  # torchao missing or broken: fall back to its published figure
        return None
    m = torch.nn.Sequential(copy.deepcopy(lin))
    tq.quantize_(m, tq.Int8DynamicActivationInt8WeightConfig())
    with torch.no_grad():
        ref = lin(x)
        return float((m(x) - ref).norm() / ref.norm())


@pytest.mark.parametrize("k,n", [(768, 3072), (3072, 768)])
def test_per_layer_rel_error_no_worse_than_torchao(k, n):
    lin = gaussian_linear(k, n, seed=1)
    x = torch.randn(32, k, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = lin(x)
        errs = {name: float((QuantLinear.from_float(lin, cfg)(x) - ref).norm() / ref.norm())
                for name, cfg in CONFIGS.items()}
    tao = _torchao_rel_err(lin, x)
    # torchao's weight/activation step is amax/127.5 (codes -128..127), ours amax/127 (symmetric
    # codes): 0.4% larger by design; 1% covers that and the sampling noise of the estimate.
    bound = TORCHAO_REL_ERR if tao is None else min(TORCHAO_REL_ERR, tao * 1.01)
    print(f"K={k} N={n} rel err: torchao={tao} " + " ".join(f"{a}={e:.5f}" for a, e in errs.items()))
    assert errs["w8a8_sym"] <= bound
    assert errs["w8a8_asym"] <= bound
    assert errs["wo_channel"] < errs["w8a8_sym"]  # one quantized operand instead of two
    assert errs["wo_g32"] < errs["wo_channel"]  # smaller groups, smaller steps


def test_asymmetric_activations_help_one_sided_inputs():
    lin = gaussian_linear(768, 768)
    x = torch.relu(torch.randn(64, 768))  # GELU/ReLU outputs: all codes of a symmetric grid's half wasted
    with torch.no_grad():
        ref = lin(x)
        sym = sqnr(ref, QuantLinear.from_float(lin, CONFIGS["w8a8_sym"])(x))
        asym = sqnr(ref, QuantLinear.from_float(lin, CONFIGS["w8a8_asym"])(x))
    assert asym > sym + 1.0  # halving the activation step removes ~3/4 of that noise term


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["w8a8_sym", "wo_channel"])
def test_half_inputs_keep_dtype(name, dtype):
    lin = gaussian_linear(256, 96)
    x = torch.randn(4, 7, 256).to(dtype)
    q = QuantLinear.from_float(lin, CONFIGS[name])
    with torch.no_grad():
        y = q(x)
        ref = lin(x.float())
    assert y.dtype == dtype and y.shape == (4, 7, 96)
    # the output rounding of a 16-bit float adds at most ~2^-9 relative noise (bf16): >= 40 dB on its own
    assert sqnr(ref, y.float()) >= W8A8_SQNR_DB - 2


# ---- exactness: the module computes the documented op sequence on the quantized weight -----------

TAILS = [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129]


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 9, 17), (8, 16, 16), (33, 31, 15), (2, 129, 65), (65, 64, 127),
                                   (3, 63, 33), (17, 127, 129), (9, 384, 1536)])
@pytest.mark.parametrize("act_symmetric", [True, False])
def test_w8a8_matches_integer_sequence(m, k, n, act_symmetric):
    lin = gaussian_linear(k, n, seed=k * n)
    q = QuantLinear.from_float(lin, fastq.Int8DynamicConfig(act_symmetric=act_symmetric))
    # weight: symmetric per-channel int8 codes of the float weight
    codes, scale, _ = reference.quantize_int8(lin.weight.detach(), -1, True)
    assert torch.equal(q.int_weight(), codes)
    assert torch.equal(q.weight_scale, scale.reshape(n))
    x = torch.randn(m, k) * 3
    qa, a_scale, zp = reference.quantize_int8(x, -1, act_symmetric)
    acc = (qa.long() - zp.long()) @ codes.long().T  # exact in int64
    expected = acc.to(torch.float32) * (a_scale.reshape(-1, 1) * scale.reshape(1, -1)) + lin.bias.detach()
    with torch.no_grad():
        y = q(x)
    assert torch.equal(y, expected)


@pytest.mark.parametrize("group_size", [None, 8, 32])
def test_weight_only_matches_dequantized_weight(group_size):
    k, n = 64, 33
    lin = gaussian_linear(k, n)
    q = QuantLinear.from_float(lin, fastq.Int8WeightOnlyConfig(group_size=group_size))
    codes, scale, _ = reference.quantize_int8(lin.weight.detach(), -1 if group_size is None else group_size, True)
    assert torch.equal(q.int_weight(), codes)
    assert q.weight_scale.shape == (n, 1 if group_size is None else k // group_size)
    w_deq = (codes.float().reshape(n, -1, group_size or k) * scale.reshape(n, -1, 1)).reshape(n, k)
    assert torch.equal(q.dequantized_weight(), w_deq)
    x = torch.randn(5, k)
    with torch.no_grad():
        y = q(x)
    # float accumulation order is the kernel's own: equal to float32 rounding, not bitwise
    torch.testing.assert_close(y, x.double().matmul(w_deq.double().T).add(lin.bias.double()).float(),
                               rtol=1e-5, atol=1e-5)


# ---- native kernels, every ISA -------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CONFIGS))
def test_native_kernel_runs_and_matches_reference(isa, name):
    cfg = CONFIGS[name]
    op = op_for(cfg)
    if not native_op(op):
        pytest.skip(f"no native {op} kernel in this build")
    k = 160 if getattr(cfg, "group_size", None) else 129  # a K the group size divides
    lin = gaussian_linear(k, 65)
    q = QuantLinear.from_float(lin, cfg)
    for m in (1, 8, 17):
        x = torch.randn(m, k)
        before = fastq.native_calls(op, "cpu")
        with torch.no_grad():
            y = q(x)
        assert fastq.native_calls(op, "cpu") == before + 1
        assert fastq.kernel_for(op, "cpu") == f"native:{isa}"
        args = (x, q.weight_packed, q.weight_scale, q.bias, 65)
        if op == "int8_linear_dynamic":
            assert torch.equal(y, reference.int8_linear_dynamic(*args, cfg.act_symmetric, torch.float32))
        else:
            torch.testing.assert_close(y, reference.int8_weight_only_linear(*args), rtol=1e-5, atol=1e-5)


# ---- state_dict / init_kwargs / repr -------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_round_trip_bit_exact(name, bias):
    q = QuantLinear.from_float(gaussian_linear(96, 40, bias=bias), CONFIGS[name])
    sd = q.state_dict()
    assert set(sd) == ({"weight_packed", "weight_scale", "bias"} if bias else {"weight_packed", "weight_scale"})
    assert sd["weight_packed"].dtype == torch.int8 and sd["weight_packed"].dim() == 1
    assert sd["weight_scale"].dtype == torch.float32
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    kwargs = json.loads(json.dumps(q.init_kwargs()))  # JSON-serialisable by contract
    twin = fastq.nn.MODULE_TYPES["QuantLinear"](**kwargs)
    for key, t in twin.state_dict().items():  # the empty twin has the right shapes and dtypes
        assert t.shape == sd[key].shape and t.dtype == sd[key].dtype
    twin.load_state_dict(torch.load(buf, weights_only=True))
    assert twin.init_kwargs() == q.init_kwargs()
    for key, t in q.state_dict().items():
        assert torch.equal(twin.state_dict()[key], t)
    x = torch.randn(6, 96)
    with torch.no_grad():
        assert torch.equal(twin(x), q(x))


def test_repr_and_sizes():
    q = QuantLinear.from_float(gaussian_linear(768, 3072), CONFIGS["w8a8_asym"])
    r = repr(q)
    for part in ("in_features=768", "out_features=3072", "mode=w8a8", "bits=8", "weight=per_channel",
                 "act=per_token_asymmetric"):
        assert part in r
    assert "weight=group32" in repr(QuantLinear.from_float(gaussian_linear(64, 16), CONFIGS["wo_g32"]))
    assert q.float_weight_bytes() == 4 * (768 * 3072 + 3072)
    # packed int8 weight + column sums (int32) + scales + bias
    assert q.weight_bytes() == 3072 * 768 + 4 * 3072 + 4 * 3072 + 4 * 3072
    assert q.weight_shape() == (3072, 768)


def test_module_moves_with_to_and_works_in_3d():
    q = QuantLinear.from_float(gaussian_linear(32, 24), CONFIGS["w8a8_sym"])
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        y = q(x)
        assert y.shape == (2, 5, 24)
        assert torch.equal(y[1], q(x[1]))  # per-token: batching does not change a token's result


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cuda_matches_cpu(name):
    q = QuantLinear.from_float(gaussian_linear(256, 128), CONFIGS[name])
    x = torch.randn(16, 256)
    with torch.no_grad():
        y_cpu = q(x)
        y_gpu = copy.deepcopy(q).cuda()(x.cuda()).cpu()
    torch.testing.assert_close(y_gpu, y_cpu, rtol=1e-4, atol=1e-4)


# ---- bad input -----------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    q = QuantLinear.from_float(gaussian_linear(64, 16), CONFIGS["w8a8_sym"])
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        q(torch.randint(0, 5, (2, 64)))
    with pytest.raises(TypeError, match="torch.Tensor"):
        q([1.0] * 64)
    with pytest.raises(ValueError, match=r"in_features=64 \(K mismatch\)"):
        q(torch.randn(2, 63))
    with pytest.raises(TypeError, match="expects an nn.Linear"):
        QuantLinear.from_float(torch.nn.Conv2d(3, 3, 1), CONFIGS["w8a8_sym"])
    with pytest.raises(TypeError, match="Int8DynamicConfig or Int8WeightOnlyConfig"):
        QuantLinear.from_float(gaussian_linear(64, 16), {"mode": "w8a8"})
    with pytest.raises(UnsupportedLayerError, match="group_size 48 does not divide K=64"):
        QuantLinear.from_float(gaussian_linear(64, 16), fastq.Int8WeightOnlyConfig(group_size=48))
    with pytest.raises(UnsupportedLayerError, match="group_size 128 does not divide K=64"):
        QuantLinear.from_float(gaussian_linear(64, 16), fastq.Int8WeightOnlyConfig(group_size=128))
    bad = gaussian_linear(64, 16)
    with torch.no_grad():
        bad.weight[3, 5] = float("nan")
    with pytest.raises(UnsupportedLayerError, match="NaN or Inf"):
        QuantLinear.from_float(bad, CONFIGS["w8a8_sym"])
    with pytest.raises(ValueError, match="mode must be one of"):
        QuantLinear(64, 16, mode="int4")
    with pytest.raises(ValueError, match="group_size applies only"):
        QuantLinear(64, 16, mode="w8a8", group_size=32)
    with pytest.raises(ValueError, match="non-empty"):
        QuantLinear(0, 16)
    with pytest.raises(RuntimeError, match="size mismatch"):  # a state_dict of another shape
        QuantLinear(64, 16).load_state_dict(QuantLinear(32, 16).state_dict())


def test_dtype_casts_keep_float32_scales():
    lin = gaussian_linear(64, 32)
    q = QuantLinear.from_float(lin, CONFIGS["w8a8_sym"])
    scale, bias = q.weight_scale.clone(), q.bias.clone()
    model = torch.nn.Sequential(q).to(torch.bfloat16)  # what users do to a whole model
    q.half()
    assert q.weight_scale.dtype == torch.float32 and torch.equal(q.weight_scale, scale)
    assert torch.equal(q.bias, bias) and q.weight_packed.dtype == torch.int8
    with torch.no_grad():
        assert model(torch.randn(3, 64, dtype=torch.float16)).dtype == torch.float16
