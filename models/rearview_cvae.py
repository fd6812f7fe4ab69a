"""Conditional VAE of RearView's single-flow screening (one model for every triplet).

RearView (authors) trains one VAE per (server IP, server port, protocol) triplet. Here a
single conditional VAE replaces them: the condition (a triplet, or one of its fallbacks)
is a learned embedding concatenated to the encoder and decoder inputs, so thousands of
triplets train in one batched model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOGVAR_CLAMP = 10.0


class ConditionalVAE(nn.Module):
    r"""Conditional VAE with the authors' attention-gated encoder.

    Encoder: ``[x || c] -> 128 -> 64 -> 32 -> 16`` (ReLU between layers), an attention
    gate :math:`h \leftarrow h \odot \sigma(W_a h)`, then ``mu`` and ``logvar`` heads of
    ``latent_dim`` (16). Decoder: ``[z || c] -> 16 -> 32 -> 64 -> 128 -> num_features``,
    linear output (inputs are standardised, not min-max scaled).

    Loss (:meth:`loss`): per-flow summed squared error + KL divergence to N(0, I) +
    ``sparsity`` * :math:`\lVert \mu \rVert_1`, averaged over the batch.

    Args:
        num_features: input width ``F``.
        num_conditions: number of condition ids ``C`` (embedding rows).
        condition_dim: width of the learned condition embedding.
        latent_dim: latent width (16 as in the paper).
        sparsity: weight of the ``|mu|`` penalty (0.001).
    """

    def __init__(
        self,
        num_features: int,
        num_conditions: int,
        condition_dim: int = 16,
        latent_dim: int = 16,
        sparsity: float = 0.001,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.num_conditions = num_conditions
        self.latent_dim = latent_dim
        self.sparsity = sparsity
        self.condition_embedding = nn.Embedding(num_conditions, condition_dim)
        self.encoder = nn.Sequential(
            nn.Linear(num_features + condition_dim, 128), nn.ReLU(),
            nn.Linear(128, 64), nn.ReLU(),
            nn.Linear(64, 32), nn.ReLU(),
            nn.Linear(32, 16),
        )
        self.attention = nn.Linear(16, 16)
        self.fc_mu = nn.Linear(16, latent_dim)
        self.fc_logvar = nn.Linear(16, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim + condition_dim, 16), nn.ReLU(),
            nn.Linear(16, 32), nn.ReLU(),
            nn.Linear(32, 64), nn.ReLU(),
            nn.Linear(64, 128), nn.ReLU(),
            nn.Linear(128, num_features),
        )

    def encode(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: [N, F]`` float, ``condition: [N]`` long -> ``(mu, logvar)``, each ``[N, latent_dim]``."""
        c = self.condition_embedding(condition)
        h = self.encoder(torch.cat([x, c], dim=1))
        h = h * torch.sigmoid(self.attention(h))
        logvar = self.fc_logvar(h).clamp(-LOGVAR_CLAMP, LOGVAR_CLAMP)
        return self.fc_mu(h), logvar

    def decode(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """``z: [N, latent_dim]``, ``condition: [N]`` -> reconstruction ``[N, F]``."""
        return self.decoder(torch.cat([z, self.condition_embedding(condition)], dim=1))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampled reconstruction (training): ``(recon [N, F], mu, logvar)``."""
        mu, logvar = self.encode(x, condition)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z, condition), mu, logvar

    def loss(self, x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ``SSE + KL + sparsity * |mu|_1`` (a scalar)."""
        sse = F.mse_loss(recon, x, reduction="none").sum(dim=1)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
        return (sse + kl + self.sparsity * mu.abs().sum(dim=1)).mean()

    @torch.no_grad()
    def screen(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Deterministic screening values (decodes ``mu``, no sampling).

        Returns ``recon_error [N]`` (mean squared error per flow), ``latent_norm [N]``
        (:math:`\\lVert \\mu \\rVert_2`) and ``mu [N, latent_dim]``.
        """
        mu, _ = self.encode(x, condition)
        recon = self.decode(mu, condition)
        return (recon - x).pow(2).mean(dim=1), mu.norm(dim=1), mu
