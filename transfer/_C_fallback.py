"""Stand-in for ``detectron2._C`` when Detectron2 was installed without its C++ extension.

Detectron2 v0.6 imports ``_C`` at import time in a few modules but calls it only for rotated
boxes, deformable convolution and the fast COCO evaluator. The models and evaluators this suite
uses (R50-FPN/C4 Mask and Keypoint R-CNN, Faster R-CNN, pycocotools COCO evaluation) use
torchvision's ``roi_align`` and ``nms`` instead, so they run with this module. Every op it does
not cover raises ``MissingCompiledOp`` naming the op and how to get a compiled build.
"""

import torch

IS_FALLBACK = True

BUILD_HINT = (
    "install a compiled Detectron2 (e.g. `pip install --no-build-isolation "
    "'git+https://github.com/facebookresearch/detectron2.git'` on a machine with a compiler, "
    "see README 'Bring your own compiled Detectron2')"
)


class MissingCompiledOp(RuntimeError):
    pass


def _missing(op, alternative=None):
    def raise_missing(*args, **kwargs):
        message = (
            f"detectron2._C.{op} is not available: this Detectron2 was installed without its "
            f"C++ extension (ring-nce's pip-only route); {BUILD_HINT}"
        )
        if alternative:
            message += f", or {alternative}"
        raise MissingCompiledOp(message)

    raise_missing.__name__ = op
    return raise_missing


def get_compiler_version():
    return "none (ring-nce _C fallback)"


def get_cuda_version():
    return "none (ring-nce _C fallback)"


def has_cuda():
    return False


_ROTATED = "use axis-aligned boxes"
_DEFORM = "set MODEL.RESNETS.DEFORM_ON_PER_STAGE to all False"
_FAST_EVAL = "use COCOEvaluator(..., use_fast_impl=False) (pycocotools)"

box_iou_rotated = _missing("box_iou_rotated", _ROTATED)
nms_rotated = _missing("nms_rotated", _ROTATED)
roi_align_rotated_forward = _missing("roi_align_rotated_forward", _ROTATED)
roi_align_rotated_backward = _missing("roi_align_rotated_backward", _ROTATED)
deform_conv_forward = _missing("deform_conv_forward", _DEFORM)
deform_conv_backward_input = _missing("deform_conv_backward_input", _DEFORM)
deform_conv_backward_filter = _missing("deform_conv_backward_filter", _DEFORM)
modulated_deform_conv_forward = _missing("modulated_deform_conv_forward", _DEFORM)
modulated_deform_conv_backward = _missing("modulated_deform_conv_backward", _DEFORM)
InstanceAnnotation = _missing("InstanceAnnotation", _FAST_EVAL)
ImageEvaluation = _missing("ImageEvaluation", _FAST_EVAL)
COCOevalEvaluateImages = _missing("COCOevalEvaluateImages", _FAST_EVAL)
COCOevalAccumulate = _missing("COCOevalAccumulate", _FAST_EVAL)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingCompiledOp(
        f"detectron2._C.{name} is not provided by ring-nce's fallback for the missing C++ "
        f"extension; {BUILD_HINT}"
    )


def _register_torch_op_stub():
    # v0.6's layers/nms.py calls torch.ops.detectron2.nms_rotated directly.
    if hasattr(torch.ops, "detectron2") and hasattr(torch.ops.detectron2, "nms_rotated"):
        return
    try:
        library = torch.library.Library("detectron2", "DEF")
        library.define("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")
        library.impl("nms_rotated", nms_rotated, "CompositeExplicitAutograd")
    except RuntimeError:
        return
    _register_torch_op_stub.library = library


_register_torch_op_stub()
