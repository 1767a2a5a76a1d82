"""U-Net for biomedical semantic segmentation: DSB2018 nuclei and multi-class tissue."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the way

__version__ = "0.1.0"
