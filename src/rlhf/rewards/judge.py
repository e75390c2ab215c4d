"""Judges: a language model asked to grade each response (LLM-as-a-judge, Zheng et al. 2023).

* :class:`HTTPJudge` asks any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM's
  ``vllm serve``, llama.cpp's server, Ollama, TGI, ...) for a score on a fixed scale and parses
  the number from the reply. Requests run ``concurrency`` at a time; connection errors,
  timeouts, HTTP 408/429/5xx and replies without a score are retried with exponential backoff
  (honouring ``Retry-After``); other HTTP errors (a bad key, an unknown model) stop at once.
  Every error names the endpoint and the row. The API key is read from the environment
  variable the config names, never from the config itself.
* :class:`LocalJudge` runs a causal LM in process, with no generation: one forward pass reads
  the next-token distribution after the judge prompt. ``method="yes_no"`` scores
  P(Yes) / (P(Yes) + P(No)); ``method="score"`` the expected score Σ s·P(s) over the scale's
  numbers (G-Eval's probability-weighted score, Liu et al. 2023), so the reward is smooth
  rather than a coarse integer.

Templates are ``str.format`` strings with the placeholders ``{prompt}``, ``{response}``,
``{answer}`` (``metadata[i]["answer"]`` where given, else empty), ``{min_score}`` and
``{max_score}``; literal braces are doubled. Scores are mapped to [0, 1] unless
``normalize=False``.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import string
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import torch

from rlhf.data.records import Text
from rlhf.rewards.base import Metadata, Reward, RewardOutput, check_lengths
from rlhf.rollout.types import ANSWER

logger = logging.getLogger("rlhf.rewards")

PLACEHOLDERS = frozenset({"prompt", "response", "answer", "min_score", "max_score"})

DEFAULT_SYSTEM = "You are a strict, fair grader of answers."

DEFAULT_SCORE_TEMPLATE = """\
Rate how well the response answers the prompt, on a scale from {min_score} to {max_score} \
({max_score}: correct, helpful and clear; {min_score}: wrong or useless).

[Prompt]
{prompt}

[Response]
{response}

Reply with the score alone, a number from {min_score} to {max_score}."""

DEFAULT_YES_NO_TEMPLATE = """\
Is the response a correct and helpful answer to the prompt?

[Prompt]
{prompt}

[Response]
{response}

Answer Yes or No."""

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 60.0

_NUM = r"(-?\d+(?:\.\d+)?)"
_SCORE_PATTERNS = (
    re.compile(r"(?:score|rating|grade)\**\s*(?:is|of|[:=])?\s*\**\s*" + _NUM, re.IGNORECASE),
    re.compile(_NUM + r"\s*(?:/|out of)\s*\d+", re.IGNORECASE),
)
_ANY_NUMBER = re.compile(_NUM)


class JudgeError(RuntimeError):
    """A judge could not score a response; the message names the endpoint (or model) and row."""


def template_placeholders(template: str) -> set[str]:
    """The ``{names}`` a template uses (ValueError when it is not a valid format string)."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise ValueError(f"judge template is not a valid format string: {error}") from None
    return {name.split(".")[0].split("[")[0] for name in fields}


def check_template(template: str) -> str:
    unknown = template_placeholders(template) - PLACEHOLDERS
    if "" in unknown:
        raise ValueError("judge template has an empty {} placeholder; name it, e.g. {response}")
    if unknown:
        raise ValueError(
            f"judge template uses unknown placeholder(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(PLACEHOLDERS))} (write literal braces as {{{{ }}}})"
        )
    return template


def prompt_text(prompt: Text) -> str:
    """A prompt as plain text for a judge: the string itself, or ``role: content`` lines
    (a lone user message as its content)."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0].role == "user":
        return prompt[0].content
    return "\n".join(f"{message.role}: {message.content}" for message in prompt)


def parse_score(reply: str, min_score: float, max_score: float) -> float | None:
    """The score in a judge's reply: after "score"/"rating", before "/10" or "out of 10", else
    the reply's last number; None when that is missing or outside [min_score, max_score]."""
    for pattern in _SCORE_PATTERNS:
        match = pattern.search(reply)
        if match is not None:
            value = float(match[1])
            break
    else:
        numbers = _ANY_NUMBER.findall(reply)
        if not numbers:
            return None
        value = float(numbers[-1])
    return value if min_score <= value <= max_score else None


