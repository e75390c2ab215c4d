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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from rlhf.data.records import StepRecord, Text
from rlhf.models.forward import evaluating, unwrap
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


class ProcessRewardModel:
    """A trained process reward model ready to score solutions' steps: batched, no gradients,
    in evaluation mode. ``separator`` is the one it was trained with (its config's)."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        marker = getattr(unwrap(model).config, PRM_KEY, None)
        if marker is None:
            raise ValueError(
                "not a process reward model: its config has no "
                f"{PRM_KEY} entry (train one with `rlhf prm`)"
            )
        self.model, self.tokenizer, self.separator = model, tokenizer, marker["separator"]

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, device: str = "cpu", dtype: str = "float32"
    ) -> ProcessRewardModel:
        """Load ``rlhf prm``'s exported folder (``<out>/model``)."""
        from transformers import AutoModelForTokenClassification

        from rlhf.models.load import load_model, load_tokenizer

        tokenizer = load_tokenizer(path)
        model = load_model(
            path,
            dtype=dtype,
            device=device,
            tokenizer=tokenizer,
            auto_class=AutoModelForTokenClassification,
        )
        return cls(model, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def step_probabilities(
        self,
        prompts: Sequence[Text],
        solutions: Sequence[Sequence[str]],
        *,
        batch_size: int = 32,
        max_length: int | None = None,
    ) -> list[torch.Tensor]:
        """P(step correct) [n_i] of every step of each solution (its steps, one string each;
        steps beyond ``max_length`` are not scored, so a tensor may be shorter than its
        solution and is empty when not even the first step fits)."""
        from rlhf.data.step_tokens import collate_steps, tokenize_solution

        if len(prompts) != len(solutions):
            raise ValueError(f"{len(prompts)} prompts for {len(solutions)} solutions")
        out: list[torch.Tensor] = []
        with evaluating(self.model):
            for start in range(0, len(prompts), batch_size):
                examples, kept = [], []
                for prompt, steps in zip(
                    prompts[start : start + batch_size],
                    solutions[start : start + batch_size],
                    strict=True,
                ):
                    solution = StepRecord(prompt, tuple(steps), (None,) * len(steps))
                    tokenized = tokenize_solution(
                        self.tokenizer, solution, self.separator, max_length
                    )
                    kept.append(tokenized is not None)
                    if tokenized is not None:
                        examples.append(tokenized[0])
                scores = iter([])
                if examples:
                    batch = collate_steps(examples, self.tokenizer.pad_token_id).to(self.device)
                    logits = step_logits(
                        self.model, batch.input_ids, batch.attention_mask,
                        batch.step_rows, batch.step_ends,
                    ).sigmoid().cpu()  # fmt: skip
                    scores = iter(logits.split([len(e.ends) for e in examples]))
                out += [next(scores) if ok else torch.empty(0) for ok in kept]
        return out
