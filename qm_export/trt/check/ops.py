"""What the TensorRT ONNX parser supports, per version: ops, documented input types, dtypes.

Sources (facts only; see ``docs/tensorrt.md``): onnx-tensorrt ``docs/operators.md`` at the
10.0/10.1 release branches and at 10.15, onnx-tensorrt ``docs/Changelog.md`` (10.x) and
NVIDIA/TensorRT ``CHANGELOG.md`` (11.0, 11.1).
"""

from __future__ import annotations

from ..versions import TrtVersion

__all__ = [
    "supported_ops",
    "is_supported_op",
    "is_documented_unsupported",
    "op_added_in",
    "DOCUMENTED_TYPES",
    "DTYPE_NAMES",
    "dtype_verdict",
]

# Ops marked "Y" in operators.md of TensorRT 10.0 (default ONNX domain).
_BASE_10_0 = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
    Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather
    GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
    GridSample GroupNormalization HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization
    IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization
    LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero
    Not OneHot Or PRelu Pad ParametricSoftplus Pow QuantizeLinear RNN RandomNormal RandomNormalLike
    RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
    ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign
    Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size
    Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile
    TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)

# Ops added later: op -> the first TensorRT version whose parser imports it.
_ADDED: dict[str, TrtVersion] = {
    "DeformConv": TrtVersion(10, 1),
    "BlackmanWindow": TrtVersion(10, 4),
    "HammingWindow": TrtVersion(10, 4),
    "HannWindow": TrtVersion(10, 4),
    "STFT": TrtVersion(10, 5),
    "Attention": TrtVersion(10, 14),
    "RMSNormalization": TrtVersion(10, 15),
    "RotaryEmbedding": TrtVersion(10, 15),
    "TensorScatter": TrtVersion(10, 15),
    "Swish": TrtVersion(11, 0),
}

# Ops operators.md lists as "N" (not supported) in 10.15.
_DOCUMENTED_UNSUPPORTED = frozenset(
    """
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor CenterCropPad Col2Im Compress
    ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool
    MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement
    OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty
    SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
    StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
    """.split()
)


def op_added_in(op_type: str) -> TrtVersion | None:
    """The version that added ``op_type`` to the parser (``None``: in 10.0 already, or never)."""
    return _ADDED.get(op_type)


def supported_ops(version: TrtVersion) -> frozenset[str]:
    """The default-domain ops the parser of ``version`` imports."""
    return _BASE_10_0 | {op for op, since in _ADDED.items() if version >= since}


def is_supported_op(op_type: str, version: TrtVersion) -> bool:
    """Whether the parser of ``version`` has an importer for default-domain ``op_type``."""
    return op_type in supported_ops(version)


def is_documented_unsupported(op_type: str) -> bool:
    """Whether operators.md explicitly lists ``op_type`` as not supported."""
    return op_type in _DOCUMENTED_UNSUPPORTED


_F = ("FLOAT", "FLOAT16", "BFLOAT16")
_FI = _F + ("INT32", "INT64")
#: Types operators.md (10.15) documents for the first input of ops that token merging and
#: transformers use; an op missing here is not type-checked.
DOCUMENTED_TYPES: dict[str, tuple[str, ...]] = {
    "CumSum": _F,
    "TopK": _FI,
    "ArgMax": _FI,
    "ArgMin": _FI,
    "MatMul": _F,
    "Gemm": _F,
    "Softmax": _F,
    "LogSoftmax": _F,
    "LayerNormalization": _F,
    "NonZero": ("FLOAT", "FLOAT16"),
    "ScatterElements": _FI,
    "ScatterND": _FI,
    "Gather": _FI + ("BOOL",),
    "GatherElements": _FI + ("BOOL",),
    "GatherND": _FI + ("BOOL",),
    "Sqrt": _F,
    "Exp": _F,
    "Log": _F,
    "Erf": _F,
    "Tanh": _F,
    "Sigmoid": _F,
    "Reciprocal": _F,
    "Floor": _F,
    "Ceil": _F,
    "Round": _F,
    "Add": _FI,
    "Sub": _FI,
    "Mul": _FI,
    "Div": _FI,
    "Equal": _FI,
    "Less": _FI,
    "Greater": _FI,
    "ReduceSum": _FI,
    "ReduceMax": _FI,
    "ReduceMin": _FI,
    "ReduceMean": _FI,
}

DTYPE_NAMES: dict[int, str] = {
    1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING",
    9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128",
    16: "BFLOAT16", 17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ",
    21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1", 24: "FLOAT8E8M0", 25: "UINT2", 26: "INT2",
    27: "FLOAT6E2M3", 28: "FLOAT6E3M2",
}  # fmt: skip

_NATIVE = {"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "BOOL"}
_QUANTIZED = {"INT8", "FLOAT8E4M3FN", "INT4", "FLOAT4E2M1"}


def dtype_verdict(dtype: int, version: TrtVersion) -> tuple[str, str] | None:
    """``(severity, reason)`` for a tensor of ONNX type ``dtype``, or ``None`` when it is fine.

    Documented ONNX types of the parser: DOUBLE (cast down to FLOAT), FLOAT, FLOAT16,
    BFLOAT16, FP8 (E4M3FN), FP4 (E2M1, 10.8+), INT32, INT64, INT8, INT4, UINT8 (network I/O
    only) and BOOL. Everything else has no TensorRT type.
    """
    name = DTYPE_NAMES.get(dtype, f"type {dtype}")
    if name in _NATIVE:
        return None
    if name == "INT64":
        return ("info", "INT64 is native since TensorRT 10 (int64 inputs need int64 buffers); prefer int32 indices")
    if name == "DOUBLE":
        return ("warning", "DOUBLE has no TensorRT type: the parser casts it to FLOAT, clamping to +-FLT_MAX")
    if name == "UINT8":
        return ("warning", "UINT8 is supported only for network inputs/outputs (UINT8 constants become INT32)")
    if name == "FLOAT4E2M1" and not version.at_least(10, 8):
        return ("error", f"FLOAT4E2M1 needs TensorRT 10.8 or later (checking for {version})")
    if name in _QUANTIZED:
        return ("info", f"{name} is a quantized type in TensorRT: supported only through Quantize/DequantizeLinear")
    return ("error", f"{name} has no TensorRT data type; the parser cannot import it")
