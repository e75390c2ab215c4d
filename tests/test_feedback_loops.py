"""The feedback app's side of ``rlhf loop``: the loops and their rounds on the admin API,
an admin starting a waiting round, and the schema migration that adds their tables."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, text

from rlhf.feedback.db import Base, Loop, LoopRound, database_url, make_engine, migrate
from rlhf.feedback.service.loops import create_loop, open_round, set_round
from tests.test_feedback_api import Api, serve


def seed_loop(api: Api) -> int:
    """A loop with round 1 done (its summary) and round 2 waiting for an admin."""
    state = api.app.state.feedback

    def work(session):  # type: ignore[no-untyped-def]
        loop = create_loop(session, "demo", "/runs/demo", {"selection": "uncertainty"})
        set_round(open_round(session, loop, 1, "sampling"), "done", summary={"gold": 0.5})
        open_round(session, loop, 2, "waiting")
        return loop.id

    return state.transaction(work)


def test_admins_see_loops_and_start_the_waiting_round(tmp_path: Path) -> None:
    with serve(str(tmp_path / "fb.db")) as api:
        assert api.call("GET", "/api/admin/loops", api.admin, 200).json() == []
        loop_id = seed_loop(api)
        [loop] = api.call("GET", "/api/admin/loops", api.admin, 200).json()
        assert (loop["id"], loop["name"], loop["settings"]) == (
            loop_id, "demo", {"selection": "uncertainty"},
        )  # fmt: skip
        assert [(r["number"], r["status"], r["labels"], r["summary"]) for r in loop["rounds"]] == [
            (1, "done", 0, {"gold": 0.5}), (2, "waiting", 0, {}),
        ]  # fmt: skip
        annotator = api.annotator("ann")
        api.call("GET", "/api/admin/loops", annotator, 403)
        api.call("POST", f"/api/admin/loops/{loop_id}/start", annotator, 403)
        api.call("POST", "/api/admin/loops/99/start", api.admin, 404)
        started = api.call("POST", f"/api/admin/loops/{loop_id}/start", api.admin, 200).json()
        assert started == {"loop_id": loop_id, "number": 2, "status": "sampling"}
        refused = api.call("POST", f"/api/admin/loops/{loop_id}/start", api.admin, 409).json()
        assert refused["detail"] == "no round of this loop is waiting to be started"


def test_a_version_1_database_gains_the_loop_tables(tmp_path: Path) -> None:
    engine = make_engine(database_url(str(tmp_path / "old.db")))
    try:
        old_tables = [t for name, t in Base.metadata.tables.items() if not name.startswith("loop")]
        with engine.begin() as connection:  # the schema as version 1 made it
            Base.metadata.create_all(connection, tables=old_tables)
            connection.execute(text("INSERT INTO schema_version (version) VALUES (1)"))
            connection.execute(text(
                "INSERT INTO campaigns (name, task_type, guidelines, k, render, status, settings,"
                " created_at) VALUES ('kept', 'pairwise', '', 1, 'text', 'active', '{}', "
                "'2026-01-01 00:00:00')"
            ))  # fmt: skip
        assert migrate(engine) == 1
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            assert {Loop.__tablename__, LoopRound.__tablename__} <= tables
            assert connection.execute(text("SELECT name FROM campaigns")).scalar() == "kept"
            assert connection.execute(text("SELECT version FROM schema_version")).scalar() == 2
    finally:
        engine.dispose()


def test_the_loops_bots_never_take_over_an_admins_or_a_deactivated_account(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    import pytest
    from sqlalchemy import select

    from rlhf.config import ConfigError, load_config, preset_path, read_yaml
    from rlhf.feedback.db import User
    from rlhf.feedback.service import create_user
    from rlhf.recipes.loop import LoopConfig, bot_annotators

    config = load_config(
        LoopConfig, None, [f"out={tmp_path / 'demo'}", "bots.count=2"],
        base=read_yaml(preset_path("loop", "tiny")),
    )  # fmt: skip
    with serve(str(tmp_path / "fb.db")) as api:
        state = api.app.state.feedback
        served = SimpleNamespace(state=state, url="http://127.0.0.1:9")  # no request is made

        def accounts(session):  # type: ignore[no-untyped-def]
            users = session.scalars(select(User).where(User.name.like("demo-bot-%")))
            return {user.name: (user.role, user.active) for user in users}

        # made where missing, taken again (a new token) by a resumed loop
        first = [bot.name for bot in bot_annotators(config, served, "demo")]
        assert first == ["demo-bot-1", "demo-bot-2"]
        assert [bot.name for bot in bot_annotators(config, served, "demo")] == first
        assert state.transaction(accounts) == {
            "demo-bot-1": ("annotator", True), "demo-bot-2": ("annotator", True),
        }  # fmt: skip
        state.transaction(lambda session: create_user(session, "other-bot-2", "admin"))
        with pytest.raises(ConfigError, match=r"'other-bot-2' is an admin's.*loop_name"):
            bot_annotators(config, served, "other")

        def deactivate(session):  # type: ignore[no-untyped-def]
            session.scalar(select(User).where(User.name == "demo-bot-2")).active = False

        state.transaction(deactivate)
        with pytest.raises(ConfigError, match=r"'demo-bot-2' is deactivated.*bots\.count"):
            bot_annotators(config, served, "demo")
        assert state.transaction(accounts)["demo-bot-2"] == ("annotator", False)
