"""Pairwise preference models: P(a ≻ b | x) from a sequence classifier that reads both responses.

A Bradley–Terry reward model scores each response alone, so its preferences are transitive
(:mod:`rlhf.losses.reward`). A *pairwise* (general) preference model reads the prompt and both
responses in one sequence and gives one logit g(x, a, b) (Jiang et al., 2023, PairRM; Ye et
al., 2024; the preference oracle of Nash learning from human feedback, Munos et al., 2023, and
of SPPO, Wu et al., 2024). Both orders are read and

    P(a ≻ b | x) = σ(g(x, a, b) − g(x, b, a))

(:func:`rlhf.losses.preference_model.preference_probability`), antisymmetric by construction:
P(a ≻ b | x) = 1 − P(b ≻ a | x) exactly, and P(a ≻ a | x) = ½.

**The model** is a one-label ``AutoModelForSequenceClassification``, exactly like a reward model
(:func:`rlhf.models.reward.init_reward_model`: a new head N(0, 1/√(d + 1)), pad ≠ EOS, dropout
off; a decoder reads g at the last real token, the EOS), so plain transformers loads it::

    model = AutoModelForSequenceClassification.from_pretrained("runs/pm/model")
    g = model(input_ids, attention_mask=attention_mask).logits[:, 0]   # [N] g(x, a, b)

**The sequence** of ``(x, a, b)`` is the prompt, then ``### Response A\\n{a}\\n### Response
B\\n{b}`` and EOS (:mod:`rlhf.data.pairwise`, which documents it with an example).

**The folder** is a plain Hugging Face folder whose ``config.json`` holds
:data:`PREFERENCE_MODEL_KEY`: ``{"format": "pair-text-v1", "first_header": ..., "second_header":
..., "probability": ...}``, which marks it as a pairwise preference model (a reward model loader
refuses it) and records the sequence format it was trained on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from rlhf.data.pairs import pad_right
from rlhf.data.pairwise import FIRST_HEADER, SECOND_HEADER, tokenize_pair
from rlhf.data.records import Text
from rlhf.losses.preference_model import preference_probability
from rlhf.models.forward import evaluating, position_limit, unwrap
from rlhf.models.load import LoraSpec, ModelLoadError
from rlhf.models.reward import (
    NORMALIZATION_KEY,
    init_reward_model,
    load_scalar_classifier,
    reward_logits,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PREFERENCE_MODEL_KEY = "rlhf_pairwise_preference"  # in config.json: what marks the folder
PAIR_FORMAT = "pair-text-v1"  # the sequence layout of rlhf.data.pairwise


def preference_marker() -> dict[str, str]:
    """The :data:`PREFERENCE_MODEL_KEY` entry of a preference model's config."""
    return {
        "format": PAIR_FORMAT,
        "first_header": FIRST_HEADER,
        "second_header": SECOND_HEADER,
        "probability": "sigmoid(g(x, a, b) - g(x, b, a))",
    }


def is_preference_model(config: Any) -> bool:
    """Whether a model config marks a pairwise preference model (:data:`PREFERENCE_MODEL_KEY`)."""
    return getattr(config, PREFERENCE_MODEL_KEY, None) is not None


def mark_preference_model(model: torch.nn.Module) -> None:
    """Put :func:`preference_marker` in the model's config (``save_pretrained`` writes it to
    config.json) and drop a reward normalisation it was initialised with (g is no reward)."""
    config = unwrap(model).config
    setattr(config, PREFERENCE_MODEL_KEY, preference_marker())
    if hasattr(config, NORMALIZATION_KEY):
        delattr(config, NORMALIZATION_KEY)


