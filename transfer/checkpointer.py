"""The project's one Detectron2 checkpointer: it keeps what loading could not match."""

from detectron2.checkpoint import DetectionCheckpointer


class RecordingCheckpointer(DetectionCheckpointer):
    """Detectron2 only logs the incompatible keys of a load; this keeps them for our checks:
    ``incompatible`` (missing, unexpected, wrong shape) and ``unfilled_keys`` (missing or of
    the wrong shape: the model parameters the file did not fill)."""

    incompatible = None
    unfilled_keys = ()

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        self.incompatible = incompatible
        wrong_shape = [key for key, _, _ in incompatible.incorrect_shapes]
        self.unfilled_keys = list(incompatible.missing_keys) + wrong_shape
        return incompatible
