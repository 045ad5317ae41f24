"""joulebench: does compressing a pretrained network make fine-tuning it cheaper in joules?"""

__version__ = "0.1.0"
