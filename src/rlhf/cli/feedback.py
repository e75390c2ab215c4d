"""``rlhf feedback``: the human-feedback web app (serve it, add accounts and campaigns,
export labels, let simulated annotators label through its API; docs/feedback.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import rich.markup
import typer

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
from rlhf.feedback.limits import MAX_BODY_BYTES, MAX_UPLOAD_BYTES

app = typer.Typer(
    help="The human-feedback web app: serve it, add accounts and campaigns, export labels, "
    "let simulated annotators label (docs/feedback.md).",
    no_args_is_help=True,
)
DbOption = Annotated[
    str,
    typer.Option(
        "--db", help="SQLite file path (created if missing) or a database URL, e.g. "
        "postgresql+psycopg://user@host/db."
    ),
]  # fmt: skip


class FeedbackSampler:
    """The web app's model: ``sampler(prompts, n)`` gives n replies per prompt, a fresh seed
    per call so that a repeated prompt gets new candidates; :meth:`close` stops its engine."""

    def __init__(self, engine: Any, params: dict[str, Any], seed: int) -> None:
        import itertools

        self.engine, self.params, self.calls = engine, params, itertools.count(seed)

    def __call__(self, prompts: list[Any], n: int) -> list[list[str]]:
        from rlhf.eval.sampling import sample_candidates
        from rlhf.feedback.tasks import as_text
        from rlhf.rollout import SamplingParams

        params = SamplingParams(**self.params, num_samples=n, seed=next(self.calls))
        candidates = sample_candidates(self.engine, [as_text(p) for p in prompts], params)
        return [list(candidate.responses) for candidate in candidates]

    def close(self) -> None:
        from rlhf.rollout.factory import close_engine

        close_engine(self.engine)


def feedback_sampler(
    model: str, dtype: str, device: str, max_new_tokens: int, temperature: float, top_p: float,
    seed: int, engine: str = "hf", vllm: list[str] | None = None,
) -> FeedbackSampler:  # fmt: skip
    """The web app's sampler over ``model`` with the ``engine`` (and ``vllm`` settings) chosen."""
    return FeedbackSampler(
        policy_engine(model, dtype, device, 16, engine, vllm),
        {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p},
        seed,
    )


def served_models(options: list[str]) -> dict[str, str]:
    """``--model`` options as {name: path}: one ``PATH`` is named ``model``; several are each
    ``NAME=PATH`` with distinct names."""
    from rlhf.feedback.api.state import DEFAULT_MODEL

    if len(options) == 1 and "=" not in options[0]:
        return {DEFAULT_MODEL: options[0]}
    named: dict[str, str] = {}
    for option in options:
        name, sep, path = option.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--model {option}: with several models, name each: NAME=PATH")
        if name.strip() in named:
            raise ValueError(f"--model: {name.strip()!r} is named twice")
        named[name.strip()] = path.strip()
    return named


@app.command("serve")
def feedback_serve(
    db: DbOption = "feedback.db",
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="Checkpoint or hub name to sample candidates and chat replies from; NAME=PATH, "
            "repeated, serves several (a chat campaign may pit two against each other)."
        ),
    ] = None,
    max_new_tokens: MaxNewTokensOption = 128,
    temperature: TemperatureOption = 1.0,
    top_p: TopPOption = 1.0,
    seed: SeedOption = 0,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "auto",
    engine: EngineOption = "hf",
    vllm: VLLMOption = None,
    secure_cookies: Annotated[
        bool | None,
        typer.Option(
            "--secure-cookies/--no-secure-cookies",
            help="Force the Secure cookie flag (default: set when reached over HTTPS).",
            show_default=False,
        ),
    ] = None,
    max_body: Annotated[
        int,
        typer.Option(
            min=1024, help="Largest request body in bytes (413 beyond it, refused unread)."
        ),
    ] = MAX_BODY_BYTES,
    max_upload: Annotated[
        int, typer.Option(min=1024, help="Largest campaign upload (its whole file) in bytes.")
    ] = MAX_UPLOAD_BYTES,
) -> None:
    """Run the web app: annotators at /annotate, admins at /admin, the API under /api.

    The schema is created or migrated at start. On a database with no admin, an admin
    account is created and its token printed once.
    """
    try:
        import socket

        import uvicorn

        from rlhf.feedback.app import create_app

        if not model and (engine != "hf" or vllm):
            raise ValueError("--engine and --vllm choose how --model samples: add --model")
        with socket.socket() as probe:  # a taken port, said before a model loads
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                probe.bind((host, port))
            except OSError as error:
                raise ValueError(f"cannot listen on {host}:{port}: {error.strerror}") from None
        named = served_models(model or [])
        setup_logging(models=bool(named))
        samplers = {
            name: feedback_sampler(
                path, dtype, device, max_new_tokens, temperature, top_p, seed, engine, vllm
            )
            for name, path in named.items()
        }
        try:
            web = create_app(
                db,
                sampler=samplers or None,
                secure_cookies=secure_cookies,
                max_body_bytes=max_body,
                max_upload_bytes=max_upload,
            )
            token = web.state.feedback.start()  # the database's problems, said before serving
            if token:
                console.print(
                    f"created the admin account; its token (shown once): {token}", soft_wrap=True
                )
            console.print(f"serving [bold]http://{host}:{port}/[/] (database {db})")
            uvicorn.run(
                web, host=host, port=port, log_level="warning", proxy_headers=True,
                timeout_graceful_shutdown=5,
            )  # fmt: skip
        finally:
            for sampler in samplers.values():
                sampler.close()  # vLLM's engine process ends with the server
    except Exception as error:
        fail(error)


