"""The dashboard's web app (Flask, Jinja2 templates with autoescaping, a few lines of vanilla JS).

Pages read the index (``index.py``); a job's page and its downloads read the store. Actions are
POSTs that carry a CSRF token (a cookie the form repeats) and are logged. Bound beyond loopback the
app requires a secret: HTTP basic auth (any user name) or ``Authorization: Bearer``, or
``?token=`` once (it is then kept in an HttpOnly cookie).
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from flask import (
    Flask,
    Response,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from werkzeug.wrappers.response import Response as BaseResponse

from .. import keys
from ..envelope import DeadLetter
from ..errors import NotFound, NotRetryable, RemoteJobError
from ..queue import Queue
from ..status import DONE, STATES
from . import chart
from .index import PAGE_SIZE, Index, JobFilter

logger = logging.getLogger("remotejob.ui")

CSRF_COOKIE = "remotejob_csrf"
TOKEN_COOKIE = "remotejob_token"  # noqa: S105 - a cookie name, not a secret
DEAD_CACHE_S = 15.0
"""How long a listing of the dead-letter queue is shown before it is listed again."""
DEAD_LIMIT = 200


class _DeadLetters:
    """The dead-letter queue's listing, kept for a few seconds: a listing holds the letters
    invisible while it runs, so page views must not list it again and again."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._lock = threading.Lock()
        self._at = 0.0
        self._letters: list[DeadLetter] = []

    def get(self, fresh: bool = False) -> list[DeadLetter]:
        with self._lock:
            if fresh or time.monotonic() - self._at > DEAD_CACHE_S:
                self._letters = self.queue.dead_letters(DEAD_LIMIT)
                self._at = time.monotonic()
            return list(self._letters)


