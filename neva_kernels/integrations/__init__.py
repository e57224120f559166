"""Bridges from other libraries' models to neva_kernels. Each submodule imports its library; this package does not.

``neva_kernels.integrations.transformers``: Hugging Face transformers models (attention "neva", accelerate/restore).
"""
