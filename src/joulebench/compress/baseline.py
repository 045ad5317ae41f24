"""baseline: fine-tune the pretrained model as it is."""

from joulebench.compress.base import Method
from joulebench.method_params import PARAMS


class Baseline(Method):
    """Fine-tune the model as it is."""

    name = "baseline"
    params = PARAMS["baseline"]
