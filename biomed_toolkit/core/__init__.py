"""Shared core: settings, devices, errors, logging, progress, safe loading, hub and training.

The core never imports a domain package (``rna``, ``mammal``, ``mammo``).
"""
