"""Commands over a policy's responses: ``rlhf sample`` (K per prompt into a candidates file),
``rlhf best-of-n`` (reward against analytic KL) and ``rlhf score`` (a reward model on rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from rlhf.cli.common import (
    DeviceOption,
    DtypeOption,
    EngineOption,
    MaxNewTokensOption,
    SeedOption,
    TemperatureOption,
    TopPOption,
    VLLMOption,
    console,
    fail,
    policy_engine,
    setup_logging,
)
from rlhf.data.records import Text

PolicyOption = Annotated[
    str, typer.Option("--model", "-m", help="Policy: model folder or hub name.", show_default=False)
]
PromptsOption = Annotated[
    str,
    typer.Option(
        help="Prompts: any file with a prompt field (or conversations), or builtin:NAME.",
        show_default=False,
    ),
]
TopKOption = Annotated[int, typer.Option(min=0, help="Sample among the k most likely (0: off).")]
GenBatchOption = Annotated[int, typer.Option(min=1, help="Sequences generated together.")]
LimitOption = Annotated[int | None, typer.Option(min=1, help="Use the first N prompts only.")]
ColumnOption = Annotated[
    list[str] | None, typer.Option("--column", help="Column mapping field=column (repeatable).")
]
AnswerFieldOption = Annotated[
    str | None,
    typer.Option(
        help="Column holding each prompt's ground truth (e.g. answer), passed to the reward: "
        "verifiable rewards such as rule=gsm8k need it.",
        show_default=False,
    ),
]


def load_prompts(
    source: str, column: list[str] | None, limit: int | None, answer_field: str | None = None
) -> tuple[list[Text], list[dict[str, Any]] | None]:
    """The prompts and, with ``answer_field``, each one's ground truth for the reward."""
    from rlhf.rollout.candidates import load_prompts_and_answers

    columns = dict(item.split("=", 1) for item in column or [])
    return load_prompts_and_answers(source, answer_field, columns=columns or None, limit=limit)


def score(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Reward model folder (rlhf rm's <out>/model).")
    ],
    input_path: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            help="Rows of (prompt, completion) or (prompt, response): .jsonl, .json, .parquet, .csv.",
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="JSON Lines to write: each row plus its reward.")
    ],
    batch_size: Annotated[int, typer.Option(help="Sequences scored per forward pass.")] = 16,
    raw: Annotated[
        bool, typer.Option("--raw", help="Write the raw score as `reward` (no normalisation).")
    ] = False,
    max_length: Annotated[
        int | None, typer.Option(help="Cut longer sequences (prompt start first).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda:0, ...")] = "auto",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Score (prompt, response) rows with a reward model, writing each row plus its reward.

    `reward` is normalised (the reference responses of training have mean 0, std 1) and
    `raw_reward` is the model's own output; with --raw, `reward` is the raw score.
    """
    try:
        from rlhf.recipes.reward_model import score_file

        setup_logging()
        summary = score_file(
            model, input_path, output, batch_size=batch_size, raw=raw, max_length=max_length,
            device=device, progress=progress,
        )  # fmt: skip
    except Exception as error:
        fail(error)
    rows, mean = summary["rows"], summary["mean_reward"]
    console.print(
        f"[green]done[/]: scored {rows:.0f} rows (mean reward {mean:.4g}) to [bold]{output}[/]"
    )


def sample(
    model: PolicyOption,
    prompts: PromptsOption,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Candidates file to write (JSON Lines).")
    ],
    num_samples: Annotated[
        int, typer.Option("--num-samples", "-k", min=1, max=64, help="Responses per prompt (K).")
    ] = 4,
    max_new_tokens: MaxNewTokensOption = 64,
    temperature: TemperatureOption = 1.0,
    top_p: TopPOption = 1.0,
    top_k: TopKOption = 0,
    seed: SeedOption = 0,
    batch_size: GenBatchOption = 64,
    limit: LimitOption = None,
    reward: Annotated[
        str | None,
        typer.Option(
            help="Score responses: rule=NAME, model=PATH or a reward config file (.yaml/.json); "
            "adds `rewards` to rows."
        ),
    ] = None,
    keep_top: Annotated[
        int | None, typer.Option(min=1, help="With --reward: keep the best k per prompt.")
    ] = None,
    answer_field: AnswerFieldOption = None,
    column: ColumnOption = None,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "auto",
    engine: EngineOption = "hf",
    vllm: VLLMOption = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Sample K responses per prompt into a candidates file, ready for labelling.

    Each row: {"prompt", "responses": [K], "finished": [K] (ended with EOS), "logps": [K]
    (summed log-probs at the temperature)}; see docs/sampling.md.
    """
    try:
        from rlhf.eval.sampling import sample_to_file
        from rlhf.rewards import build_reward, parse_reward_spec
        from rlhf.rollout import SamplingParams
        from rlhf.rollout.factory import close_engine

        setup_logging()
        if keep_top is not None and reward is None:
            raise ValueError("--keep-top needs --reward to rank the responses by")
        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            num_samples=num_samples, seed=seed,
        )  # fmt: skip
        prompt_list, metadata = load_prompts(prompts, column, limit, answer_field)
        scorer = build_reward(parse_reward_spec(reward)) if reward else None
        sampler = policy_engine(model, dtype, device, batch_size, engine, vllm)
        try:
            summary = sample_to_file(
                sampler, prompt_list, params, output, reward=scorer, keep_top=keep_top,
                prompt_metadata=metadata, progress=progress,
            )  # fmt: skip
        finally:
            close_engine(sampler)
    except Exception as error:
        fail(error)
    line = (
        f"[green]done[/]: {summary['responses']:.0f} responses to {summary['prompts']:.0f} "
        f"prompts ({summary['finished_rate']:.0%} ended with EOS)"
    )
    if "mean_reward" in summary:
        line += f", mean reward {summary['mean_reward']:.4g}"
    console.print(f"{line} → [bold]{output}[/]")


