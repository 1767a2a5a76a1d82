"""U-Net for biomedical semantic segmentation: DSB2018 nuclei and multi-class tissue."""

__version__ = "0.1.0"