def _campaign(session: Any, name: str, db: str) -> Any:
    """The campaign called ``name``, else the one whose id it is (a campaign may be named
    "3"); a ValueError naming ``db`` when there is neither."""
    from sqlalchemy import select

    from rlhf.feedback.db import Campaign

    found = session.scalar(select(Campaign).where(Campaign.name == name))
    if found is None and name.isdigit():
        found = session.get(Campaign, int(name))
    if found is None:
        raise ValueError(f"no campaign {name!r} in {db}")
    return found


def _sessions(db: str) -> Any:
    """A session factory on ``db``, its schema created or migrated first."""
    from rlhf.feedback.db import database_url, make_engine, migrate, session_factory

    engine = make_engine(database_url(db))
    migrate(engine)
    return session_factory(engine)


@app.command("add-user")
def feedback_add_user(
    name: Annotated[str, typer.Argument(help="Account name (shown to admins only).")],
    db: DbOption = "feedback.db",
    role: Annotated[str, typer.Option(help="annotator or admin.")] = "annotator",
) -> None:
    """Create an account and print its login token (shown once; only its hash is kept)."""
    from rlhf.feedback import service

    try:
        with _sessions(db)() as session:
            _, token = service.create_user(session, name, role)
            session.commit()
    except Exception as error:
        fail(getattr(error, "message", error))
    print(token)
    who = rich.markup.escape(f"{role} {name!r}")
    console.print(f"[green]created[/] {who}; the token above is shown only now")