def best_of_n(
    model: PolicyOption,
    prompts: PromptsOption,
    reward: Annotated[
        str,
        typer.Option(
            help="Reward to pick by: rule=NAME, model=PATH or a reward config file (.yaml/.json).",
            show_default=False,
        ),
    ],
    gold: Annotated[
        str | None,
        typer.Option(
            help="Gold reward to report for the picked samples (rule=NAME, model=PATH, a file)."
        ),
    ] = None,
    max_n: Annotated[
        int, typer.Option(min=1, max=1024, help="Largest N; the curve has N = 1, 2, 4, ... max.")
    ] = 16,
    prm: Annotated[
        Path | None,
        typer.Option(
            help="A process reward model (`rlhf prm`'s model folder): also compare choosing by "
            "it, by --reward, by majority and PRM-weighted voting, by accuracy under --gold "
            "(a 0/1 verifier); writes selection.jsonl/.csv/.png.",
        ),
    ] = None,
    beams: Annotated[
        int | None,
        typer.Option(
            min=1, max=64,
            help="With --prm: also search step by step, keeping this many partial solutions, "
            "each continued --expansions times a step (shown at N = beams × expansions).",
        ),
    ] = None,
    expansions: Annotated[
        int, typer.Option(min=1, max=64, help="With --beams: continuations per beam and step.")
    ] = 4,
    step_tokens: Annotated[
        int, typer.Option(min=1, help="With --beams: tokens sampled for one step at most.")
    ] = 32,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/best-of-n"),
    max_new_tokens: MaxNewTokensOption = 64,
    temperature: TemperatureOption = 1.0,
    top_p: TopPOption = 1.0,
    top_k: TopKOption = 0,
    seed: SeedOption = 0,
    batch_size: GenBatchOption = 64,
    limit: LimitOption = None,
    answer_field: AnswerFieldOption = None,
    column: ColumnOption = None,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "auto",
    engine: EngineOption = "hf",
    vllm: VLLMOption = None,
) -> None:  # fmt: skip
    """Reward (and gold reward) of best-of-N against its analytic KL, log N - (N-1)/N.

    Samples max-n responses per prompt once; the expected best of each N is computed over
    all N-subsets of them. Writes best_of_n.jsonl/.csv, samples.jsonl (every sample with its
    rewards) and best_of_n.png when matplotlib is installed. With --prm, also the accuracy of
    each way of choosing one of N solutions (docs/prm.md#choosing-one-of-n-solutions).
    """
    try:
        from rlhf.eval.best_of_n import best_of_n_sizes, evaluate_best_of_n
        from rlhf.eval.step_search import beam_search_point
        from rlhf.eval.step_selection import comparison, scored_candidates, selection_points
        from rlhf.recipes.best_of_n import (
            report_table,
            selection_table,
            write_markdown,
            write_report,
            write_selection,
        )
        from rlhf.rewards import build_reward, parse_reward_spec
        from rlhf.rewards.prm import ProcessReward
        from rlhf.rollout import SamplingParams
        from rlhf.rollout.factory import close_engine

        setup_logging()
        if prm is not None and gold is None:
            raise ValueError("--prm compares choices by accuracy: give a 0/1 verifier as --gold")
        if beams is not None and prm is None:
            raise ValueError("--beams searches step by step with a PRM: give --prm")
        process = ProcessReward(prm, device=device) if prm is not None else None
        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            num_samples=max_n, seed=seed,
        )  # fmt: skip
        prompt_list, metadata = load_prompts(prompts, column, limit, answer_field)
        scorer = build_reward(parse_reward_spec(reward))
        gold_scorer = build_reward(parse_reward_spec(gold)) if gold else None
        sampler = policy_engine(model, dtype, device, batch_size, engine, vllm)
        try:
            report = evaluate_best_of_n(
                sampler, prompt_list, params, scorer, gold_scorer, prompt_metadata=metadata
            )
            searched = None
            if beams is not None and process is not None and gold_scorer is not None:
                searched = beam_search_point(
                    sampler, process, prompt_list, gold_scorer, metadata, beams=beams,
                    expansions=expansions, step_tokens=step_tokens,
                    temperature=temperature, seed=seed,
                )  # fmt: skip
        finally:
            close_engine(sampler)
        paths = write_report(report, out)
        points = []
        if process is not None:
            problems = scored_candidates(
                report.samples, process, with_outcome=not isinstance(scorer, ProcessReward)
            )
            selectors = comparison(with_outcome=not isinstance(scorer, ProcessReward))
            points = selection_points(problems, best_of_n_sizes(max_n), selectors)
            points += [searched] if searched is not None else []
            paths |= write_selection(points, out)
        source = f"{model} on {prompts}, chosen by {reward}" + (f", PRM {prm}" if prm else "")
        paths["report"] = write_markdown(report, points, out, source)
    except Exception as error:
        fail(error)
    Console().print(report_table(report))
    if points:
        Console().print(selection_table(points))
    written = ", ".join(path.name for path in paths.values())
    console.print(f"[green]done[/]: wrote {written} to [bold]{out}[/]")


