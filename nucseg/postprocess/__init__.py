"""Post-processing of predicted probabilities into instance labels."""

from nucseg.postprocess.instances import StreamingLabeler, foreground, label_instances

__all__ = ["StreamingLabeler", "foreground", "label_instances"]
