"""The benchmark harness's pure parts: the JSON result line, MFU and throughput arithmetic,
child-process plumbing and the synthetic text helpers. No timings are asserted."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import pytest

HARNESS_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "_harness.py"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


harness = _load("_harness", HARNESS_PATH)


# ---------------------------------------------------------------- the result line


def test_result_line_has_the_contract_keys_in_order_and_ratio_is_ours_over_trl():
    result = harness.result_line("sft", "tokens_per_s", 9000.0, 6000.0, 700.0, 900.0, 0.1234567)
    assert tuple(result) == harness.RESULT_KEYS
    assert result["ratio"] == pytest.approx(1.5)
    assert result["benchmark"] == "sft" and result["metric"] == "tokens_per_s"
    assert result["mfu"] == pytest.approx(0.1235)


def test_result_line_without_trl_has_null_trl_ratio_and_peak():
    result = harness.result_line("sft", "tokens_per_s", 9000.0, None, 700.0, None, 0.1)
    assert result["trl"] is None and result["ratio"] is None and result["trl_peak_mb"] is None


def test_print_result_writes_one_json_object_on_the_last_line(capsys):
    print("a table above")
    harness.print_result(harness.result_line("dpo", "pairs_per_s", 10.0, 5.0, 1.0, 2.0, 0.01))
    lines = capsys.readouterr().out.splitlines()
    parsed = json.loads(lines[-1])
    assert list(parsed) == list(harness.RESULT_KEYS)
    assert parsed["ratio"] == 2.0


def test_print_result_refuses_an_incomplete_result():
    with pytest.raises(ValueError, match="mfu"):
        harness.print_result({key: 1 for key in harness.RESULT_KEYS if key != "mfu"})


# ---------------------------------------------------------------- arithmetic


def test_mfu_is_six_n_tokens_per_second_over_peak():
    n, tokens_per_s, peak = 3_164_416, 5_000.0, 150e9
    assert harness.model_flops_utilization(tokens_per_s, n, peak) == pytest.approx(
        6 * n * tokens_per_s / peak
    )
    assert harness.model_flops_utilization(1_000.0, 1_000_000, 1e9) == pytest.approx(6.0)


def test_forward_only_mfu_counts_two_n_per_token():
    forward = harness.model_flops_utilization(
        1_000.0, 1_000_000, 1e10, harness.FORWARD_FLOPS_PER_PARAM_TOKEN
    )
    train = harness.model_flops_utilization(1_000.0, 1_000_000, 1e10)
    assert forward == pytest.approx(0.2) and train == pytest.approx(3 * forward)


def test_mfu_needs_a_positive_peak():
    with pytest.raises(ValueError):
        harness.model_flops_utilization(1.0, 1, 0.0)


def test_tokens_per_second_counts_only_steps_after_warmup():
    # step ends at 1, 2, 4, 6, 8 s; after 2 warm-up steps: 3 steps in 6 s
    assert harness.tokens_per_second([1, 2, 4, 6, 8], 1024, warmup=2) == pytest.approx(512.0)


def test_tokens_per_second_without_warmup_starts_at_start_time():
    assert harness.tokens_per_second([2, 4], 100, warmup=0, start_time=1.0) == pytest.approx(
        200 / 3
    )


@pytest.mark.parametrize(("times", "warmup"), [([1, 2], 2), ([1, 2], 5), ([3, 3], 1)])
def test_tokens_per_second_rejects_nothing_to_measure(times, warmup):
    with pytest.raises(ValueError):
        harness.tokens_per_second(times, 100, warmup=warmup)


# ---------------------------------------------------------------- child processes


def test_parse_child_output_takes_the_last_marked_line_only():
    marker = harness.RESULT_MARKER
    stdout = f'noise\n{marker}{{"a": 1}}\nmore noise {{"b": 2}}\n{marker}{{"a": 2}}\ntrailing\n'
    assert harness.parse_child_output(stdout) == {"a": 2}
    assert harness.parse_child_output('{"a": 1}\n') is None


@pytest.fixture
def child_functions(tmp_path):
    source = tmp_path / "bench_child_functions.py"
    source.write_text(
        "def double(x):\n"
        "    print('library chatter on stdout')\n"
        "    return {'y': 2 * x}\n"
        "\n"
        "def fail():\n"
        "    raise RuntimeError('boom in the child')\n"
        "\n"
        "def interpreter():\n"
        "    import sys\n"
        "    return {'executable': sys.executable}\n",
        encoding="utf-8",
    )
    return _load("bench_child_functions", source)


def test_run_in_child_returns_the_result_and_the_child_peak_rss(child_functions):
    result = harness.run_in_child(child_functions.double, x=21)
    assert result["y"] == 42
    assert result["peak_rss_mb"] > 1


def test_run_in_child_runs_the_given_interpreter(child_functions, tmp_path):
    # another environment's Python (bench_ppo's TRL 1.12 side): a link to ours stands in
    other = tmp_path / "other-python"
    other.symlink_to(sys.executable)
    result = harness.run_in_child(child_functions.interpreter, python=str(other))
    assert result["executable"] == str(other)


def test_run_in_child_reports_the_child_error(child_functions):
    with pytest.raises(harness.BenchmarkError, match="boom in the child"):
        harness.run_in_child(child_functions.fail)


def test_peak_rss_is_positive_megabytes():
    assert 1 < harness.peak_rss_mb() < 1e6


def test_timed_calls_times_a_module_function_and_restores_it():
    module = types.ModuleType("timed_module")
    module.work = lambda x, *, y=1: x + y
    original = module.work
    with harness.timed_calls(module, "work") as durations:
        assert module.work(1, y=2) == 3 and module.work(5) == 6
    assert len(durations) == 2 and all(d >= 0 for d in durations)
    assert module.work is original


def test_timed_calls_times_a_method_counts_failing_calls_and_restores_it():
    class Owner:
        def run(self, x):
            if x < 0:
                raise ValueError("negative")
            return 2 * x

    original = Owner.__dict__["run"]
    with harness.timed_calls(Owner, "run") as durations:
        assert Owner.__dict__["run"] is not original
        assert Owner().run(4) == 8
        with pytest.raises(ValueError, match="negative"):
            Owner().run(-1)
    assert len(durations) == 2
    assert Owner.__dict__["run"] is original
    assert Owner().run(3) == 6
    with harness.timed_calls(Owner, "run") as durations:
        pass
    assert durations == []


# ---------------------------------------------------------------- flags and table


def test_common_arguments_parse_the_shared_flags():
    parser = harness.common_arguments("x", steps=30, warmup=5)
    assert vars(parser.parse_args([])) == {
        "steps": 30,
        "warmup": 5,
        "skip_trl": False,
        "json_only": False,
        "compile": True,
    }
    args = parser.parse_args(
        ["--steps", "3", "--warmup", "1", "--skip-trl", "--json-only", "--no-compile"]
    )
    assert (args.steps, args.warmup, args.skip_trl, args.json_only, args.compile) == (
        3,
        1,
        True,
        True,
        False,
    )


def test_format_table_aligns_columns_and_marks_missing_values():
    table = harness.format_table(["side", "tokens/s"], [["ours", 1234.5], ["trl", None]])
    header, rule, ours, trl = table.splitlines()
    assert header.startswith("side") and set(rule) <= {"-", " "}
    assert ours.endswith("1,234.5") and trl.endswith("-")
    assert len(ours) == len(header)


# ---------------------------------------------------------------- synthetic text


def test_synthetic_sentences_are_seeded():
    first = harness.synthetic_sentences(20, seed=3)
    assert first == harness.synthetic_sentences(20, seed=3)
    assert first != harness.synthetic_sentences(20, seed=4)
    assert all(s[0].isupper() and s.endswith(".") for s in first)


def test_made_up_lexicon_is_fixed_and_distinct():
    lexicon = harness.made_up_lexicon()
    assert lexicon == harness.made_up_lexicon()
    assert len(set(lexicon)) == len(lexicon) == harness.LEXICON_SIZE


class ThreeCharTokenizer:
    """One token per started group of three characters: words cost 1, 2 or more tokens."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(math.ceil(len(text) / 3)))}


@pytest.mark.parametrize("num_tokens", [1, 7, 64])
def test_text_of_exact_length_hits_the_token_count(num_tokens):
    tokenizer = ThreeCharTokenizer()
    words = harness.word_stream(seed=0)
    text = harness.text_of_exact_length(tokenizer, words, num_tokens, leading_space=True)
    pieces = [f" {word}" for word in text.split(" ")[1:]]
    assert text.startswith(" ")
    assert sum(len(tokenizer(piece)["input_ids"]) for piece in pieces) == num_tokens


def test_text_of_exact_length_gives_up_when_nothing_fits():
    with pytest.raises(ValueError, match="exactly 1 tokens"):
        harness.text_of_exact_length(
            ThreeCharTokenizer(), iter(["long"] * 100), 1, leading_space=True, max_skips=50
        )
