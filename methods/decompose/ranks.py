"""Rank selection: EVBMF (the paper's default), an energy threshold, or a fixed ratio.

EVBMF is written by hand because no maintained library ships it (the paper's code vendors a copy
of CasvandenBogaard/VBMF, unpackaged). It follows the published formulas:

- Nakajima, Sugiyama, Babacan, Tomioka, "Global analytic solution of fully-observed variational
  Bayesian matrix factorization", JMLR 14 (2013): for Y (L x M, L <= M) with singular values
  gamma_h and noise variance sigma^2, the empirical-VB solution keeps exactly the components with
  gamma_h > sigma * sqrt(M * x_bar), x_bar = (1 + tau_bar)(1 + alpha / tau_bar), alpha = L / M,
  tau_bar ~= 2.5129 sqrt(alpha); each kept component is shrunk to
  gamma_h / 2 * (1 - (L+M) sigma^2 / gamma_h^2 + sqrt((1 - (L+M) sigma^2 / gamma_h^2)^2
  - 4 L M sigma^4 / gamma_h^4)).
- Nakajima, Tomioka, Sugiyama, Babacan, "Condition for perfect dimensionality recovery by
  variational Bayesian PCA", JMLR 16 (2015): sigma^2 is the minimiser of the free energy
  Omega(sigma^2) = sum_h psi(gamma_h^2 / (M sigma^2)) + sum_{h>H} psi_0(...), with
  psi_0(x) = x - log x, psi(x) = psi_0(x) + [x > x_bar] psi_1(x),
  psi_1(x) = log(tau(x) + 1) + alpha log(tau(x) / alpha + 1) - tau(x),
  tau(x) = (x - (1 + alpha) + sqrt((x - (1 + alpha))^2 - 4 alpha)) / 2,
  searched between the bounds of their Theorem (lower: max(gamma_{eH+1}^2 / (M x_bar),
  mean_{h > eH} gamma_h^2 / M) with eH = min(ceil(L / (1 + alpha)) - 1, H); upper: ||Y||_F^2 / (L M)).

Only the rank is needed here, so the shrunk values are returned for tests and diagnostics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from threadpoolctl import threadpool_limits

TAU_BAR_COEF = 2.5129  # tau_bar = 2.5129 * sqrt(alpha), Nakajima et al. 2013


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    return 0.5 * (x - (1 + alpha) + np.sqrt(np.maximum((x - (1 + alpha)) ** 2 - 4 * alpha, 0.0)))


def _free_energy(sigma2: float, L: int, M: int, s: np.ndarray, residual: float, x_bar: float) -> float:
    alpha = L / M
    x = s ** 2 / (M * sigma2)
    big, small = x[x > x_bar], x[x <= x_bar]
    tau = _tau(big, alpha)
    return float(np.sum(small - np.log(small)) + np.sum(big - np.log(big))
                 + np.sum(np.log(tau + 1) + alpha * np.log(tau / alpha + 1) - tau)
                 + residual / (M * sigma2) + (L - len(s)) * math.log(sigma2))


def evbmf(matrix: np.ndarray, sigma2: float | None = None) -> tuple[int, np.ndarray, float]:
    """(rank, shrunk singular values of the kept components, noise variance) of ``matrix``.

    The formulas assume L <= M; a tall matrix is transposed (the singular values, hence the rank,
    do not change). A rank of 0 means EVBMF sees only noise.
    """
    Y = np.asarray(matrix, dtype=np.float64)
    if Y.ndim != 2 or min(Y.shape) == 0:
        raise ValueError(f"EVBMF needs a non-empty matrix, got shape {Y.shape}")
    if Y.shape[0] > Y.shape[1]:
        Y = Y.T
    L, M = Y.shape
    with threadpool_limits(1, user_api="blas"):  # tiny matrix: threads only contend (factors.py)
        s = np.linalg.svd(Y, compute_uv=False)  # H = L: all components, so the residual is 0
    if not np.any(s > 0):
        return 0, np.zeros(0), 0.0
    alpha = L / M
    tau_bar = TAU_BAR_COEF * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    residual = 0.0
    if sigma2 is None:
        e_h = min(math.ceil(L / (1 + alpha)) - 1, L)  # upper bound of the recoverable rank
        tail = s[e_h:] if e_h < L else s[-1:]
        lower = max(tail[0] ** 2 / (M * x_bar), float(np.mean(tail ** 2)) / M)
        upper = (float(np.sum(s ** 2)) + residual) / (L * M)
        if lower >= upper:  # degenerate spectrum (e.g. L = 1): no interval to search
            sigma2 = upper
        else:
            sigma2 = float(minimize_scalar(_free_energy, args=(L, M, s, residual, x_bar),
                                           bounds=(lower, upper), method="bounded").x)
    threshold = math.sqrt(M * sigma2 * x_bar)
    kept = s[s > threshold]
    ratio = (L + M) * sigma2 / kept ** 2
    shrunk = kept / 2 * (1 - ratio + np.sqrt(np.maximum((1 - ratio) ** 2 - 4 * L * M * sigma2 ** 2 / kept ** 4, 0)))
    return int(len(kept)), shrunk, sigma2


def energy_rank(matrix: np.ndarray, energy: float) -> int:
    """Smallest r whose top-r singular values keep ``energy`` of sum(sigma^2)."""
    with threadpool_limits(1, user_api="blas"):
        s2 = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False) ** 2
    if s2.sum() == 0:
        return 0
    cum = np.cumsum(s2) / s2.sum()
    return int(min(np.searchsorted(cum, energy - 1e-12) + 1, len(s2)))


def round_up(rank: int, multiple: int, limit: int) -> int:
    """``rank`` rounded up to a multiple of ``multiple``, never above ``limit``; 0 stays 0."""
    if rank <= 0:
        return 0
    return min(limit, math.ceil(rank / multiple) * multiple)


@dataclass(frozen=True)
class RankPolicy:
    """How a rank is chosen for one mode unfolding (rows = the mode being reduced).

    kind: "vbmf" (EVBMF rank of the unfolding), "energy" (value = kept share of sum(sigma^2)) or
    "ratio" (value = share of the mode's size, rounded up). ``multiple`` rounds up afterwards.
    """

    kind: str = "vbmf"
    value: float = 0.0
    multiple: int = 1

    def rank(self, unfolding: np.ndarray) -> int:
        rows = unfolding.shape[0]
        if self.kind == "vbmf":
            r = evbmf(unfolding)[0]
        elif self.kind == "energy":
            r = energy_rank(unfolding, self.value)
        elif self.kind == "ratio":
            r = max(1, math.ceil(self.value * rows))
        else:
            raise ValueError(f"unknown rank policy {self.kind!r}")
        return round_up(min(r, rows), self.multiple, rows)

    def describe(self) -> str:
        base = self.kind if self.kind == "vbmf" else f"{self.kind}={self.value:g}"
        return base + (f",multiple={self.multiple}" if self.multiple > 1 else "")
