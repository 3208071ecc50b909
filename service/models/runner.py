"""The torch runner: every line of torch the service runs at scoring time is in this module.

`HFRunner` scores token-id sequences with a Hugging Face model. For decoder RMs it runs the
backbone itself, reads the hidden state at each row's last real token (found from the lengths,
never from pad ids, since pad may equal eos) and applies the scalar head, so the reward of a
sequence does not depend on what else is in its batch. Right padding keeps that exact: with a
causal mask the real tokens never attend to the pads after them.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardHead:
    """One scalar output: `reward = hidden_last @ weight + bias`, computed in float32.
    For a multi-label head this is the selected column (`head_index`)."""

    weight: torch.Tensor  # [hidden], float32, on the runner's device
    bias: torch.Tensor  # [] float32 (0 when the checkpoint has no bias)


@dataclass(frozen=True)
class Normalization:
    """Stored reward statistics applied at inference as `(r - mean) / std` (OpenRLHF's
    `normalize_reward`)."""

    mean: float
    std: float


class HFRunner:
    """Scores sequences with a loaded Hugging Face model (implements `Runner`).

    Two modes, chosen by the loader:
    - `head` given: `model` is a backbone returning `last_hidden_state` (a decoder such as
      `LlamaModel`); the runner gathers the last real token and applies `head` itself. Used for
      every sequence-classification RM with a linear `score` head and for all value-head RMs.
    - `head` None: `model` is a full `*ForSequenceClassification` model without a `score`
      linear (e.g. encoder RMs that pool on the first token); its own `logits[:, head_index]`
      are used. Rows are right-padded with `pad_token_id` and masked, which is what such
      models are trained with.

    Called from one model thread only; not thread-safe.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: torch.device,
        head: RewardHead | None,
        head_index: int = 0,
        normalization: Normalization | None = None,
        pad_token_id: int = 0,
    ) -> None:
        self._model: nn.Module | None = model
        self._device = device
        self._head = head
        self._head_index = head_index
        self._normalization = normalization
        self._pad_token_id = pad_token_id

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def model(self) -> nn.Module:
        """The module the runner calls (backbone or full model); for tests and diagnostics."""
        if self._model is None:
            raise RuntimeError("this runner was closed")
        return self._model

    def forward(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Raw reward per sequence, in input order (after the stored normalisation, if any)."""
        if not sequences:
            return []
        model = self.model
        lengths = [len(seq) for seq in sequences]
        if min(lengths) == 0:
            raise ValueError("cannot score an empty token sequence")
        width = max(lengths)
        pad = self._pad_token_id
        # Build the padded batch as Python lists and convert once: one tensor construction
        # is much cheaper than a copy per row for the batch sizes the batcher sends.
        rows = [list(seq) + [pad] * (width - n) for seq, n in zip(sequences, lengths, strict=True)]
        masks = [[1] * n + [0] * (width - n) for n in lengths]
        input_ids = torch.tensor(rows, dtype=torch.long, device=self._device)
        attention_mask = torch.tensor(masks, dtype=torch.long, device=self._device)

        with torch.inference_mode():
            if self._head is None:
                logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
                rewards = logits[:, self._head_index].float()
            else:
                hidden = model(
                    input_ids=input_ids, attention_mask=attention_mask, use_cache=False
                ).last_hidden_state
                last = torch.tensor([n - 1 for n in lengths], device=self._device)
                rows_idx = torch.arange(len(lengths), device=self._device)
                # Gather first, then the head: [B, H] instead of a head over every position.
                last_hidden = hidden[rows_idx, last].float()
                rewards = last_hidden @ self._head.weight + self._head.bias
            if self._normalization is not None:
                rewards = (rewards - self._normalization.mean) / self._normalization.std
            return rewards.to(torch.float32).cpu().tolist()

    def warmup(self) -> None:
        """Run one tiny batch (two lengths, so the padded path runs too) to load kernels and
        allocate workspaces before the first real request."""
        token = self._pad_token_id
        self.forward([[token] * 8, [token] * 3])

    def close(self) -> None:
        """Drop the weights; on CUDA also return the cached blocks to the driver."""
        self._model = None
        self._head = None
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        logger.info("runner on %s closed", self._device)
