"""Adapters that put QuickMerge++ inside third-party model implementations.

``qm_export.adapters.hf`` patches Hugging Face ``transformers`` models in place (it imports
``transformers``; nothing else in ``qm_export`` does at import time).
"""
