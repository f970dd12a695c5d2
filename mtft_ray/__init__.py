"""mtft-ray: multitask finetuning of foundation models for few-shot adaptation, swept with Ray."""

__version__ = "0.1.0"
