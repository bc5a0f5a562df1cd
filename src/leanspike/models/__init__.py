"""The model zoo: every leanspike model is an ``nn.Sequential`` of per-time-step modules.

Build one by name with :func:`build_model`; :func:`describe_models` lists them.
"""

from .registry import MODELS, build_model, describe_models, model_options

__all__ = ["MODELS", "build_model", "describe_models", "model_options"]
