"""Value models (critics): a decoder and a scalar head read at every response position.

PPO's critic estimates ``V(s_t)``, the expected return from the state "prompt + the first t
response tokens", for every response token t. We store it as a reward model is stored
(:mod:`rlhf.models.reward`): ``AutoModelForSequenceClassification`` with one label, whose
``score`` head a decoder applies to every position. Transformers' forward then reads only
the last real token; the critic runs the decoder stack itself and applies the head at all
response positions instead. The choice buys:

* **Initialisation from a reward model** (``rlhf rm`` output): the backbone *and* head are
  kept, as InstructGPT initialised its value function from the RM (Ouyang et al., 2022, §3.5)
  — a critic that already ranks responses, whose first value losses are small.
* **Initialisation from the policy** (or any causal LM): the LM head is dropped and a fresh
  scalar head drawn N(0, 1/√(d + 1)), bias 0 (:func:`rlhf.models.reward.init_reward_head`),
  so the first values are about unit scale and carry no preference.
* A critic saved this way is a valid reward-model folder, readable by plain transformers.

Position convention (the one :func:`rlhf.models.teacher_forcing.response_logprobs` uses): the hidden
state at ``first + t`` has read the prompt and response tokens ``< t``; its logits predict
token t, and the value head there gives ``V(s_t)``, the value of the state *before* token t.
So ``values[:, t]`` pairs with ``logps[:, t]`` and ``rewards[:, t]`` in GAE
(:func:`rlhf.losses.advantages.gae`).

Only decoders qualify: an encoder (BERT) sees the whole sequence at every position, so its
"value of a prefix" would read the future.

Shapes: B rows, P prompt tokens (left-padded), R response tokens (right-padded).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rlhf.models.forward import decoder_hidden_states, unwrap
from rlhf.models.load import LoraSpec, ModelLoadError, load_tokenizer
from rlhf.models.reward import init_reward_model, is_reward_model
from rlhf.models.teacher_forcing import SharedPromptForced, TeacherForced, per_response_token

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger("rlhf.models")


def value_head(model: torch.nn.Module) -> torch.nn.Module:
    """The scalar head of a decoder critic: transformers' ``score`` layer (with LoRA, peft's
    wrapper around its trained copy, which is what must be called).

    Raises ValueError for a model without one (not a decoder sequence classifier).
    """
    base = unwrap(model)
    head = getattr(base, "score", None)
    if not isinstance(head, torch.nn.Module) or not hasattr(base, "base_model_prefix"):
        raise ValueError(
            f"{type(base).__name__} cannot be a value model: expected a decoder sequence "
            "classifier with a `score` head (e.g. LlamaForSequenceClassification)"
        )
    return head


def _check_same_vocabulary(
    path: str | os.PathLike[str], tokenizer: PreTrainedTokenizerBase
) -> None:
    """A critic reads the policy's token ids: its own tokenizer, if it has one, must agree."""
    folder = Path(path)
    if not folder.is_dir() or not any(
        (folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")
    ):
        return
    own = load_tokenizer(folder)
    if own.get_vocab() != tokenizer.get_vocab():
        raise ModelLoadError(
            str(path),
            f"its tokenizer ({len(own)} tokens) is not the policy's ({len(tokenizer)} tokens); "
            "a value model must share the policy's vocabulary (value.path)",
        )


def load_value_model(
    name_or_path: str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = "sdpa",
    lora: LoraSpec | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """A critic to train, from a reward-model folder (head kept) or a causal LM (new head).

    ``tokenizer`` is the *policy's* (pad ≠ EOS, from
    :func:`~rlhf.models.load.load_tokenizer`): the critic reads the sequences the policy
    samples, so a folder whose own tokenizer differs is refused. A fresh head is drawn
    N(0, 1/√(d + 1)) from ``seed``. Dropout is off; ``lora`` trains adapters plus the head.
    """
    _check_same_vocabulary(name_or_path, tokenizer)
    model = init_reward_model(
        name_or_path,
        tokenizer,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        lora=lora,
        seed=seed,
    )
    value_head(model)  # refuse encoders and heads we cannot read per position
    source = "reward model" if is_reward_model(unwrap(model).config) else "fresh head"
    logger.info("value model from %s (%s)", name_or_path, source)
    return model


def response_values(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    batch_size: int = 16,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Values ``V(s_t)`` [B, R] (float32) of the states before each response token.

    prompt_ids / prompt_mask [B, P] left-padded, response_ids / response_mask [B, R]
    right-padded, as in a :class:`~rlhf.rollout.types.RolloutBatch`. One forward of the
    decoder stack per ``batch_size`` rows (the layout of
    :func:`~rlhf.models.teacher_forcing.response_logprobs`), the head applied at the response positions
    only; 0 at padding. Differentiable: under ``torch.no_grad()`` at rollout time, with
    gradients in the update. ``groups`` [B] (rows answering one prompt) reads each prompt
    once (:class:`~rlhf.models.teacher_forcing.SharedPromptForced`): the same values up to rounding.
    """
    head = value_head(model)

    def packed_values(packed: SharedPromptForced) -> torch.Tensor:
        return head(packed.hidden_states(model))[..., 0].float() * packed.response_mask

    def rowwise_values(inputs: TeacherForced) -> torch.Tensor:
        hidden = decoder_hidden_states(
            model,
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
        )  # [b, T, H]
        states = hidden[:, inputs.first : inputs.first + inputs.width]  # [b, width, H]
        return head(states)[..., 0].float() * inputs.response_mask  # [b, width]

    return per_response_token(
        model, prompt_ids, prompt_mask, response_ids, response_mask, groups, batch_size,
        packed_values, rowwise_values,
    )  # fmt: skip