def when(ts: float | None) -> str:
    """A time as pages show it: UTC, to the second."""
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(seconds: float | None) -> str:
    """A duration as pages show it: ``4s``, ``3m 20s``, ``2h 5m``."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    return f"{s // 3600}h {s % 3600 // 60}m"


def _parse_time(text: str | None) -> float | None:
    """A ``datetime-local`` field's value (UTC), or None when empty.

    Raises:
        ValueError: not a date and time.
    """
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is not a date and time: use YYYY-MM-DDTHH:MM (UTC)") from None


def create_app(queue: Queue, index: Index, *, read_only: bool = False, secret: str | None = None) -> Flask:
    """The dashboard of ``queue``'s job system, reading ``index``.

    Args:
        read_only: Hide every action and refuse every POST.
        secret: The token or password every request must carry (None: no authentication, for
            loopback only).
    """
    app = Flask(__name__)
    app.secret_key = secrets.token_bytes(32)  # signs the flash-message cookie, per process
    app.config.update(SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_HTTPONLY=True)
    ctx = queue.context
    dead = _DeadLetters(queue)
    app.jinja_env.globals.update(when=when, ago=ago, read_only=read_only, statuses=ctx.statuses,
                                 states=STATES, name=ctx.name, index=index,
                                 now_ts=time.time)

    @app.before_request
    def authenticate() -> BaseResponse | None:
        if request.endpoint == "static" and secret is None:
            return None
        if secret is not None:
            given = _credential(request.authorization, request.cookies.get(TOKEN_COOKIE),
                                request.args.get("token"))
            if given is None or not hmac.compare_digest(given.encode(), secret.encode()):
                response = Response("authentication required: give the ui's token or password\n", 401,
                                    mimetype="text/plain")
                response.headers["WWW-Authenticate"] = 'Basic realm="remotejob"'
                return response
            g.set_token = request.args.get("token") is not None
        g.csrf = request.cookies.get(CSRF_COOKIE) or ""
        g.new_csrf = not g.csrf
        if g.new_csrf:
            g.csrf = secrets.token_urlsafe(32)
        if request.method == "POST":
            if read_only:
                abort(403, "the ui runs read-only")
            form_token = request.form.get("csrf", "")
            if g.new_csrf or not hmac.compare_digest(form_token.encode(), g.csrf.encode()):
                abort(403, "missing or wrong CSRF token: reload the page and try again")
            origin = request.headers.get("Origin")
            if origin is not None and origin.rstrip("/") != request.host_url.rstrip("/"):
                abort(403, f"cross-origin request from {origin} refused")
        else:
            index.viewed()
        return None

    @app.after_request
    def cookies(response: Response) -> Response:
        if getattr(g, "new_csrf", False):
            response.set_cookie(CSRF_COOKIE, g.csrf, httponly=True, samesite="Strict")
        if getattr(g, "set_token", False) and secret is not None:
            response.set_cookie(TOKEN_COOKIE, secret, httponly=True, samesite="Strict")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        # not "no-referrer": Chromium would then send "Origin: null" with the forms' POSTs
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'")
        return response

    # -- pages ------------------------------------------------------------------------------------

    @app.get("/")
    def overview() -> str:
        now = time.time()
        oldest = index.oldest_waiting()
        rows = []
        for status in ctx.statuses:
            depth = index.depths.get(status)
            age = None
            if depth is None or depth.waiting or depth.delayed:
                age = getattr(depth, "oldest_age_s", None)
                if age is None and status in oldest:
                    age = now - oldest[status]  # SQS does not say: the longest-waiting job's age
            rows.append({"status": status, "queue": keys.queue_name(ctx.name, status), "depth": depth,
                         "oldest": age})
        dead_depth = index.depths.get(keys.DEAD)
        finished = index.finished_since(now - 3600)
        recent = [f for f in finished if f[0] >= now - 300]
        rates = {state: sum(1 for f in recent if f[1] == state) / 5 for state in DONE}
        svg = chart.render(finished, now)
        return render_template("overview.html", rows=rows, dead_depth=dead_depth, rates=rates, svg=svg,
                               total=index.count(), counts=index.counts())

    @app.get("/jobs")
    def jobs() -> str:
        error = None
        try:
            flt = _filter(request.args, ctx.statuses)
        except ValueError as exc:
            flt, error = JobFilter(), str(exc)
        before = _cursor(request.args.get("before"))
        rows = index.jobs(flt, before, PAGE_SIZE + 1)
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        next_url = None
        args = {k: v for k, v in request.args.items() if k != "before"}
        newest_url = url_for("jobs", **args)  # type: ignore[arg-type]
        if more:
            args["before"] = f"{rows[-1].created!r}:{rows[-1].id}"
            next_url = url_for("jobs", **args)  # type: ignore[arg-type]
        return render_template("jobs.html", rows=rows, next_url=next_url, args=request.args, error=error,
                               first_page=before is None, newest_url=newest_url)

    @app.get("/jobs/<path:job_id>")
    def job(job_id: str) -> tuple[str, int] | str:
        try:
            st = queue.status(job_id)
        except NotFound:
            return render_template("missing.html", job_id=job_id), 404
        except (RemoteJobError, ValueError) as exc:
            return render_template("missing.html", job_id=job_id, error=str(exc)), 404
        index.note(st)
        stages = _stages(queue, job_id)
        input_size = getattr(st, "input_size", None)
        if input_size is None:
            try:
                input_size = ctx.store.head(keys.input_key(job_id)).size
            except (NotFound, RemoteJobError, ValueError):
                input_size = None
        return render_template("job.html", st=st, stages=stages, input_size=input_size,
                               traceback=getattr(st, "traceback", None), meta=getattr(st, "meta", {}) or {},
                               done=st.done, now=time.time())

    @app.get("/download")
    def download() -> Response:
        job_id, asset = request.args.get("job", ""), request.args.get("asset", "")
        try:
            st = queue.status(job_id)
            out = st.assets[asset]
            obj = queue.output(job_id, asset, out.sha256)
        except (NotFound, KeyError):
            abort(404, f"job {job_id!r} has no output {asset!r}")
        except (RemoteJobError, ValueError) as exc:
            abort(404, str(exc))

        def body() -> Iterator[bytes]:
            with obj:
                stream = obj.open()
                while chunk := stream.read(1 << 20):
                    yield chunk

        filename = asset.rsplit("/", 1)[-1] or "output"
        response = Response(stream_with_context(body()), mimetype=out.content_type)
        response.headers["Content-Length"] = str(out.size)
        response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(filename, safe='')}"
        return response

    @app.get("/dead")
    def dead_letters() -> str:
        letters = dead.get(fresh=request.args.get("fresh") == "1")
        return render_template("dead.html", letters=letters, limit=DEAD_LIMIT)

    @app.get("/workers")
    def workers() -> str:
        now = time.time()
        rows = index.workers(now - 3600)
        return render_template("workers.html", rows=rows, now=now)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.get("/metrics")
    def metrics() -> Response:
        from .metrics import exposition  # prometheus_client: imported when scraped

        body, content_type = exposition(index)
        return Response(body, content_type=content_type)

    # -- actions ----------------------------------------------------------------------------------

    @app.post("/actions/cancel")
    def cancel() -> BaseResponse:
        job_id = request.form.get("job", "")
        try:
            st = queue.cancel(job_id, reason=f"cancelled in the dashboard by {request.remote_addr}")
        except (RemoteJobError, ValueError) as exc:
            return _done("cancel", job_id, f"could not cancel job {job_id}: {exc}", error=True)
        index.note(st)
        if st.state == "cancelled":
            return _done("cancel", job_id, f"job {job_id} cancelled")
        return _done("cancel", job_id, f"job {job_id} had finished first: {st.state}", error=True)

    @app.post("/actions/retry")
    def retry() -> BaseResponse:
        job_id = request.form.get("job", "")
        try:
            st = queue.retry(job_id)
        except NotRetryable as exc:
            return _done("retry", job_id, f"job {job_id} cannot be retried: {exc}", error=True)
        except (RemoteJobError, ValueError) as exc:
            return _done("retry", job_id, f"could not retry job {job_id}: {exc}", error=True)
        index.note(st)
        return _done("retry", job_id, f"job {job_id} sent again (run {st.run}): {st.state}")

    @app.post("/actions/redrive")
    def redrive() -> BaseResponse:
        job_id = request.form.get("job") or None
        try:
            n = queue.redrive(jobs=None if job_id is None else [job_id])
        except (RemoteJobError, ValueError) as exc:
            return _done("redrive", job_id or "*", f"could not redrive: {exc}", error=True,
                         page="dead_letters")
        dead.get(fresh=True)
        if job_id is not None:
            index.refresh_jobs([job_id])
            text = f"job {job_id} sent back to its queue" if n else f"job {job_id} was not redriven"
        else:
            text = f"{n} dead-lettered job{'s' if n != 1 else ''} sent back to their queues"
        return _done("redrive", job_id or "*", text, error=job_id is not None and not n, page="dead_letters")

    @app.post("/actions/purge")
    def purge() -> BaseResponse:
        status = request.form.get("status", "")
        if status not in (*ctx.statuses, keys.DEAD):
            return _done("purge", status, f"no status queue {status!r}", error=True, page="overview")
        if request.form.get("confirm", "") != status:
            return _done("purge", status, f"not purged: type {status!r} in the box to confirm",
                         error=True, page="overview")
        try:
            queue.purge(status)
        except (RemoteJobError, ValueError) as exc:
            return _done("purge", status, f"could not purge {status}: {exc}", error=True, page="overview")
        return _done("purge", status, f"queue {keys.queue_name(ctx.name, status)} purged", page="overview")

    def _done(action: str, target: str, text: str, *, error: bool = False,
              page: str | None = None) -> BaseResponse:
        logger.warning("ui action %s %s from %s: %s", action, target, request.remote_addr, text)
        flash(text, "error" if error else "ok")
        if page is None:
            return redirect(url_for("job", job_id=target))
        return redirect(url_for(page))

    return app


def _credential(auth: Any, cookie: str | None, query: str | None) -> str | None:
    """The secret a request carries: basic auth's password, a bearer token, the cookie or ?token=."""
    if auth is not None:
        if auth.type == "basic" and auth.password:
            return str(auth.password)
        if auth.type == "bearer" and auth.token:
            return str(auth.token)
    return query or cookie


