"""The generation interface: sampling parameters, the rollout batch, the engine protocol.

Every consumer of samples (``rlhf sample``, best-of-N, RAFT, and the online policy optimisers)
asks a :class:`GenerationEngine` for a :class:`RolloutBatch`; the Hugging Face ``generate``
engine is one implementation and vLLM can be another without touching the recipes.

Shapes: B rows (= prompts × samples per prompt), P prompt tokens, R response tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
from pydantic import Field, field_validator

from rlhf.config import StrictModel
from rlhf.data.records import Text
from rlhf.rollout.vllm_config import VLLMConfig

# Keys of the per-row metadata a rollout's rows carry to their reward (rlhf.rewards.base's
# Metadata, whose docstring says what each means): rollouts and prompt loading write them
# (rlhf.rewards.base.rollout_metadata, rlhf.rollout.candidates.load_prompts_and_answers) and
# rewards read them, so they live here, below both.
ANSWER = "answer"  # the ground-truth answer of a verifiable task (a data row's `answer`)
FINISHED = "finished"  # bool: the response ended with EOS
RESPONSE_TOKENS = "response_tokens"  # int: response tokens, EOS included
# list[int], given only to rewards that read it (a dense PRM): for each response token t, the
# length of the response text its tokens 0..t decode to, so a reward can put a value on the
# token where a piece of the text ends (rlhf.rollout.tokens.token_text_ends)
RESPONSE_TOKEN_ENDS = "response_token_ends"


def logp_temperature(temperature: float) -> float:
    """The temperature log-probs are taken at when sampling at ``temperature``: itself, or 1
    for greedy decoding (0), whose log-probs are the policy's own."""
    return 1.0 if temperature == 0 else temperature


class WeightSyncError(RuntimeError):
    """An engine's copy of the weights is not the trainer's after a sync (it never samples
    from it: the run stops)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample responses.

    ``temperature`` 0 means greedy decoding (then ``logps`` are taken at temperature 1).
    ``top_k`` 0 and ``top_p`` 1 switch those filters off. ``seed`` makes a call reproducible:
    the same prompts, parameters, model and engine batch size give the same samples.
    ``return_logps`` False skips the teacher-forced pass that computes ``RolloutBatch.logps``
    (then None), for a caller that never reads them: an online recipe taking one optimiser
    step per rollout, whose old log-probs are the update's own, detached. ``compile`` decodes
    with a ``torch.compile``'d single-token step over a fixed-size KV cache
    (:func:`rlhf.rollout.compiled.compiled_generate`): greedy decoding gives the same tokens up to
    float rounding, sampling the same distribution with a faster draw (so a seed gives other
    tokens than uncompiled); faster per step once compiled (seconds to compile, once per batch
    shape).
    """

    max_new_tokens: int = 64  # response tokens at most, EOS included
    temperature: float = 1.0  # logits are divided by this before sampling
    top_p: float = 1.0  # nucleus sampling: smallest set of tokens with this much probability
    top_k: int = 0  # sample among the k most likely tokens only
    num_samples: int = 1  # responses per prompt (K)
    seed: int = 0  # seed of the sampling random stream
    return_logps: bool = True  # compute RolloutBatch.logps (False: None, one forward saved)
    compile: bool = False  # decode with a compiled step over a static KV cache

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        if self.num_samples < 1:
            problems.append(f"num_samples must be at least 1, got {self.num_samples}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def logp_temperature(self) -> float:
        """The temperature the returned log-probs are taken at (1 for greedy decoding)."""
        return logp_temperature(self.temperature)


class EngineChoice(StrictModel):
    """Which generation engine samples (``engine``) and the vLLM engine's settings: a section
    of every config that samples (SamplingConfig, the evaluation's, the pipeline's); the
    factory's :func:`~rlhf.rollout.factory.engine_for` and
    :func:`~rlhf.rollout.factory.load_engine_for` build the engine it names."""

    engine: str = Field(
        "hf",
        description="The generation engine, a key of rlhf.rollout.factory.ENGINES (hf: "
        "transformers' generate; vllm: vLLM, set up by sampling.vllm and docs/vllm.md).",
    )
    vllm: VLLMConfig = Field(
        default_factory=VLLMConfig, description="The vLLM engine's settings (engine=vllm)."
    )

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, kind: str) -> str:
        from rlhf.rollout.factory import ENGINES  # the factory imports this module

        if kind not in ENGINES:
            raise ValueError(f"unknown engine {kind!r}: expected one of {sorted(ENGINES)}")
        return kind


