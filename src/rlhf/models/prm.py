"""Process reward models: a token classifier read at the end of every step.

**The model** is a one-label ``AutoModelForTokenClassification``: the backbone (a causal LM's
decoder, or an encoder such as BERT / MiniLM) with a scalar head on every position, built like
a reward model's (:func:`rlhf.models.reward.init_scalar_head_model`: a new head N(0, 1/√(d +
1)), pad ≠ EOS, dropout off; LoRA through peft's ``TOKEN_CLS`` task). Step k's logit ℓ_k is the
head's output at the last token of the separator after step k (:mod:`rlhf.data.step_tokens`),
and P(step k correct) = σ(ℓ_k). A decoder has then read the prompt and steps 1 … k only; an
encoder reads the whole solution in both directions, so its step scores may use later steps.

**The folder** is a plain Hugging Face folder whose ``config.json`` holds :data:`PRM_KEY`:
``{"format": "steps-v1", "separator": "\\n", "probability": ...}``, the separator it was
trained with. Plain transformers loads it::

    from transformers import AutoModelForTokenClassification, AutoTokenizer
    model = AutoModelForTokenClassification.from_pretrained("runs/prm/model")
    tokenizer = AutoTokenizer.from_pretrained("runs/prm/model")
    sep = model.config.rlhf_process_reward["separator"]
    ids = tokenizer(prompt)["input_ids"] + tokenizer(sep, add_special_tokens=False)["input_ids"]
    ends = []
    for step in steps:  # each step and separator tokenised on their own, as in training
        ids += tokenizer(step, add_special_tokens=False)["input_ids"]
        ids += tokenizer(sep, add_special_tokens=False)["input_ids"]
        ends.append(len(ids) - 1)
    p_correct = model(torch.tensor([ids])).logits[0, ends, 0].sigmoid()   # [n] one per step

(:func:`rlhf.data.step_tokens.tokenize_solution` does exactly this, with the tokenizer's BOS
convention and chat templates for message-list prompts.)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from rlhf.models.forward import unwrap
from rlhf.models.load import LoraSpec
from rlhf.models.reward import init_scalar_head_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PRM_KEY = "rlhf_process_reward"  # in config.json: what marks the folder
STEP_FORMAT = "steps-v1"  # the sequence layout of rlhf.data.step_tokens


def is_process_reward_model(config: Any) -> bool:
    """Whether a model config marks a process reward model (:data:`PRM_KEY`)."""
    return getattr(config, PRM_KEY, None) is not None


def mark_process_reward_model(model: torch.nn.Module, separator: str) -> None:
    """Put the :data:`PRM_KEY` entry in the model's config (``save_pretrained`` writes it)."""
    setattr(
        unwrap(model).config,
        PRM_KEY,
        {
            "format": STEP_FORMAT,
            "separator": separator,
            "probability": "sigmoid(logit at the last token of each step's separator)",
        },
    )


def init_process_reward_model(
    name_or_path: str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase,
    separator: str,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = "sdpa",
    gguf_file: str | None = None,
    lora: LoraSpec | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """A process reward model to train from a causal LM, an encoder or a PRM (whose head is
    kept), marked with its step ``separator``."""
    from transformers import AutoModelForTokenClassification

    model = init_scalar_head_model(
        name_or_path,
        tokenizer,
        auto_class=AutoModelForTokenClassification,
        peft_task="TOKEN_CLS",
        has_trained_head=is_process_reward_model,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        gguf_file=gguf_file,
        lora=lora,
        seed=seed,
    )
    previous = getattr(unwrap(model).config, PRM_KEY, None)
    if previous is not None and previous.get("separator") != separator:
        raise ValueError(
            f"{name_or_path} is a process reward model trained with the step separator "
            f"{previous.get('separator')!r}; data.step_separator is {separator!r}"
        )
    mark_process_reward_model(model, separator)
    return model


def step_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: torch.Tensor,
    ends: torch.Tensor,
) -> torch.Tensor:
    """ℓ_k [S] (float32) of the steps at ``rows`` [S] / ``ends`` [S] of right-padded
    sequences ``input_ids`` [B, T]: one forward pass of the token classifier."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, 1]
    return logits[rows, ends, 0].float()
