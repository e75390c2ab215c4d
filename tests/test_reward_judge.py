"""Judges: an OpenAI-compatible endpoint (a fake server on localhost, no network) and a local
causal LM (a tiny model built in code)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from rlhf.data.records import Message
from rlhf.rewards import (
    CompositeReward,
    HTTPJudge,
    JudgeError,
    LocalJudge,
    RewardSpec,
    build_reward,
    parse_score,
    score_reward,
)
from rlhf.rewards.judge import prompt_text

Reply = tuple[int, dict[str, str], Any]  # status, headers, JSON body (or raw bytes)


def completion(text: str) -> Reply:
    """A chat-completions reply whose message is ``text``."""
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
    }
    return 200, {}, body


@dataclass
class FakeEndpoint:
    """What the fake server saw, and how it answers: ``reply(body, count) -> Reply``."""

    url: str
    reply: Callable[[dict[str, Any], int], Reply] = lambda body, count: completion("5")
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def endpoint() -> Iterator[FakeEndpoint]:
    """An OpenAI-compatible chat-completions server in a thread, on a free localhost port."""
    state: FakeEndpoint

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append(body)
                state.headers.append(dict(self.headers))
                count = len(state.requests)
                state.in_flight += 1
                state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
            try:
                if self.path != "/v1/chat/completions":
                    status, headers, payload = 404, {}, {"error": f"no route {self.path}"}
                else:
                    time.sleep(state.delay_s)
                    status, headers, payload = state.reply(body, count)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
                pass
            finally:
                with state.lock:
                    state.in_flight -= 1

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state = FakeEndpoint(url=f"http://127.0.0.1:{server.server_address[1]}/v1")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def grade_by_response(body: dict[str, Any], count: int) -> Reply:
    """Replies in the shapes judges write, keyed by the graded response."""
    user = body["messages"][-1]["content"]
    for response, reply in (
        ("great answer", "Score: 9"),
        ("poor answer", "I would rate this 2/10."),
        ("plain answer", "5"),
    ):
        if f"[Response]\n{response}\n" in user:
            return completion(reply)
    return completion("no idea")


def test_parse_score():
    assert parse_score("7", 1, 10) == 7.0
    assert parse_score("Score: 8.5", 1, 10) == 8.5
    assert parse_score("**Rating**: 3", 1, 10) == 3.0
    assert parse_score("On a scale of 1 to 10 I give it 6/10.", 1, 10) == 6.0
    assert parse_score("I'd say 4 out of 10", 1, 10) == 4.0
    assert parse_score("between 1 and 10, probably 7", 1, 10) == 7.0
    assert parse_score("Score: 11", 1, 10) is None
    assert parse_score("no number", 1, 10) is None
    assert prompt_text("Hi") == "Hi" and prompt_text((Message("user", "Hi"),)) == "Hi"
    chat = (Message("system", "Be brief."), Message("user", "Hi"))
    assert prompt_text(chat) == "system: Be brief.\nuser: Hi"


def test_http_judge_scores_normalises_and_sends_a_chat_completion(endpoint, monkeypatch):
    endpoint.reply = grade_by_response
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test-123")
    judge = HTTPJudge(
        endpoint.url, "judge-model", api_key_env="TEST_JUDGE_KEY", backoff_s=0.0, max_retries=0,
        template="Q: {prompt}\nGround truth: {answer}\n[Response]\n{response}\nScore {min_score}-{max_score}.",
    )  # fmt: skip
    prompts = ["What is 2 + 2?", "What is 2 + 2?", (Message("user", "Name a colour."),)]
    responses = ["great answer", "poor answer", "plain answer"]
    metadata = [{"answer": "4"}, {"answer": "4"}, {}]
    scores = judge(prompts, responses, metadata)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, torch.tensor([8 / 9, 1 / 9, 4 / 9]))
    assert len(endpoint.requests) == 3
    first = next(r for r in endpoint.requests if "great answer" in r["messages"][-1]["content"])
    assert first["model"] == "judge-model" and first["temperature"] == 0.0
    assert first["messages"][0]["role"] == "system"
    assert first["messages"][-1] == {
        "role": "user",
        "content": "Q: What is 2 + 2?\nGround truth: 4\n[Response]\ngreat answer\nScore 1-10.",
    }
    assert all(h["Authorization"] == "Bearer sk-test-123" for h in endpoint.headers)
    assert "sk-test" not in repr(judge)
    raw = HTTPJudge(endpoint.url + "/chat/completions", "m", normalize=False, max_retries=0)
    assert raw(["p"], ["great answer"]).tolist() == [9.0]  # the full URL works as well
    assert "Authorization" not in endpoint.headers[-1]


def test_http_judge_asks_once_per_distinct_pair_and_limits_concurrency(endpoint):
    endpoint.delay_s = 0.1
    judge = HTTPJudge(endpoint.url, "m", concurrency=2, max_retries=0)
    responses = [f"answer {i % 6}" for i in range(12)]  # 6 distinct, each twice
    scores = judge(["p"] * 12, responses)
    assert len(endpoint.requests) == 6 and judge.requests_made == 6
    assert endpoint.peak_in_flight == 2
    torch.testing.assert_close(scores, torch.full((12,), 4 / 9))


def test_http_judge_retries_transient_failures_with_backoff(endpoint):
    def flaky(body: dict[str, Any], count: int) -> Reply:
        if count == 1:
            return 503, {}, {"error": "overloaded"}
        if count == 2:
            return 429, {"Retry-After": "0"}, {"error": "rate limited"}
        if count == 3:
            return completion("I cannot grade this.")  # no score: asked again
        return completion("Score: 10")

    endpoint.reply = flaky
    judge = HTTPJudge(endpoint.url, "m", max_retries=3, backoff_s=0.01)
    assert judge(["p"], ["r"]).tolist() == [1.0]
    assert judge.requests_made == 4


def test_http_judge_gives_up_naming_the_endpoint_and_row(endpoint, caplog):
    endpoint.reply = lambda body, count: completion("Looks fine to me.")
    judge = HTTPJudge(endpoint.url, "m", max_retries=2, backoff_s=0.0)
    with pytest.raises(JudgeError) as raised:
        judge(["p", "p"], ["ok", "ok"])
    message = str(raised.value)
    assert f"judge {endpoint.url}/chat/completions: row 0: no score after 3 attempts" in message
    assert "Looks fine to me." in message and judge.requests_made == 3
    lenient = HTTPJudge(endpoint.url, "m", max_retries=1, backoff_s=0.0, on_failure=-1.0)
    with caplog.at_level("WARNING", logger="rlhf.rewards"):
        assert lenient(["p"], ["ok"]).tolist() == [-1.0]
    assert "no score after 2 attempts" in caplog.text


def test_http_judge_stops_at_once_on_client_errors(endpoint):
    endpoint.reply = lambda body, count: (401, {}, {"error": {"message": "invalid api key"}})
    judge = HTTPJudge(endpoint.url, "m", max_retries=5, backoff_s=0.0)
    with pytest.raises(
        JudgeError, match=r"/v1/chat/completions: row 0: HTTP 401 .*invalid api key"
    ):
        judge(["p"], ["r"])
    assert judge.requests_made == 1
    endpoint.reply = lambda body, count: (200, {}, b"<html>not json</html>")
    with pytest.raises(JudgeError, match="not a chat completion: '<html>"):
        HTTPJudge(endpoint.url, "m", max_retries=5)(["p"], ["r"])
    with pytest.raises(JudgeError, match="HTTP 404"):
        HTTPJudge(endpoint.url.removesuffix("/v1") + "/wrong", "m", max_retries=5)(["p"], ["r"])


def test_http_judge_times_out_and_reports_unreachable_endpoints(endpoint):
    endpoint.delay_s = 1.0
    slow = HTTPJudge(endpoint.url, "m", timeout_s=0.2, max_retries=1, backoff_s=0.0)
    with pytest.raises(JudgeError, match=r"no score after 2 attempts: no reply within 0\.2s"):
        slow(["p"], ["r"])
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]  # bound, then closed below: nothing listens there
    dead = HTTPJudge(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff_s=0.0)
    with pytest.raises(
        JudgeError,
        match=rf"judge http://127.0.0.1:{port}/v1/chat/completions: row 0: .*cannot connect",
    ):
        dead(["p"], ["r"])


def test_http_judge_checks_its_settings(monkeypatch):
    monkeypatch.delenv("ABSENT_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match=r"ABSENT_JUDGE_KEY .*is not set"):
        HTTPJudge("http://127.0.0.1:9/v1", "m", api_key_env="ABSENT_JUDGE_KEY")
    with pytest.raises(ValueError, match="must start with http"):
        HTTPJudge("localhost:8000/v1", "m")
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) question"):
        HTTPJudge("http://127.0.0.1:9/v1", "m", template="{question} {response}")


def test_judge_from_a_spec_inside_a_composite(endpoint):
    endpoint.reply = grade_by_response
    spec = RewardSpec.model_validate(
        {
            "composite": {
                "correct": {"rule": "gsm8k"},
                "judge": {
                    "weight": 0.5,
                    "judge": {"endpoint": endpoint.url, "model": "m", "max_retries": 0},
                },
            }
        }
    )
    reward = build_reward(spec)
    assert isinstance(reward, CompositeReward)
    output = score_reward(
        reward, ["q", "q"], ["great answer", "poor answer"], [{"answer": "1"}, {"answer": "2"}]
    )
    torch.testing.assert_close(output.components["judge"], torch.tensor([8 / 9, 1 / 9]))
    torch.testing.assert_close(output.components["correct"], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(output.scores, 0.5 * output.components["judge"])
    assert set(output.metrics()) == {"reward", "reward/correct", "reward/judge"}


# --- a local model as the judge -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_judge_parts(tiny_model_dir, tiny_tokenizer):
    from rlhf.models.load import load_model

    return load_model(str(tiny_model_dir), tokenizer=tiny_tokenizer), tiny_tokenizer


def reference_label_probabilities(judge: LocalJudge, text: str) -> torch.Tensor:
    """P(label) from one unpadded forward pass over the judge query alone."""
    ids = torch.tensor([judge._encode(text)])
    with torch.no_grad():
        logits = judge.model(input_ids=ids).logits[0, -1].float()
    logps = torch.log_softmax(logits, dim=-1)
    per_label = torch.stack([torch.logsumexp(logps[ids_], dim=-1) for _, ids_ in judge.labels])
    return torch.softmax(per_label, dim=-1)


def test_local_yes_no_judge_is_p_yes_and_batching_changes_nothing(tiny_judge_parts):
    model, tokenizer = tiny_judge_parts
    prompts = ["What is 2 + 3?\n", "What is 10 + 7?\n", (Message("user", "What is 1 + 1?"),)]
    responses = ["2 + 3 = 5", "10 + 7 = 17 and some more words here", "2"]
    one_by_one = LocalJudge(model, tokenizer, method="yes_no", batch_size=1)
    scores = one_by_one(prompts, responses)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert bool(((scores > 0) & (scores < 1)).all())
    batched = LocalJudge(model, tokenizer, method="yes_no", batch_size=3)(prompts, responses)
    torch.testing.assert_close(batched, scores, atol=1e-5, rtol=1e-5)
    assert [value for value, _ in one_by_one.labels] == [1.0, 0.0]
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        text = one_by_one.template.format(
            prompt=prompt_text(prompt), response=response, answer="", min_score=0, max_score=1
        )
        expected = reference_label_probabilities(one_by_one, text)[0]  # P(Yes)
        assert float(scores[row]) == pytest.approx(float(expected), abs=1e-5)


def test_local_score_judge_is_the_expected_score(tiny_judge_parts):
    model, tokenizer = tiny_judge_parts
    judge = LocalJudge(
        model, tokenizer, method="score", min_score=1, max_score=5, batch_size=2,
        template="{prompt} {response} (truth: {answer}) score {min_score}-{max_score}:",
    )  # fmt: skip
    prompts, responses = ["What is 2 + 3?\n"] * 3, ["5", "6", "2 + 3 = 5"]
    metadata = [{"answer": "5"}, {"answer": "5"}, {}]
    scores = judge(prompts, responses, metadata)
    assert bool(((scores >= 0) & (scores <= 1)).all())
    raw = LocalJudge(
        model, tokenizer, method="score", min_score=1, max_score=5, normalize=False,
        template=judge.template,
    )(prompts, responses, metadata)  # fmt: skip
    torch.testing.assert_close(scores, (raw - 1) / 4)
    text = judge.template.format(
        prompt=prompts[0], response="5", answer="5", min_score=1, max_score=5
    )
    probabilities = reference_label_probabilities(judge, text)
    expected = float(probabilities @ torch.arange(1.0, 6.0))
    assert float(raw[0]) == pytest.approx(expected, abs=1e-4)


def test_local_judge_from_a_spec_and_its_errors(tiny_model_dir, tiny_judge_parts):
    spec = RewardSpec.model_validate(
        {"judge": {"local_model": str(tiny_model_dir), "method": "yes_no"}, "device": "cpu"}
    )
    judge = build_reward(spec)
    assert isinstance(judge, LocalJudge) and judge(["Hi"], ["Hello"]).shape == (1,)
    model, tokenizer = tiny_judge_parts
    with pytest.raises(ValueError, match="'Yes' has no first token of its own"):
        judge._label_tokens({1.0: ("Yes",), 0.0: ("Yes",)})
    with pytest.raises(ValueError, match="needs its tokenizer"):
        LocalJudge(model)
    with pytest.raises(ValueError, match="whole numbers"):
        LocalJudge(model, tokenizer, method="score", min_score=1, max_score=2.5)
