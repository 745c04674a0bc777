"""The ops console: server-rendered pages and noted actions, mounted by the web process at /ops.

Only when OPS_USERS is set (receiver/app.py). Its middleware (the session cookie, the login
guard, the security headers) wraps this app alone: the webhook route never passes through it.
Pages read Postgres through a small pool of their own, in threads, in read-only transactions.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import jinja2
import psycopg
from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from console import actions, auth, views
from veza_worker import db, errors
from veza_worker.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "veza_ops"
SESSION_MAX_AGE = 8 * 3600  # a working day; then log in again
PUBLIC = frozenset({"/login", "/console.css"})  # what answers without a session
# No script at all, styles and forms from this origin only, never framed.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; img-src 'self'; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
]


@dataclass
class Console:
    """What every request of the console reaches: settings, users, the pool, the templates."""

    settings: Settings
    users: auth.Users
    pool: ConnectionPool[db.Connection]
    templates: Jinja2Templates

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(conn, *args)` in a thread, on a pooled connection, in one read-only transaction."""
        return await anyio.to_thread.run_sync(functools.partial(self._read, fn, *args))

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        with self.pool.connection() as conn:
            conn.read_only = True  # BEGIN READ ONLY: a page cannot write, whatever it calls
            try:
                with conn.transaction():
                    return fn(conn, *args)
            finally:
                conn.read_only = False

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(conn, *args)` in a thread; `fn` owns its transactions."""
        return await anyio.to_thread.run_sync(functools.partial(self._write, fn, *args))

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        with self.pool.connection() as conn:
            return fn(conn, *args)


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


# -- rendering ----------------------------------------------------------------------------------------


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    console = console_of(request)
    session = request.scope.get("session", {})
    context = {
        "request": request,
        "base": request.scope.get("root_path", ""),
        "user": session.get("user"),
        "csrf_token": session.get("csrf", ""),
        "now": datetime.now(UTC),
        **context,
    }
    return console.templates.TemplateResponse(request, template, context, status_code=status_code)


def not_found(request: Request, what: str) -> Response:
    return render(request, "message.html", 404, title="Not found", message=f"{what} not found.")


def redirect(request: Request, path: str) -> Response:
    return RedirectResponse(request.scope.get("root_path", "") + path, status_code=303)


def back(request: Request, fallback: str) -> Response:
    """303 to the console page the form was posted from (its `next` field), else `fallback`."""
    target = str(request.scope.get("console.form_next") or "")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = fallback  # only a path inside the console: never an open redirect
    return redirect(request, target)


def _template_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value, payloads included, is escaped unless a template says otherwise
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["money"] = views.money
    env.filters["when"] = when
    env.filters["ago"] = ago
    env.filters["countdown"] = countdown
    return env


def when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(delta: timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


def ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    delta = datetime.now(UTC) - value
    return f"in {_span(delta)}" if delta.total_seconds() < 0 else f"{_span(delta)} ago"


def countdown(deadline: datetime | None) -> str:
    """What is left before a deadline, or how long ago it passed."""
    if deadline is None:
        return "no deadline"
    left = deadline - datetime.now(UTC)
    return f"{_span(left)} left" if left.total_seconds() >= 0 else f"overdue by {_span(left)}"


# -- login ----------------------------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    request.session.setdefault("csrf", auth.new_csrf_token())
    if request.session.get("user") in console_of(request).users:
        return redirect(request, "/")
    return render(request, "login.html", error=None)


async def login(request: Request) -> Response:
    console = console_of(request)
    form = await checked_form(request)
    name, password = str(form.get("username", "")), str(form.get("password", ""))
    address = request.client.host if request.client else None
    if await console.write(auth.locked_until, name, address) is not None:
        return render(request, "login.html", 429, error="Too many failed logins: try again in 15 minutes.")
    if name and password and await console.users.verify(name, password):
        await console.write(auth.clear_failures, name, address)
        request.session.clear()  # a new session: nothing from before the login carries over
        request.session.update({"user": name, "csrf": auth.new_csrf_token()})
        log.info("console login: %s from %s", name, address)
        return redirect(request, "/")
    locked = await console.write(auth.record_failure, name, address)
    log.warning(
        "console login failed for %r from %s%s", name[:64], address, " (now locked)" if locked else ""
    )
    await anyio.sleep(auth.FAILURE_DELAY_SECONDS)
    return render(request, "login.html", 401, error="Wrong username or password.")


async def logout(request: Request) -> Response:
    await checked_form(request)
    request.session.clear()
    return redirect(request, "/login")


class CsrfRejected(Exception):
    """A POST without the session's CSRF token."""


async def checked_form(request: Request) -> FormData:
    """The posted form, once its csrf_token matches the session's (403 otherwise)."""
    form = await request.form(max_files=0, max_fields=20)
    if not auth.csrf_matches(request.session, form.get("csrf_token")):
        raise CsrfRejected
    request.scope["console.form_next"] = form.get("next")
    return form


async def csrf_rejected(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("missing or wrong CSRF token: reload the page and try again", status_code=403)


async def too_slow(request: Request, exc: Exception) -> Response:
    """A page query past the statement timeout: a missing index or an unbounded query, not an outage."""
    log.error("console: %s took longer than the statement timeout", request.url.path)
    return PlainTextResponse("this page took too long to read", status_code=500)


async def database_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("console: database unavailable: %s", type(exc).__name__)
    return PlainTextResponse("database unavailable", status_code=503)


# -- pages ----------------------------------------------------------------------------------------------


async def overview(request: Request) -> Response:
    console = console_of(request)
    page = await console.read(views.overview, console.settings)
    return render(request, "overview.html", **page)


async def inbox(request: Request) -> Response:
    page = await console_of(request).read(views.inbox, request.query_params.get("kind", ""))
    return render(request, "inbox.html", **page)


def object_page(param: str, view: Callable[..., dict[str, Any] | None], template: str, what: str) -> Any:
    """The page of one object named by a uuid in the path: its view's reading, or 404."""

    async def page(request: Request) -> Response:
        object_id = _uuid_param(request, param)
        found = await console_of(request).read(view, object_id) if object_id else None
        return render(request, template, **found) if found else not_found(request, what)

    return page


order = object_page("order_id", views.order, "order.html", "Order")
subscription = object_page("subscription_id", views.subscription, "subscription.html", "Subscription")
seller = object_page("seller_id", views.seller, "seller.html", "Seller")
user = object_page("user_id", views.user, "user.html", "User")
payout = object_page("payout_id", views.payout, "payout.html", "Payout")


async def payouts(request: Request) -> Response:
    page = await console_of(request).read(views.payout_list, request.query_params.get("status", ""))
    return render(request, "payouts.html", **page)


async def disputes(request: Request) -> Response:
    return render(request, "disputes.html", **await console_of(request).read(views.disputes))


async def delivery(request: Request) -> Response:
    log_id = int(request.path_params["log_id"])
    console = console_of(request)
    found = await console.read(views.delivery, log_id)
    if found is None:
        return not_found(request, "Delivery")
    history = await console.read(actions.actions_on, "delivery", str(log_id))
    return render(request, "delivery.html", delivery=found, history=history)


PAGES = {
    "order": "/orders/",
    "subscription": "/subscriptions/",
    "seller": "/sellers/",
    "user": "/users/",
    "delivery": "/deliveries/",
    "dispute": "/disputes#",
    "payout": "/payouts/",
}


async def search(request: Request) -> Response:
    query = request.query_params.get("q", "").strip()
    found = await console_of(request).read(views.find, query) if query else []
    if len(found) == 1:
        kind, target = found[0]
        return redirect(request, PAGES[kind] + target)
    status = 200 if found or not query else 404
    return render(request, "search.html", status, q=query, found=found, pages=PAGES)


def _uuid_param(request: Request, name: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(request.path_params[name])
    except ValueError:
        return None


async def stylesheet(request: Request) -> Response:
    return Response((HERE / "static" / "console.css").read_bytes(), media_type="text/css")


# -- actions --------------------------------------------------------------------------------------------


async def resolve(request: Request) -> Response:
    discrepancy_id = int(request.path_params["discrepancy_id"])
    return await _act(request, "/inbox", actions.resolve_discrepancy, discrepancy_id)


async def replay(request: Request) -> Response:
    from veza_worker import actors  # the broker: imported by the web process already (receiver)

    log_id = int(request.path_params["log_id"])
    return await _act(
        request,
        f"/deliveries/{log_id}",
        actions.replay_delivery,
        log_id,
        extra=(actors.process_webhook.send,),
    )


async def hold(request: Request) -> Response:
    return await _act_on_seller(request, actions.hold_payouts)


async def release(request: Request) -> Response:
    return await _act_on_seller(request, actions.release_payouts)


async def _act_on_seller(request: Request, action: Callable[..., Any]) -> Response:
    seller_id = _uuid_param(request, "seller_id")
    if seller_id is None:
        return not_found(request, "Seller")
    return await _act(request, f"/sellers/{seller_id}", action, seller_id)


async def retry(request: Request) -> Response:
    from veza_worker import actors  # the broker: imported by the web process already (receiver)

    refund_id = _uuid_param(request, "refund_id")
    if refund_id is None:
        return not_found(request, "Refund")
    return await _act(
        request, "/inbox", actions.retry_refund, refund_id, extra=(actors.send_automatic_refund,)
    )


async def _act(
    request: Request, fallback: str, action: Callable[..., Any], object_id: Any, extra: tuple[Any, ...] = ()
) -> Response:
    """Run an action with the user's note; 303 back to the page it came from, or the error."""
    form = await checked_form(request)
    user_name = str(request.session["user"])
    try:
        await console_of(request).write(action, user_name, object_id, str(form.get("note", "")), *extra)
    except errors.NotFound as exc:
        return render(request, "message.html", 404, title="Not found", message=str(exc))
    except errors.DomainError as exc:
        return render(request, "message.html", 400, title="Not done", message=str(exc), back=fallback)
    return back(request, fallback)


# -- the app --------------------------------------------------------------------------------------------


class Guard:
    """Every console path but the login form needs a logged-in user: a page redirects to the login
    form, a POST is refused (it cannot carry the session's CSRF token). Adds the security headers."""

    def __init__(self, app: ASGIApp, users: auth.Users) -> None:
        self.app = app
        self.users = users

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "")
        path = scope["path"][len(root) :] if scope["path"].startswith(root) else scope["path"]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        if path in PUBLIC or scope["session"].get("user") in self.users:
            await self.app(scope, receive, with_headers)
            return
        if scope["method"] in ("GET", "HEAD"):
            response: Response = RedirectResponse(f"{root}/login", status_code=303)
        else:
            response = PlainTextResponse("not logged in: log in again", status_code=403)
        await response(scope, receive, with_headers)


def create_app(settings: Settings, pool: ConnectionPool[db.Connection]) -> Starlette:
    """The console over an open pool; OPS_USERS and OPS_SECRET_KEY checked."""
    settings.check_ops()
    if not settings.ops_users or settings.ops_secret_key is None:
        raise errors.ConfigError("OPS_USERS is required by the console")
    users = auth.Users(settings.ops_users)
    routes = [
        Route("/", overview),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/inbox", inbox),
        Route("/orders/{order_id}", order),
        Route("/subscriptions/{subscription_id}", subscription),
        Route("/sellers/{seller_id}", seller),
        Route("/users/{user_id}", user),
        Route("/disputes", disputes),
        Route("/payouts", payouts),
        Route("/payouts/{payout_id}", payout),
        Route("/deliveries/{log_id:int}", delivery),
        Route("/search", search),
        Route("/console.css", stylesheet),
        Route("/discrepancies/{discrepancy_id:int}/resolve", resolve, methods=["POST"]),
        Route("/deliveries/{log_id:int}/replay", replay, methods=["POST"]),
        Route("/sellers/{seller_id}/hold", hold, methods=["POST"]),
        Route("/sellers/{seller_id}/release", release, methods=["POST"]),
        Route("/refunds/{refund_id}/retry", retry, methods=["POST"]),
    ]
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=settings.ops_secret_key,
            session_cookie=SESSION_COOKIE,
            max_age=SESSION_MAX_AGE,
            path="/ops",
            same_site="strict",
            https_only=True,
        ),
        Middleware(Guard, users=users),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            CsrfRejected: csrf_rejected,
            psycopg.errors.QueryCanceled: too_slow,
            psycopg.OperationalError: database_unavailable,  # PoolTimeout too
        },
    )
    templates = Jinja2Templates(env=_template_env())
    app.state.console = Console(settings, users, pool, templates)
    return app


@contextlib.asynccontextmanager
async def mounted(settings: Settings) -> AsyncIterator[Mount]:
    """The console mounted at /ops, with its pool open while the web process runs."""
    pool: ConnectionPool[db.Connection] = ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=4,
        timeout=5,
        # A page is a few index probes: one that takes seconds is a bug, not a reason to wait.
        kwargs={
            "connect_timeout": 5,
            "prepare_threshold": db.NEVER_PREPARE,
            "options": "-c statement_timeout=5s -c lock_timeout=5s",
        },
        open=False,
    )
    app = create_app(settings, pool)  # raises before anything opens when the settings are wrong
    pool.open(wait=False)  # the web process starts while Postgres is down, like the receiver's pool
    try:
        yield Mount("/ops", app=app)
    finally:
        await anyio.to_thread.run_sync(pool.close)