def unescape(text: str) -> str:
    """``text`` with backslash escapes (``\\n``, ``\\t``, ``\\u2014``) read as the characters they
    name, other characters (non-ASCII ones too) kept as they are: a separator typed on the
    command line."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def label_steps(
    model: PolicyOption,
    input_path: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            help="Step-level solutions (prompt, steps; PRM800K or Math-Shepherd rows too), or "
            "builtin:step-solutions.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Step records to write, labelled (JSON Lines).")
    ],
    completions: Annotated[
        int, typer.Option("--completions", "-n", min=1, max=256, help="Completions per step (N).")
    ] = 8,
    estimate: Annotated[
        str, typer.Option(help="hard: +1 if any completion is right; soft: the share that is.")
    ] = "hard",
    verifier: Annotated[
        str,
        typer.Option(
            help="step_world (the embedded world's checker) or answer (the text's last number "
            "against each record's `answer`)."
        ),
    ] = "step_world",
    separator: Annotated[str, typer.Option(help="What follows each step.")] = "\n",
    max_new_tokens: MaxNewTokensOption = 64,
    temperature: TemperatureOption = 1.0,
    seed: SeedOption = 0,
    batch_size: GenBatchOption = 64,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "auto",
    engine: EngineOption = "hf",
    vllm: VLLMOption = None,
) -> None:
    """Label every step of every solution by Monte-Carlo completion (Math-Shepherd): the
    policy continues from the step N times; a step from which it reaches the right answer is
    good (docs/prm.md#automatic-step-labels)."""
    try:
        from rlhf.data.readers import write_records
        from rlhf.data.records import StepRecord
        from rlhf.recipes.common import DataConfig, load_records
        from rlhf.rollout.factory import close_engine
        from rlhf.rollout.step_labels import VERIFIERS, monte_carlo_labels

        setup_logging()
        if estimate not in ("hard", "soft"):
            raise ValueError(f"--estimate {estimate!r}: use hard or soft")
        if verifier not in VERIFIERS:
            raise ValueError(f"--verifier {verifier!r}: use one of {', '.join(VERIFIERS)}")
        records = load_records(input_path, DataConfig(train=input_path))
        wrong = [r for r in records if not isinstance(r, StepRecord)]
        if wrong:
            raise ValueError(
                f"{input_path}: {len(wrong)} rows are not step-level solutions "
                f"(the first is a {type(wrong[0]).__name__})"
            )
        policy = policy_engine(model, dtype, device, batch_size, engine, vllm)
        try:
            labelled = monte_carlo_labels(
                policy, records, VERIFIERS[verifier], completions=completions,
                max_new_tokens=max_new_tokens, separator=unescape(separator),
                estimate=estimate, temperature=temperature, seed=seed,  # type: ignore[arg-type]
            )  # fmt: skip
        finally:
            close_engine(policy)
        write_records(output, labelled)
    except Exception as error:
        fail(error)
    steps = sum(len(r.labels) for r in labelled)
    good = sum(1 for r in labelled for label in r.labels if label is not None and label > 0)
    console.print(
        f"[green]done[/]: {steps} steps of {len(labelled)} solutions labelled "
        f"({good / max(steps, 1):.0%} good) → [bold]{output}[/]"
    )


def register(app: typer.Typer) -> None:
    app.command()(score)
    app.command()(sample)
    app.command("label-steps")(label_steps)
    app.command("best-of-n")(best_of_n)