@app.command("create-campaign")
def feedback_create_campaign(
    source: Annotated[
        Path,
        typer.Argument(
            help="JSON Lines of prompts and responses, as `rlhf sample` writes (steps: step "
            "records {prompt, steps}, PRM800K or Math-Shepherd rows)."
        ),
    ],
    name: Annotated[str, typer.Option(help="Campaign name.")],
    task: Annotated[str, typer.Option(help="pairwise, rank, rate, thumbs, edit, chat or steps.")],
    db: DbOption = "feedback.db",
    k: Annotated[int, typer.Option(help="Distinct annotators per item.")] = 1,
    guidelines: Annotated[
        Path | None, typer.Option(help="A text or markdown file of guidelines.")
    ] = None,
    render: Annotated[str, typer.Option(help="Show model text as text or markdown.")] = "text",
    models: Annotated[
        str | None,
        typer.Option(
            help="chat: two models the server serves (--model NAME=PATH), comma-separated; "
            "each turn then has one reply from each, blinded.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create a campaign from a file (the admin page does the same by upload)."""
    from rlhf.feedback import service
    from rlhf.feedback.campaigns import parse_source

    try:
        settings = None
        if models is not None:
            names = [part.strip() for part in models.split(",")]
            if task != "chat" or len(names) != 2 or names[0] == names[1] or not all(names):
                raise ValueError(f"--models {models}: two different names, for a chat campaign")
            settings = {"models": names}
        items = parse_source(task, source.read_text(encoding="utf-8"))
        notes = guidelines.read_text(encoding="utf-8") if guidelines else ""
        spec = service.CampaignSpec(name, task, notes, k, render, settings)
        with _sessions(db)() as session:
            service.create_campaign(session, spec, items)
            session.commit()
    except Exception as error:
        message = getattr(error, "message", error)
        fail(ValueError(f"{source}: {message}") if isinstance(error, ValueError) else error)
    what = rich.markup.escape(f"{task} campaign {name!r}")
    console.print(f"[green]created[/] {what}: {len(items)} items")


@app.command("export")
def feedback_export(
    campaign: Annotated[str, typer.Argument(help="Campaign name or id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSON Lines file to write.")],
    db: DbOption = "feedback.db",
    format: Annotated[
        str | None,
        typer.Option(
            help="Record kind; default by task: preference, ranking, rating, binary, "
            "completion (edit), preference (chat), steps (steps)."
        ),
    ] = None,
) -> None:
    """Export a campaign's labels as data records that rm, dpo, kto, sft and prm read."""
    import json

    from rlhf.feedback import service

    try:
        with _sessions(db)() as session:
            rows = list(service.export_rows(session, _campaign(session, campaign, db), format))
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
    except Exception as error:
        fail(getattr(error, "message", error))
    console.print(
        f"[green]done[/]: {len(rows)} records → [bold]{rich.markup.escape(str(output))}[/]"
    )


@app.command("ratings")
def feedback_ratings(
    campaigns: Annotated[
        list[str], typer.Argument(help="Campaign names or ids whose responses name their models.")
    ],
    db: DbOption = "feedback.db",
    anchor: Annotated[
        str | None, typer.Option(help="The model rated 0 (Elo 1000); default: the mean.")
    ] = None,
) -> None:
    """Win rates and Bradley-Terry / Elo ratings of the models whose replies people compared
    (campaign rows with `models`, one name per response; docs/feedback.md)."""
    from rich.table import Table

    from rlhf.eval.ratings import bradley_terry, comparisons_from_rows, win_rates
    from rlhf.feedback import service

    try:
        rows: list[dict] = []
        with _sessions(db)() as session:
            chosen: set[int] = set()
            for name in campaigns:
                found = _campaign(session, name, db)
                if found.id in chosen:
                    raise ValueError(f"campaign {name!r} is named twice: its labels count once")
                chosen.add(found.id)
                if found.task_type not in ("pairwise", "rank"):
                    raise ValueError(f"{name}: a {found.task_type} campaign compares no models")
                fmt = "ranking" if found.task_type == "rank" else None
                rows += service.export_rows(session, found, fmt)
        comparisons = comparisons_from_rows(rows)
        if not comparisons:
            raise ValueError(
                "no labelled comparison between two different models: the campaigns' rows "
                "need `models`, one name per response (docs/feedback.md)"
            )
        fitted = bradley_terry(comparisons, anchor=anchor)
        table = win_rates(comparisons)
    except Exception as error:
        fail(getattr(error, "message", error))
    ratings = Table(title=f"Bradley-Terry ratings from {len(comparisons)} comparisons")
    for column in ("model", "Elo", "± se", "games", "score"):
        ratings.add_column(column, justify="left" if column == "model" else "right")
    order = sorted(fitted.models, key=lambda m: -fitted[m].elo)  # strongest first
    for model in order:
        rating = fitted[model]
        ratings.add_row(
            model, f"{rating.elo:.0f}", f"{rating.elo_se:.0f}", f"{rating.games:g}",
            f"{rating.score:g}",
        )  # fmt: skip
    console.print(ratings)
    pairs = Table(title="win rates (row model against column model)")
    pairs.add_column("model")
    for model in order:
        pairs.add_column(model, justify="right")
    for a in order:
        cells = []
        for b in order:
            rate = table.get((a, b))
            cells.append("" if rate is None else f"{rate.rate:.2f} ± {rate.se:.2f}")
        pairs.add_row(a, *cells)
    console.print(pairs)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@app.command("bots")
def feedback_bots(
    url: Annotated[str, typer.Option(help="The app's address, e.g. http://127.0.0.1:8000.")],
    campaign: Annotated[str, typer.Option(help="Campaign name or id.")],
    bots: Annotated[
        int | None,
        typer.Option(
            "--bots", min=1, help="How many bots label at once (default: one per --token, or 1)."
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            envvar="RLHF_ADMIN_TOKEN",
            help="An admin's token: makes the accounts PREFIX-1..N, or gives those that exist "
            "a new token (their old one stops working).",
        ),
    ] = None,
    token: Annotated[
        list[str] | None,
        typer.Option(
            "--token",
            envvar="RLHF_BOT_TOKENS",
            help="Instead of --admin-token: an annotator account's token, one per bot (repeat "
            "it; an admin made the accounts, e.g. with `rlhf feedback add-user bot-1`).",
        ),
    ] = None,
    prefix: Annotated[str, typer.Option(help="With --admin-token: the accounts' name.")] = "bot",
    labels: Annotated[
        int | None,
        typer.Option(min=1, help="Most labels per bot (default: until nothing is left)."),
    ] = None,
    speed: Annotated[float, typer.Option(min=0, help="Seconds per label, on average.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the simulated annotators.")] = 0,
    noise: Annotated[
        float,
        typer.Option(
            min=0, help="Label noise τ in gold units (the Bradley-Terry temperature; 0: none)."
        ),
    ] = 0.1,
    careless: Annotated[
        float, typer.Option(min=0, max=1, help="Share of labels given at random.")
    ] = 0.0,
    length_bias: Annotated[
        float, typer.Option(help="Utility added per content sentence (> 0: likes long answers).")
    ] = 0.0,
    position_bias: Annotated[
        float, typer.Option(help="Lean towards the response shown first in a pair, gold units.")
    ] = 0.0,
    nontransitive: Annotated[
        float, typer.Option(min=0, help="Strength of the world's cyclic taste in pairs (0: none).")
    ] = 0.0,
    retries: Annotated[
        int, typer.Option(min=0, help="Tries again after a lost connection, a 409 or a 503.")
    ] = 3,
) -> None:
    """Simulated annotators label a campaign through the app's API, beside people.

    Each bot logs in as an annotator account, asks for items, decides as the embedded world's
    simulated annotator (rlhf.sim.annotators) and submits: pairwise, rank, rate, thumbs and
    step-world steps items; others are skipped with a reason. Ctrl-C stops them.
    """
    from rlhf.sim.annotators import SimulatedAnnotator
    from rlhf.sim.bots import SKIPPED_TASKS, AnnotatorBot, BotError, bot_accounts, run_bots

    made: list[AnnotatorBot] = []
    try:
        if admin_token and token:
            raise ValueError("--admin-token makes the bots' accounts, --token names them: not both")
        if token:
            if bots is not None and bots != len(token):
                raise ValueError(f"--bots {bots} but {len(token)} --token: one token per bot")
            accounts: list[tuple[str | None, str]] = [(None, t) for t in token]
        elif admin_token:
            accounts = list(bot_accounts(url, admin_token, bots or 1, prefix, retries=retries))
        else:
            raise ValueError(
                "the bots need accounts: --admin-token TOKEN (an admin's; makes "
                f"{prefix}-1..N) or one --token per bot (accounts an admin made)"
            )
        for index, (name, secret) in enumerate(accounts, start=1):
            annotator = SimulatedAnnotator(
                noise, length_bias=length_bias, careless=careless, seed=f"{seed}-bot-{index}",
                nontransitive=nontransitive, position_bias=position_bias,
            )  # fmt: skip
            made.append(
                AnnotatorBot(
                    name, secret, annotator, url, speed=speed, seed=f"{seed}-{index}",
                    retries=retries,
                )
            )  # fmt: skip
        found = made[0].find_campaign(campaign)
        if found.task_type in SKIPPED_TASKS:
            raise ValueError(
                f"{found.task_type} campaign {found.name!r}: a bot writes no text, it would "
                "skip every item"
            )
        what = rich.markup.escape(f"{found.task_type} campaign {found.name!r} at {url}")
        console.print(
            f"{_count(len(made), 'bot')} labelling the {what}; Ctrl-C stops them", soft_wrap=True
        )
        reports = run_bots(made, found.id, labels)
    except (BotError, ValueError) as error:
        fail(error)
    finally:
        for bot in made:
            bot.close()
    failed = False
    for report in reports:
        tasks = ", ".join(f"{task} {n}" for task, n in sorted(report.labelled.items()))
        line = f"{report.bot}: {_count(report.labels, 'label')}" + (f" ({tasks})" if tasks else "")
        line += f", {report.skipped} skipped"
        if report.duplicates:
            line += f", {_count(report.duplicates, 'retried label')} answered from the stored copy"
        line += f"; stopped: {report.stopped}"
        console.print(rich.markup.escape(line), soft_wrap=True, highlight=False)
        for error in report.errors:
            failed = True
            console.print(f"  [red]error:[/] {rich.markup.escape(error)}", soft_wrap=True)
    total = sum(report.labels for report in reports)
    done = f"{_count(total, 'label')} by {_count(len(reports), 'bot')}"
    console.print(f"[green]done[/]: {done}", soft_wrap=True)
    if failed:
        raise typer.Exit(code=1)
