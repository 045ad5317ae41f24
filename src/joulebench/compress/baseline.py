"""baseline: fine-tune the pretrained model as it is."""

from joulebench.compress.base import Method


class Baseline(Method):
    """Fine-tune the model as it is."""

    name = "baseline"
