"""mcc's built-in passes, one small module each; `BUILTIN_PASSES` is what the registry loads."""

from mcc.passes.fusion.conv_bn import FuseConvBatchNorm
from mcc.passes.simplify.dead_nodes import EliminateDeadNodes
from mcc.passes.simplify.fold_constants import FoldConstants
from mcc.passes.simplify.identity import EliminateIdentity
from mcc.passes.simplify.initializer_inputs import InlineInitializerInputs
from mcc.passes.upgrade_opset import UpgradeOpset

BUILTIN_PASSES = (
    InlineInitializerInputs,
    EliminateIdentity,
    FoldConstants,
    FuseConvBatchNorm,
    EliminateDeadNodes,
    UpgradeOpset,
)

__all__ = [cls.__name__ for cls in BUILTIN_PASSES] + ["BUILTIN_PASSES"]