def _fill(template: str, prompt: Text, response: str, entry: Any, low: float, high: float) -> str:
    answer = entry.get(ANSWER) if entry is not None else None
    return template.format(
        prompt=prompt_text(prompt),
        response=response,
        answer="" if answer is None else str(answer),
        min_score=f"{low:g}",
        max_score=f"{high:g}",
    )


class _Retry(Exception):
    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.retry_after = retry_after


class HTTPJudge(Reward):
    """Scores from an OpenAI-compatible chat-completions endpoint (see the module docstring).

    ``endpoint``: the API base (``http://localhost:8000/v1``; ``/chat/completions`` is added)
    or the full ``.../chat/completions`` URL. ``model``: the model name sent with each request.
    ``api_key_env``: the environment variable holding the key, sent as a bearer token (None:
    no key, as local servers need). ``on_failure``: the reward given to a response that still
    has no score after the retries (None: raise :class:`JudgeError`); it is not normalised.
    Identical (prompt, response) pairs within a call are asked once.
    """

    def __init__(
        self,
        endpoint: str,
        model: str,
        *,
        template: str = DEFAULT_SCORE_TEMPLATE,
        system: str | None = DEFAULT_SYSTEM,
        api_key_env: str | None = None,
        min_score: float = 1.0,
        max_score: float = 10.0,
        normalize: bool = True,
        temperature: float = 0.0,
        max_tokens: int = 16,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        concurrency: int = 8,
        on_failure: float | None = None,
    ) -> None:
        endpoint = endpoint.rstrip("/")
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"judge endpoint {endpoint!r} must start with http:// or https://")
        if not endpoint.endswith("/chat/completions"):
            endpoint += "/chat/completions"
        if not min_score < max_score:
            raise ValueError(f"judge min_score {min_score} must be below max_score {max_score}")
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError(
                "judge concurrency >= 1, max_retries >= 0, timeout_s > 0, backoff_s >= 0"
            )
        self.url, self.model = endpoint, model
        self.template, self.system = check_template(template), system
        self.api_key_env = api_key_env
        self._api_key = None
        if api_key_env is not None:
            self._api_key = os.environ.get(api_key_env)
            if not self._api_key:
                raise ValueError(
                    f"judge {self.url}: the environment variable {api_key_env} "
                    "(judge.api_key_env) holding its API key is not set"
                )
        self.min_score, self.max_score, self.normalize = min_score, max_score, normalize
        self.temperature, self.max_tokens = temperature, max_tokens
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.concurrency, self.on_failure = concurrency, on_failure
        self._opener = urllib.request.build_opener()
        self.requests_made = 0  # HTTP requests sent, retries included (for logs and tests)
        self._lock = threading.Lock()

    def messages(self, prompt: Text, response: str, entry: Any = None) -> list[dict[str, str]]:
        """The chat messages sent to grade one response."""
        user = _fill(self.template, prompt, response, entry, self.min_score, self.max_score)
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": user}]

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        check_lengths(prompts, responses, metadata)
        requests: dict[str, list[int]] = {}  # distinct request -> rows asking it
        for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            entry = metadata[row] if metadata is not None else None
            key = json.dumps(self.messages(prompt, response, entry))
            requests.setdefault(key, []).append(row)
        scores = torch.zeros(len(responses))
        if not requests:
            return RewardOutput(scores)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            futures = {
                key: pool.submit(self._judge, rows[0], json.loads(key))
                for key, rows in requests.items()
            }
            try:
                for key, future in futures.items():
                    scores[requests[key]] = future.result()
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # the first error ends the call
                raise
        return RewardOutput(scores)

    def _judge(self, row: int, messages: list[dict[str, str]]) -> float:
        problem = ""
        for attempt in range(self.max_retries + 1):
            try:
                reply = self._complete(row, messages)
            except _Retry as retry:
                problem, wait = str(retry), retry.retry_after
            else:
                value = parse_score(reply, self.min_score, self.max_score)
                if value is not None:
                    if not self.normalize:
                        return value
                    return (value - self.min_score) / (self.max_score - self.min_score)
                problem = (
                    f"no score from {self.min_score:g} to {self.max_score:g} in the reply "
                    f"{reply[:200]!r}"
                )
                wait = None
            if attempt < self.max_retries:
                time.sleep(
                    min(wait if wait is not None else self.backoff_s * 2**attempt, MAX_BACKOFF_S)
                )
        attempts = self.max_retries + 1
        if self.on_failure is not None:
            logger.warning(
                "judge %s: row %d: no score after %d attempts (%s); using %g",
                self.url, row, attempts, problem, self.on_failure,
            )  # fmt: skip
            return float(self.on_failure)
        raise JudgeError(
            f"judge {self.url}: row {row}: no score after {attempts} attempts: {problem}"
        )

    def _complete(self, row: int, messages: list[dict[str, str]]) -> str:
        """One request: the reply's text; :class:`_Retry` for what may pass, JudgeError else."""
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        with self._lock:
            self.requests_made += 1
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace").strip()
            message = f"HTTP {error.code} {error.reason}" + (f": {detail}" if detail else "")
            if error.code in RETRY_STATUSES:
                raise _Retry(message, _retry_after(error.headers.get("Retry-After"))) from None
            raise JudgeError(f"judge {self.url}: row {row}: {message}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, TimeoutError) or isinstance(error, TimeoutError):
                raise _Retry(f"no reply within {self.timeout_s:g}s") from None
            if isinstance(error, urllib.error.URLError | ConnectionRefusedError):
                raise _Retry(f"cannot connect ({reason})") from None
            raise _Retry(f"request failed ({type(error).__name__}: {error})") from None
        try:
            return json.loads(raw)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            text = raw[:200].decode("utf-8", "replace")
            raise JudgeError(
                f"judge {self.url}: row {row}: the reply is not a chat completion: {text!r}"
            ) from None

    def __repr__(self) -> str:
        return f"HTTPJudge({self.url!r}, model={self.model!r})"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


class LocalJudge(Reward):
    """A causal LM in process as the judge (see the module docstring).

    ``model``: a model folder or hub name (loaded with its tokenizer), or a loaded model with
    ``tokenizer`` given. The judge prompt (``template`` filled in, after an optional
    ``system`` message) goes through the tokenizer's chat template with the assistant's
    generation prompt, or is used as plain text with ``chat=False``. A label's probability is
    that of its first token, written with or without a leading space ("Yes", "No" and the
    digits are single tokens in most vocabularies); a first token two labels share is dropped,
    and a label left with none is an error. ``method="score"`` takes whole numbers from
    ``min_score`` to ``max_score``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        method: Literal["yes_no", "score"] = "yes_no",
        template: str | None = None,
        system: str | None = None,
        min_score: int = 1,
        max_score: int = 5,
        normalize: bool = True,
        chat: bool = True,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 16,
    ) -> None:
        if method not in ("yes_no", "score"):
            raise ValueError(f"local judge method must be 'yes_no' or 'score', got {method!r}")
        if isinstance(model, str | os.PathLike):
            from rlhf.models.device import resolve_device
            from rlhf.models.load import load_model, load_tokenizer

            self.name = str(model)
            tokenizer = load_tokenizer(self.name)
            model = load_model(
                self.name, dtype=dtype, device=str(resolve_device(device)), tokenizer=tokenizer
            )
        else:
            if tokenizer is None:
                raise ValueError("a local judge given a loaded model needs its tokenizer")
            self.name = (
                getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            )
        self.model, self.tokenizer = model.eval(), tokenizer
        self.method, self.system, self.chat = method, system, chat
        self.batch_size, self.normalize = batch_size, normalize
        default = DEFAULT_YES_NO_TEMPLATE if method == "yes_no" else DEFAULT_SCORE_TEMPLATE
        self.template = check_template(template or default)
        if method == "yes_no":
            self.min_score, self.max_score = 0, 1
            self.labels: list[tuple[float, list[int]]] = self._label_tokens(
                {1.0: ("Yes", "yes"), 0.0: ("No", "no")}
            )
        else:
            if int(min_score) != min_score or int(max_score) != max_score or min_score >= max_score:
                raise ValueError(
                    f"local judge scores are whole numbers min_score < max_score, got "
                    f"{min_score}..{max_score}"
                )
            self.min_score, self.max_score = int(min_score), int(max_score)
            self.labels = self._label_tokens(
                {float(s): (str(s),) for s in range(self.min_score, self.max_score + 1)}
            )

    def _label_tokens(self, labels: dict[float, tuple[str, ...]]) -> list[tuple[float, list[int]]]:
        """(value, first-token ids) per label; ids that several labels share are left out."""
        firsts: dict[float, set[int]] = {}
        for value, words in labels.items():
            ids = set()
            for word in words:
                for variant in (word, " " + word):
                    encoded = self.tokenizer(variant, add_special_tokens=False)["input_ids"]
                    if encoded:
                        ids.add(int(encoded[0]))
            firsts[value] = ids
        out = []
        for value, ids in firsts.items():
            shared = set().union(*(other for v, other in firsts.items() if v != value))
            own = sorted(ids - shared)
            if not own:
                raise ValueError(
                    f"local judge {self.name}: the label {labels[value][0]!r} has no first token "
                    "of its own in this tokenizer (it starts like another label); choose a "
                    "scale whose numbers are single tokens, e.g. 1 to 9"
                )
            out.append((value, own))
        return out

    def _encode(self, text: str) -> list[int]:
        from rlhf.data.chat import render_chat
        from rlhf.data.tokenize import adds_bos

        if self.chat:
            messages = [{"role": "system", "content": self.system}] if self.system else []
            messages.append({"role": "user", "content": text})
            text = render_chat(self.tokenizer, messages, add_generation_prompt=True)
        elif self.system:
            text = f"{self.system}\n\n{text}"
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if adds_bos(self.tokenizer) and (not ids or ids[0] != self.tokenizer.bos_token_id):
            ids.insert(0, self.tokenizer.bos_token_id)
        return ids

    @torch.inference_mode()
    def label_probabilities(self, queries: Sequence[list[int]]) -> torch.Tensor:
        """P(label) [N, L] after each token sequence, renormalised over the labels."""
        from rlhf.models.forward import logits_at

        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = []
        for start in range(0, len(queries), self.batch_size):
            chunk = queries[start : start + self.batch_size]
            width = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, ids in enumerate(chunk):  # right-padded: positions count from 0 as usual
                input_ids[row, : len(ids)], mask[row, : len(ids)] = torch.tensor(ids), 1
            last = torch.zeros_like(mask, dtype=torch.bool)
            last[torch.arange(len(chunk)), mask.sum(-1) - 1] = True  # [b, T]: the last token
            logits = logits_at(
                self.model, input_ids.to(device), mask.to(device), None, last.to(device)
            )
            logps = torch.log_softmax(logits.float(), dim=-1).cpu()  # [b, V]
            per_label = torch.stack(
                [torch.logsumexp(logps[:, ids], dim=-1) for _, ids in self.labels], dim=-1
            )  # [b, L]: log P(label) summed over its first tokens
            out.append(torch.softmax(per_label, dim=-1))
        return torch.cat(out)

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        check_lengths(prompts, responses, metadata)
        if not responses:
            return RewardOutput(torch.zeros(0))
        queries = []
        for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            entry = metadata[row] if metadata is not None else None
            text = _fill(self.template, prompt, response, entry, self.min_score, self.max_score)
            queries.append(self._encode(text))
        probabilities = self.label_probabilities(queries)  # [B, L]
        values = torch.tensor([value for value, _ in self.labels])  # [L]
        expected = probabilities @ values  # [B]
        if self.normalize and self.method == "score":
            expected = (expected - self.min_score) / (self.max_score - self.min_score)
        return RewardOutput(expected.float())

    def __repr__(self) -> str:
        return f"LocalJudge({self.name!r}, method={self.method!r})"


__all__ = [
    "DEFAULT_SCORE_TEMPLATE",
    "DEFAULT_SYSTEM",
    "DEFAULT_YES_NO_TEMPLATE",
    "HTTPJudge",
    "JudgeError",
    "LocalJudge",
    "parse_score",
    "prompt_text",
]
