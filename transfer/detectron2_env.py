"""Import Detectron2, backing ``detectron2._C`` with ring-nce's fallback only when it is missing.

Every module of this project that touches Detectron2 imports it through ``ensure_detectron2()``
(``import transfer`` does it), so the fallback is registered before any Detectron2 submodule that
needs ``_C`` is imported.
"""

import importlib
import logging
import sys
import warnings

INSTALL_HINT = "run `make test` (or `bash tools/setup_env.sh`) to create .venv with Detectron2"
# Printed between our progress lines, and harmless here; each is silenced by message, category
# and the module that triggers it, so every other warning still shows:
# - at import: Detectron2 v0.6 scripts a few helpers with torch.jit.script (deprecated in torch
#   2.x, still working) and reads Pillow's Image.LINEAR (deprecated, kept in the Pillow<10 we pin);
# - in every FPN run: its anchor generator calls torch.meshgrid without ``indexing``, whose
#   default ("ij") is the one it relies on;
# - in keypoint runs: it builds each image's keypoints from a list of arrays (slow, correct);
# - with RLE masks (the scenes): it wraps decoded masks it only reads in tensors.
KNOWN_WARNINGS = (
    (r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit\._script"),
    (r"LINEAR is deprecated", DeprecationWarning, r"detectron2\.data\.transforms\.transform"),
    (r"torch\.meshgrid: in an upcoming release", UserWarning, r"torch\.functional"),
    (
        r"Creating a tensor from a list of numpy\.ndarrays is extremely slow",
        UserWarning,
        r"detectron2\.structures\.keypoints",
    ),
    (r"The given NumPy array is not writable", UserWarning, r"detectron2\.data\.detection_utils"),
)
# Detectron2 logs its environment at the start of each run, importing torch.utils.cpp_extension,
# which logs this when a CUDA toolkit is installed but no GPU is usable: the CPU runs need neither.
CPP_EXTENSION_LOGGER = "torch.utils.cpp_extension"
NO_CUDA_RUNTIME = "No CUDA runtime is found"


def silence_known_warnings():
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    logger = logging.getLogger(CPP_EXTENSION_LOGGER)
    if not any(isinstance(f, NoCudaRuntimeFilter) for f in logger.filters):
        logger.addFilter(NoCudaRuntimeFilter())


class NoCudaRuntimeFilter(logging.Filter):
    def filter(self, record):
        return not record.getMessage().startswith(NO_CUDA_RUNTIME)


def ensure_detectron2():
    """Return ``"compiled"`` or ``"fallback"``: which ``detectron2._C`` is in use."""
    silence_known_warnings()
    try:
        import detectron2  # noqa: F401
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"Detectron2 is not installed: {INSTALL_HINT}") from error
    current = sys.modules.get("detectron2._C")
    if current is not None:
        return "fallback" if getattr(current, "IS_FALLBACK", False) else "compiled"
    try:
        importlib.import_module("detectron2._C")
        return "compiled"
    except ModuleNotFoundError as error:
        if error.name != "detectron2._C":
            raise
    from transfer import _C_fallback

    sys.modules["detectron2._C"] = _C_fallback
    sys.modules["detectron2"]._C = _C_fallback
    return "fallback"
