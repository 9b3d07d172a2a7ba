"""qae host side: models, quantization, evaluation, devices, archive, reports and the CLI."""

__version__ = "0.1.0"