class SamplingConfig(EngineChoice):
    """Sampling settings in a recipe's config; :meth:`params` turns them into SamplingParams."""

    max_new_tokens: int = Field(64, ge=1, description="Response tokens at most (EOS included).")
    temperature: float = Field(
        1.0, ge=0, description="Divide logits by this before sampling; 0 decodes greedily."
    )
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (1: off).")
    top_k: int = Field(0, ge=0, description="Sample among the k most likely tokens (0: off).")
    batch_size: int = Field(
        64, ge=1, description="Sequences generated together (prompts × samples, chunked)."
    )
    compile: bool = Field(
        False,
        description=(
            "Decode with a torch.compile'd one-token step over a fixed-size (static) KV cache: "
            "the same distribution (greedy: the same tokens) with a faster draw, less per-step "
            "overhead on small models, seconds of compiling on the first call of each batch "
            "shape. A seed gives other samples than with compile off."
        ),
    )

    @property
    def logp_temperature(self) -> float:
        """The temperature log-probs are taken at (1 for greedy decoding), as in every
        :meth:`params`."""
        return logp_temperature(self.temperature)

    def params(self, num_samples: int, seed: int, *, return_logps: bool = True) -> SamplingParams:
        values = self.model_dump(exclude={"batch_size", "engine", "vllm"})
        return SamplingParams(
            **values, num_samples=num_samples, seed=seed, return_logps=return_logps
        )