def _filter(args: Any, statuses: tuple[str, ...]) -> JobFilter:
    """The jobs page's filter from its query string.

    Raises:
        ValueError: a field that is not understood, naming it and what it takes.
    """
    state = args.get("state") or None
    if state is not None and state not in STATES:
        raise ValueError(f"unknown state {state!r}: use one of {', '.join(STATES)}")
    status = args.get("queue") or None
    if status is not None and status not in statuses:
        raise ValueError(f"unknown status queue {status!r}: use one of {', '.join(statuses)}")
    meta = None
    text = (args.get("meta") or "").strip()
    if text:
        k, sep, v = text.partition("=")
        if not sep or not k.strip():
            raise ValueError(f"metadata filter {text!r} is not key=value")
        meta = (k.strip(), v.strip())
    return JobFilter(state=state, status=status, since=_parse_time(args.get("since")),
                     until=_parse_time(args.get("until")), meta=meta)


def _cursor(text: str | None) -> tuple[float, str] | None:
    if not text:
        return None
    created, sep, job_id = text.partition(":")
    try:
        return (float(created), job_id) if sep else None
    except ValueError:
        return None


def _stages(queue: Queue, job_id: str) -> list[dict[str, Any]]:
    """The pipeline stages a job went through, from its ``handoff-<status>`` records."""
    stages: list[dict[str, Any]] = []
    prefix = f"jobs/{keys.job_segment(job_id)}/"
    try:
        for info in queue.context.store.list(prefix):
            name = info.key[len(prefix):]
            if name.startswith("handoff-"):
                stages.append({"status": name[len("handoff-"):], "at": info.modified})
    except RemoteJobError:
        return []
    stages.sort(key=lambda s: float(s["at"]))
    return stages
