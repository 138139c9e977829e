"""mcc's built-in passes, one small module each; `BUILTIN_PASSES` is what the registry loads."""

from mcc.passes.control.constant_if import FoldConstantIf
from mcc.passes.fusion.activations import RecognizeActivations
from mcc.passes.fusion.affine import FoldConvAffine
from mcc.passes.fusion.conv_bn import FuseConvBatchNorm
from mcc.passes.fusion.gemm import FuseGemm
from mcc.passes.fusion.magnitude import RecognizeMagnitude
from mcc.passes.fusion.pad import FoldPad
from mcc.passes.fusion.parallel import CombineParallel
from mcc.passes.quantize.fp16 import ConvertFloat16
from mcc.passes.quantize.weights import QuantizeDynamic, QuantizeWeights, QuantizeWeightsInt4
from mcc.passes.simplify.chains import SimplifyChains
from mcc.passes.simplify.noops import RemoveNoops
from mcc.passes.substitute.decompose import DecomposeUnsupported
from mcc.passes.simplify.cse import EliminateCommonSubexpressions
from mcc.passes.simplify.dead_nodes import EliminateDeadNodes
from mcc.passes.simplify.fold_constants import FoldConstants
from mcc.passes.simplify.identity import EliminateIdentity
from mcc.passes.simplify.initializer_inputs import InlineInitializerInputs
from mcc.passes.simplify.subnormals import FlushSubnormals
from mcc.passes.substitute.recurrent import SubstituteRecurrent
from mcc.passes.upgrade_opset import UpgradeOpset
from mcc.toolchain.passmanager import FixedPoint

BUILTIN_PASSES = (
    InlineInitializerInputs,
    EliminateIdentity,
    FoldConstants,
    FoldConstantIf,
    EliminateCommonSubexpressions,
    DecomposeUnsupported,
    FuseConvBatchNorm,
    FoldConvAffine,
    FuseGemm,
    FoldPad,
    SimplifyChains,
    RemoveNoops,
    RecognizeActivations,
    RecognizeMagnitude,
    CombineParallel,
    SubstituteRecurrent,
    EliminateDeadNodes,
    FlushSubnormals,
    UpgradeOpset,
    ConvertFloat16,
    QuantizeWeights,
    QuantizeWeightsInt4,
    QuantizeDynamic,
    FixedPoint,
)

__all__ = [cls.__name__ for cls in BUILTIN_PASSES] + ["BUILTIN_PASSES"]
