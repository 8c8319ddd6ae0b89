"""Decomposition-accelerated training (Elhoushi et al. 2019): see README.md in this folder."""
from methods.decompose.method import Decompose

__all__ = ["Decompose"]