@dataclass
class RolloutBatch:
    """Sampled responses with everything later stages need, one row per sample.

    Rows are prompt-major: with K samples per prompt, rows ``i*K .. i*K+K-1`` answer prompt
    ``i`` (``prompt_index`` says so explicitly).
    """

    prompt_ids: torch.Tensor  # [B, P] long: prompt tokens, left-padded with the pad id
    prompt_mask: torch.Tensor  # [B, P] long: 1 on real prompt tokens, 0 on the left padding
    response_ids: torch.Tensor  # [B, R] long: sampled tokens through the first EOS, then pad
    response_mask: torch.Tensor  # [B, R] long: 1 on real response tokens (EOS included)
    logps: torch.Tensor | None  # [B, R] float32: log π_T(token | prefix) at the temperature, 0
    # on pad (None when sampled with return_logps=False)
    ended_with_eos: torch.Tensor  # [B] bool: stopped at EOS (False: cut at max_new_tokens)
    prompt_index: torch.Tensor  # [B] long: which of the input prompts the row answers
    response_texts: list[str]  # [B] decoded responses, special tokens (EOS) removed
    truncated_prompts: int = 0  # input prompts whose start was cut to fit the model's positions
    # [B, R] float32: the log-probs the engine sampled with, when its weights are a copy of
    # the trainer's (vLLM; None for the HF engine, which samples from the trainer's model):
    # their gap to ``logps`` is the train-inference mismatch (rlhf.losses.importance)
    engine_logps: torch.Tensor | None = None
    engine_stats: dict[str, float] = field(default_factory=dict)  # the engine's timings of
    # the call (sync_seconds, generate_seconds, tokens_per_second, probe_logp_gap)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def response_lengths(self) -> torch.Tensor:
        """[B] real response tokens per row (EOS included)."""
        return self.response_mask.sum(-1)

    def response_stats(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}response_tokens`` (mean response length) and ``{prefix}eos_rate`` (share
        of responses that stopped at EOS rather than at max_new_tokens)."""
        return {
            f"{prefix}response_tokens": float(self.response_lengths.float().mean()),
            f"{prefix}eos_rate": float(self.ended_with_eos.float().mean()),
        }

    @property
    def sequence_logps(self) -> torch.Tensor:
        """[B] log π(response | prompt): the sum of ``logps`` over the response."""
        if self.logps is None:
            raise ValueError("this batch was sampled without log-probs (return_logps=False)")
        return self.logps.sum(-1)

    @property
    def input_ids(self) -> torch.Tensor:
        """[B, P + R] prompt and response side by side (left and right padding kept)."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """[B, P + R] 1 on every real token of :attr:`input_ids`."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    def select_prompts(self, prompts: Sequence[int]) -> RolloutBatch:
        """The rows answering ``prompts`` (indices into this batch's prompts), in that order,
        their ``prompt_index`` renumbered 0 … len(prompts) − 1."""
        order = {prompt: new for new, prompt in enumerate(prompts)}
        index = self.prompt_index.tolist()
        rows_of: dict[int, list[int]] = {}
        for row, prompt in enumerate(index):
            rows_of.setdefault(prompt, []).append(row)
        rows = [row for prompt in prompts for row in rows_of.get(prompt, [])]
        selected = self.select_rows(rows)
        selected.prompt_index = torch.as_tensor(
            [order[index[row]] for row in rows], dtype=torch.long
        )
        return selected

    def select_rows(self, rows: Sequence[int]) -> RolloutBatch:
        """The rows ``rows`` in that order (a row may repeat), ``prompt_index`` kept."""
        picked = torch.as_tensor(list(rows), dtype=torch.long)
        return RolloutBatch(
            prompt_ids=self.prompt_ids[picked],
            prompt_mask=self.prompt_mask[picked],
            response_ids=self.response_ids[picked],
            response_mask=self.response_mask[picked],
            logps=None if self.logps is None else self.logps[picked],
            ended_with_eos=self.ended_with_eos[picked],
            prompt_index=self.prompt_index[picked],
            response_texts=[self.response_texts[row] for row in rows],
            truncated_prompts=self.truncated_prompts,
            engine_logps=None if self.engine_logps is None else self.engine_logps[picked],
            engine_stats=dict(self.engine_stats),
        )

    @staticmethod
    def concatenate(batches: Sequence[RolloutBatch], pad_id: int) -> RolloutBatch:
        """One batch of the rows of ``batches`` in order: prompts left-padded and responses
        right-padded with ``pad_id`` to the widest, ``prompt_index`` continuing across them
        (batch b's prompts come after those of batches 0 … b − 1)."""
        if not batches:
            raise ValueError("concatenate needs at least one batch")
        with_logps = [batch.logps is not None for batch in batches]
        if any(with_logps) and not all(with_logps):
            raise ValueError("cannot concatenate batches sampled with and without log-probs")
        with_engine = [batch.engine_logps is not None for batch in batches]
        if any(with_engine) and not all(with_engine):
            raise ValueError("cannot concatenate batches of engines with and without log-probs")
        stats: dict[str, float] = {}
        for batch in batches:  # seconds add up; a rate or gap keeps its last value
            for key, value in batch.engine_stats.items():
                stats[key] = stats.get(key, 0.0) + value if key.endswith("seconds") else value
        prompt_width = max(batch.prompt_ids.shape[1] for batch in batches)
        response_width = max(batch.response_ids.shape[1] for batch in batches)

        def left(tensor: torch.Tensor, value: int) -> torch.Tensor:  # [B, P] → [B, prompt_width]
            return torch.nn.functional.pad(tensor, (prompt_width - tensor.shape[1], 0), value=value)

        def right(tensor: torch.Tensor, value: float) -> torch.Tensor:  # [B, R] → [B, width]
            return torch.nn.functional.pad(
                tensor, (0, response_width - tensor.shape[1]), value=value
            )

        offsets = [0]
        for batch in batches[:-1]:
            offsets.append(
                offsets[-1] + int(batch.prompt_index.max()) + 1 if len(batch) else offsets[-1]
            )
        return RolloutBatch(
            prompt_ids=torch.cat([left(b.prompt_ids, pad_id) for b in batches]),
            prompt_mask=torch.cat([left(b.prompt_mask, 0) for b in batches]),
            response_ids=torch.cat([right(b.response_ids, pad_id) for b in batches]),
            response_mask=torch.cat([right(b.response_mask, 0) for b in batches]),
            logps=torch.cat([right(b.logps, 0.0) for b in batches])  # type: ignore[arg-type]
            if all(with_logps)
            else None,
            ended_with_eos=torch.cat([b.ended_with_eos for b in batches]),
            prompt_index=torch.cat(
                [b.prompt_index + offset for b, offset in zip(batches, offsets, strict=True)]
            ),
            response_texts=[text for b in batches for text in b.response_texts],
            truncated_prompts=sum(b.truncated_prompts for b in batches),
            engine_logps=torch.cat([right(b.engine_logps, 0.0) for b in batches])  # type: ignore[arg-type]
            if all(with_engine)
            else None,
            engine_stats=stats,
        )

    def to_state(self) -> dict[str, Any]:
        """The batch as JSON-able values (a checkpoint keeps rollouts sampled but not yet
        trained on); :meth:`from_state` gives it back bit for bit."""
        state: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):  # float32 → Python float → float32 is exact
                dtype = str(value.dtype).removeprefix("torch.")
                value = {
                    "dtype": dtype,
                    "shape": list(value.shape),
                    "values": value.flatten().tolist(),
                }
            state[f.name] = value
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RolloutBatch:
        """The batch :meth:`to_state` wrote."""
        tensors = {f.name for f in fields(cls) if "Tensor" in str(f.type)}
        values = dict(state)
        for name in tensors:
            if values.get(name) is not None:
                saved = values[name]
                dtype = getattr(torch, saved["dtype"])
                values[name] = torch.tensor(saved["values"], dtype=dtype).reshape(saved["shape"])
        return cls(**values)

    def to(self, device: torch.device | str) -> RolloutBatch:
        moved = {
            f.name: value.to(device) if isinstance(value, torch.Tensor) else value
            for f in fields(self)
            for value in (getattr(self, f.name),)
        }
        return RolloutBatch(**moved)


class GenerationEngine(Protocol):
    """Anything that samples responses to prompts: HF ``generate``, vLLM.

    An engine whose weights are a copy of the trainer's (vLLM) also has
    ``samples_separately = True``, returns ``RolloutBatch.engine_logps``, and follows the
    trainer's optimiser steps by itself (a weight sync before its next rollout).
    """

    def generate(self, prompts: Sequence[Text], params: SamplingParams) -> RolloutBatch:
        """``params.num_samples`` responses to each prompt, as one prompt-major batch."""
        ...