def init_preference_model(
    name_or_path: str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = "sdpa",
    gguf_file: str | None = None,
    lora: LoraSpec | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """A pairwise preference model to train: :func:`rlhf.models.reward.init_reward_model` (a
    one-label sequence classifier from a causal LM, an encoder, a reward model or a preference
    model; new heads N(0, 1/√(d + 1)) from ``seed``), marked by :func:`mark_preference_model`."""
    model = init_reward_model(
        name_or_path,
        tokenizer,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        gguf_file=gguf_file,
        lora=lora,
        seed=seed,
    )
    mark_preference_model(model)
    return model


class PreferenceModel:
    """A pairwise preference model ready to compare responses.

    ``model`` is the one-label sequence classifier, ``tokenizer`` its tokenizer (right
    padding, pad ≠ EOS).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model, self.tokenizer = model, tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int | None:
        """The longest sequence the backbone takes (its position table), if it says."""
        return position_limit(self.model)

    def _check(
        self,
        prompts: Sequence[Text],
        first: Sequence[Text],
        second: Sequence[Text],
        batch_size: int,
    ) -> None:
        if not len(prompts) == len(first) == len(second):
            raise ValueError(
                f"{len(prompts)} prompts, {len(first)} first and {len(second)} second responses: "
                "give one of each per comparison"
            )
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")

    @torch.no_grad()
    def pair_logits(
        self,
        prompts: Sequence[Text],
        first: Sequence[Text],
        second: Sequence[Text],
        *,
        batch_size: int = 16,
        max_length: int | None = None,
    ) -> torch.Tensor:
        """g(prompts[i], first[i], second[i]): [N] float32 on the CPU, one order only.

        Sequences longer than ``max_length`` tokens (default: the backbone's position limit)
        lose the prompt's start first, then the second response's end.
        """
        self._check(prompts, first, second, batch_size)
        limit = max_length or self.max_length
        sequences = [
            tokenize_pair(self.tokenizer, prompt, a, b, limit)[0]
            for prompt, a, b in zip(prompts, first, second, strict=True)
        ]
        return self._logits(sequences, batch_size)

    @torch.no_grad()
    def preference_probability(
        self,
        prompts: Sequence[Text],
        first: Sequence[Text],
        second: Sequence[Text],
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """P(first[i] ≻ second[i] | prompts[i]): [N] float32 on the CPU, in [0, 1].

        Both orders are scored and P = σ(g(x, a, b) − g(x, b, a)). Antisymmetric exactly, also
        across calls: the distinct sequences of a call are scored in one canonical order
        (longest first, then by their ids), so swapping ``first`` and ``second`` scores the
        same batches, gives the same logits and returns exactly ``1 − P``; a response compared
        with itself gets ½. ``batch_size`` counts sequences (two per comparison);
        ``on_batch(sequences)`` after each batch (progress).
        """
        self._check(prompts, first, second, batch_size)
        limit = max_length or self.max_length
        forward, reverse = [], []
        for prompt, a, b in zip(prompts, first, second, strict=True):
            forward.append(tokenize_pair(self.tokenizer, prompt, a, b, limit)[0])
            reverse.append(tokenize_pair(self.tokenizer, prompt, b, a, limit)[0])
        logits = self._logits(forward + reverse, batch_size, on_batch)  # [2N]
        return preference_probability(logits[: len(forward)], logits[len(forward) :])

    def _logits(
        self,
        sequences: Sequence[Sequence[int]],
        batch_size: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """g [N] (float32, CPU) of token ``sequences``: each distinct one scored once, in the
        canonical order (longest first, then by ids), so the result for a sequence depends
        only on the set of sequences, not on where they stand."""
        keys = [tuple(sequence) for sequence in sequences]
        distinct = sorted(set(keys), key=lambda ids: (-len(ids), ids))
        scores: dict[tuple[int, ...], float] = {}
        with evaluating(self.model):
            for start in range(0, len(distinct), batch_size):
                chunk = distinct[start : start + batch_size]
                input_ids, attention_mask = pad_right(chunk, self.tokenizer.pad_token_id)
                logits = reward_logits(
                    self.model, input_ids.to(self.device), attention_mask.to(self.device)
                ).cpu()  # [n]
                scores.update(zip(chunk, logits.tolist(), strict=True))
                if on_batch is not None:
                    on_batch(len(chunk))
        return torch.tensor([scores[key] for key in keys], dtype=torch.float32)

    def __call__(
        self, prompts: Sequence[Text], first: Sequence[Text], second: Sequence[Text]
    ) -> torch.Tensor:
        """:meth:`preference_probability` with its defaults."""
        return self.preference_probability(prompts, first, second)


def load_preference_model(
    path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
) -> PreferenceModel:
    """Load a pairwise preference model saved by ``rlhf pm``.

    A :class:`~rlhf.models.load.ModelLoadError` when the folder is not a one-label sequence
    classifier, is one without :data:`PREFERENCE_MODEL_KEY` in its config (a reward model: use
    it through Bradley–Terry instead) or was trained on another sequence format.
    """
    model, tokenizer = load_scalar_classifier(
        path, dtype=dtype, device=device, kind="pairwise preference model", saved_by="rlhf pm"
    )
    marker = getattr(model.config, PREFERENCE_MODEL_KEY, None)
    if marker is None:
        raise ModelLoadError(
            str(path),
            f"not a pairwise preference model: config.json has no {PREFERENCE_MODEL_KEY} (a "
            "reward model from `rlhf rm` scores one response; use it as a preference through "
            "Bradley–Terry: preference: {reward: {model: PATH}})",
        )
    expected = preference_marker()
    if not isinstance(marker, dict) or any(
        marker.get(key) != expected[key] for key in ("format", "first_header", "second_header")
    ):
        raise ModelLoadError(
            str(path),
            f"its {PREFERENCE_MODEL_KEY} {marker!r} names a sequence format this version does "
            f"not read (expected {expected!r})",
        )
    return PreferenceModel(model, tokenizer)
