"""The handler middleware chain: cross-cutting handling of a delivery, written once.

A middleware is ``async (context, next) -> None``. The chain every subscription runs
is ``decode (binding the log context) -> <caller's middlewares> -> handler``; raising
from any step ends the delivery with that error, and ``flotilla.bus.outcome.decide``
turns it into a broker action.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog
from structlog.contextvars import bind_contextvars, reset_contextvars

from flotilla.bus.idempotency import IdempotencyStore
from flotilla.bus.port import Context, Handler, Middleware, Next, RawHandler
from flotilla.errors import MessageDecodeError, PermanentError
from flotilla.schemas import InvalidMessageError, Message, decode

_log = structlog.get_logger("flotilla.bus")


async def bind_log_context(context: Context, call_next: Next) -> None:
    """Bind ``message_id`` and ``queue`` to every log line written while handling."""
    delivery = context.delivery
    tokens = bind_contextvars(message_id=delivery.message_id, queue=delivery.queue)
    try:
        await call_next(context)
    finally:
        reset_contextvars(**tokens)


async def decode_message(context: Context, call_next: Next) -> None:
    """Decode the body into a message; a malformed one is a permanent failure with its reason."""
    try:
        message = decode(context.delivery.body)
    except InvalidMessageError as exc:
        raise MessageDecodeError(f"malformed message: {exc.reason}") from exc
    context.message = message
    delivery = context.delivery
    # One binding of three keys for the whole delivery: each bound key costs a context
    # variable set and reset, and this runs for every message on the bus. The queue and
    # type are in the failure logs explicitly.
    # vars(): a missing attribute on a pydantic model is a slow AttributeError path.
    # Bind and reset by token rather than ``bound_contextvars``, which first copies the
    # whole context to save what it overwrites; resetting restores the same values.
    tokens = bind_contextvars(
        message_id=delivery.message_id,
        deployment_id=message.correlationid,
        site=vars(message.data).get("site"),
    )
    try:
        await call_next(context)
    finally:
        reset_contextvars(**tokens)


def idempotent(store: IdempotencyStore, key: Callable[[Message], str] | None = None) -> Middleware:
    """Skip messages whose key was handled to completion before (default key: message id)."""

    async def middleware(context: Context, call_next: Next) -> None:
        assert context.message is not None, "idempotent() must run after decode_message"
        message_key = key(context.message) if key else context.message.id
        if await store.is_done(message_key):
            _log.info("duplicate_skipped", idempotency_key=message_key)
            return
        await call_next(context)
        await store.mark_done(message_key)

    return middleware


def sender_must_match(expected_user: Callable[[Message], str | None]) -> Middleware:
    """Refuse messages whose broker-validated ``user_id`` is not the one the message claims.

    The broker guarantees that a set ``user_id`` is the publisher's login; this check makes
    sure it is set and belongs to the site the message speaks for.
    """

    async def middleware(context: Context, call_next: Next) -> None:
        assert context.message is not None, "sender_must_match() must run after decode_message"
        expected = expected_user(context.message)
        actual = context.delivery.user_id
        if expected is not None and actual != expected:
            raise PermanentError(
                f"sender {actual!r} may not publish {context.message.type} as {expected!r}"
            )
        await call_next(context)

    return middleware


def build_chain(middlewares: Sequence[Middleware], handler: Handler) -> Next:
    """Compose the standard chain, the caller's middlewares, and the handler."""

    async def call_handler(context: Context) -> None:
        assert context.message is not None
        await handler(context.message, context.delivery)

    chain: Next = call_handler
    for middleware in reversed((decode_message, *middlewares)):
        chain = _link(middleware, chain)
    return chain


def build_raw_chain(handler: RawHandler) -> Next:
    """The chain for raw subscriptions: log context only, no decoding."""

    async def call_handler(context: Context) -> None:
        await handler(context.delivery)

    return _link(bind_log_context, call_handler)


def _link(middleware: Middleware, call_next: Next) -> Next:
    async def step(context: Context) -> None:
        await middleware(context, call_next)

    return step
