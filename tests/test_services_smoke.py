"""Quick checks that the test services (tests/services.py) work: PostgreSQL and Chromium."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = b"""<!doctype html>
<html><body>
<p id="out">before</p>
<button id="go" onclick="document.getElementById('out').textContent = 'after'">Go</button>
</body></html>
"""


def test_postgres_fresh_database(fresh_postgres_url):
    from sqlalchemy import create_engine, text

    engine = create_engine(fresh_postgres_url)
    try:
        with engine.begin() as conn:
            assert conn.execute(text("select 1")).scalar_one() == 1
            conn.execute(text("create table items (id serial primary key, name text not null)"))
            conn.execute(text("insert into items (name) values ('a'), ('b')"))
            assert conn.execute(text("select count(*) from items")).scalar_one() == 2
    finally:
        engine.dispose()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):  # keep the test output quiet
        pass


def test_browser_clicks_button(browser):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    page = browser.new_page()
    try:
        page.goto(f"http://127.0.0.1:{server.server_port}/")
        assert page.text_content("#out") == "before"
        page.click("#go")
        assert page.text_content("#out") == "after"
    finally:
        page.close()
        server.shutdown()
        server.server_close()
