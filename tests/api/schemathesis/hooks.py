"""schemathesis hooks for Kitara's OpenAPI test (tests/api/openapi.rs).

Two things a schema cannot say, and the checks that take their place:

1. SPEC.md refuses an integer written as a float (2.0): JSON Schema calls it an
   integer. That one deliberate departure is left out of the generated requests,
   exactly: a number written as a float with an integral value is written as the
   integer it is, which JSON Schema holds to be the same value.

2. A lock, a confirm or a cancel can be refused for what no schema can say: rule 3 of
   the judging order bounds the sums of a lock's lines (merged lines of a product,
   and the order's total, at most 2147483647), and rules 4 to 6 depend on the data
   (an unknown user, products of two stores, a limit, stock that is short). Both
   answer 400 by SPEC.md, the status of the Go version Kitara replaces; and a
   generated Idempotency-Key may already name another request (422).
   The configuration lets positive_data_acceptance take those statuses on these
   operations, and `refused_only_for_its_data` checks that such an answer names one of
   those reasons, so that a schema-valid request refused for its shape still fails.
"""

import schemathesis


def _as_written_by_a_client(value):
    """The same value, with every float that is an integer (2.0) written as one (2)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _as_written_by_a_client(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_written_by_a_client(v) for v in value]
    return value


@schemathesis.hook
def map_body(context, body):
    # A map, not a filter: filtering drops so many lock bodies (four integer fields)
    # that hypothesis's health check gives up now and then.
    return _as_written_by_a_client(body)


# What the judging order refuses a schema-valid request with: its sums (rule 3), or its
# data (rules 4 to 6).
DATA_REFUSALS = {
    400: {
        "total quantity of the order exceeds 2147483647",
        "user not found",
        "product must in same store",
        "purchase limit per customer exceeded",
        "all product not available",
        "some product not available",
    },
    422: {"Idempotency-Key reused with a different request"},
}

ORDER_POSTS = ("/api/v1/order/lock", "/api/v1/order/{id}/confirm", "/api/v1/order/{id}/cancel")

# The admin writes, whose only data refusal a schema cannot say is a reused key.
ADMIN_WRITES = (
    "/api/v1/admin/users",
    "/api/v1/admin/stores",
    "/api/v1/admin/products",
    "/api/v1/admin/products/{id}",
    "/api/v1/admin/products/{id}/stock",
)


@schemathesis.check
def refused_only_for_its_data(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if case.operation.path in ADMIN_WRITES and response.status_code == 422:
        message = response.json().get("message")
        if message not in DATA_REFUSALS[422]:
            raise AssertionError(f"an admin write refused with 422 {message!r}")
        return None
    if case.operation.path not in ORDER_POSTS or response.status_code not in DATA_REFUSALS:
        return None
    message = response.json().get("message")
    merged = message.startswith("quantity of product ") and message.endswith(
        " exceeds 2147483647 after merging duplicate lines"
    )
    if message not in DATA_REFUSALS[response.status_code] and not merged:
        raise AssertionError(
            f"a schema-valid request was refused for its shape, not its data: "
            f"{response.status_code} {message!r}"
        )
    return None
