//! Reading and parsing requests: the body within its size and time (rule 1 of the
//! judging order), the lock-order body (rules 1 to 3) into a `LockOrder` and its
//! `hold_seconds`, the buyer of a confirm or cancel, and the id of a path.
//!
//! A well-formed body is read straight into integers (`Body`). Any other body is read
//! again field by field, values kept as raw JSON text, so that every rule can name the
//! field it is about and `2.0`, `1e2`, `"2"` and `true` are told apart from integers.
//! The first reading is only a shortcut: it accepts a body only if the second would
//! accept it too, with the same result (a property test below checks this), so all the
//! judging lives in `parse_checked`.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::HeaderMap;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::domain::{LockOrder, MAX_HOLD_SECONDS, MAX_LINES, MAX_QUANTITY, ProductId, UserId};

use super::response::ApiError;

/// A lock request past the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockBody {
    pub order: LockOrder,
    /// As the body gave it; `None` means the server's default.
    pub hold_seconds: Option<u32>,
}

pub fn parse_lock_order(body: &[u8]) -> Result<LockBody, ApiError> {
    match parse_well_formed(body) {
        Some(lock) => Ok(lock),
        None => parse_checked(body),
    }
}

/// The body of a confirm or cancel: `{"user_id": N}`, judged as a lock's `user_id`.
pub fn parse_buyer(body: &[u8]) -> Result<UserId, ApiError> {
    let object = object(body)?;
    let user_id = required(&object, "user_id")?;
    Ok(UserId(integer(user_id, "user_id")?))
}

/// A request's body: as it comes on a connection, or whole, from a batch another node
/// forwarded.
pub type RequestBody = Either<Incoming, Full<Bytes>>;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Rule 1: a JSON content type, then a body of at most `MAX_BODY_BYTES`, received in
/// time. A declared length over the limit is refused before the body is read.
pub async fn read_json_body(
    headers: &HeaderMap,
    mut body: RequestBody,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    // Exactly one Content-Type: with several, which one the client meant is a guess.
    let mut content_types = headers.get_all(CONTENT_TYPE).iter();
    let json = match (content_types.next(), content_types.next()) {
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json")),
        _ => false,
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || ApiError::PayloadTooLarge {
        limit: MAX_BODY_BYTES,
    };
    let refusal = if !json {
        Some(ApiError::UnsupportedMediaType("application/json"))
    } else if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        Some(too_large())
    } else {
        None
    };
    if let Some(refusal) = refusal {
        // Read a modest body to its end before refusing it: closing a connection with
        // unread data resets it, and the client might lose the answer.
        if declared.is_some_and(|len| len <= DRAIN_LIMIT as u64) {
            let _ = tokio::time::timeout(timeout, drain(&mut body)).await;
        }
        return Err(refusal);
    }
    let read = async {
        match Limited::new(&mut body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => {
                // Past the limit, the rest is read (up to `DRAIN_LIMIT`), as above.
                drain(&mut body).await;
                Err(too_large())
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a request body");
                Err(bad("request body could not be read"))
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(ApiError::Timeout))
}

/// Most bytes read (and thrown away) from a body that is refused anyway.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Reads what is left of a refused body, up to `DRAIN_LIMIT` bytes.
pub(super) async fn drain(body: &mut RequestBody) {
    let mut seen = 0usize;
    while seen <= DRAIN_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
}

/// The `{id}` of `/api/v1/order/{id}` or `/api/v1/admin/products/{id}`: a decimal id
/// without sign or leading zeros. Anything else names nothing.
pub fn parse_id(text: &str) -> Option<i64> {
    let canonical =
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
    canonical.then(|| text.parse::<i64>().ok()).flatten()
}

/// A body of the expected shape; serde refuses a float, a string or a boolean where an
/// `i64` is expected, and unknown fields are skipped, as `parse_checked` ignores them.
struct Body {
    user_id: i64,
    products: Vec<Line>,
    hold_seconds: Option<i64>,
}

struct Line {
    product_id: i64,
    quantity: i64,
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let ((user_id, products), hold_seconds) = deserializer
            .deserialize_map(Object::new(["user_id", "products"]).with_optional("hold_seconds"))?;
        Ok(Body {
            user_id,
            products,
            hold_seconds,
        })
    }
}

impl<'de> Deserialize<'de> for Line {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let ((product_id, quantity), ()) =
            deserializer.deserialize_map(Object::new(["product_id", "quantity"]))?;
        Ok(Line {
            product_id,
            quantity,
        })
    }
}

/// Reads a JSON object with two required fields, optionally a third (absent or null is
/// `None`), and skips the others. Not serde's derive: a derived struct also accepts an
/// array of its fields (`[2, [[1, 1]]]`), which is not the JSON object rule 1 asks for.
/// A repeated field, or a key with escapes, fails the shortcut and leaves the verdict to
/// `parse_checked`.
struct Object<X, Y, Z> {
    names: [&'static str; 2],
    optional: Option<&'static str>,
    fields: PhantomData<(X, Y, Z)>,
}

impl<X, Y> Object<X, Y, ()> {
    fn new(names: [&'static str; 2]) -> Self {
        Self {
            names,
            optional: None,
            fields: PhantomData,
        }
    }

    fn with_optional<Z>(self, name: &'static str) -> Object<X, Y, Option<Z>> {
        Object {
            names: self.names,
            optional: Some(name),
            fields: PhantomData,
        }
    }
}

/// What the optional third field reads as: nothing, or `Option<Z>`.
trait OptionalField<'de>: Sized {
    fn absent() -> Self;
    fn read<M: MapAccess<'de>>(map: &mut M) -> Result<Self, M::Error>;
}

impl<'de> OptionalField<'de> for () {
    fn absent() -> Self {}
    fn read<M: MapAccess<'de>>(map: &mut M) -> Result<Self, M::Error> {
        map.next_value::<IgnoredAny>().map(|_| ())
    }
}

impl<'de, Z: Deserialize<'de>> OptionalField<'de> for Option<Z> {
    fn absent() -> Self {
        None
    }
    fn read<M: MapAccess<'de>>(map: &mut M) -> Result<Self, M::Error> {
        map.next_value()
    }
}

impl<'de, X: Deserialize<'de>, Y: Deserialize<'de>, Z: OptionalField<'de>> Visitor<'de>
    for Object<X, Y, Z>
{
    type Value = ((X, Y), Z);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an object with {} and {}", self.names[0], self.names[1])
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let [first_name, second_name] = self.names;
        let (mut first, mut second, mut third) = (None, None, None);
        while let Some(key) = map.next_key::<&str>()? {
            if key == first_name && first.is_none() {
                first = Some(map.next_value()?);
            } else if key == second_name && second.is_none() {
                second = Some(map.next_value()?);
            } else if Some(key) == self.optional && third.is_none() {
                third = Some(Z::read(&mut map)?);
            } else if key == first_name || key == second_name || Some(key) == self.optional {
                return Err(de::Error::custom("a field appears twice"));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok((
            (
                first.ok_or_else(|| de::Error::missing_field(first_name))?,
                second.ok_or_else(|| de::Error::missing_field(second_name))?,
            ),
            third.unwrap_or_else(Z::absent),
        ))
    }
}

/// The order, if the body is well formed and every rule up to merging holds; `None`
/// sends it to `parse_checked` for a precise answer. `LockOrder::new` checks the lines'
/// count and quantities; the ids and `hold_seconds` are checked here.
fn parse_well_formed(body: &[u8]) -> Option<LockBody> {
    // serde skips an ignored field's string without checking its UTF-8, which reading
    // into a `Value` does check: a JSON text must be UTF-8 throughout.
    let text = std::str::from_utf8(body).ok()?;
    let body: Body = serde_json::from_str(text).ok()?;
    let in_range = |n: i64| (1..=MAX_QUANTITY).contains(&n);
    if !in_range(body.user_id) || !body.products.iter().all(|l| in_range(l.product_id)) {
        return None;
    }
    let hold_seconds = match body.hold_seconds {
        None => None,
        Some(n) => Some(hold_seconds(n)?),
    };
    let lines = body
        .products
        .iter()
        .map(|l| (ProductId(l.product_id), l.quantity));
    let order = LockOrder::new(UserId(body.user_id), lines).ok()?;
    Some(LockBody {
        order,
        hold_seconds,
    })
}

/// `hold_seconds` in `1..=MAX_HOLD_SECONDS`.
fn hold_seconds(n: i64) -> Option<u32> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_HOLD_SECONDS).contains(n))
}

/// Judges any body by rules 1 to 3, naming the field a refusal is about.
///
/// Values are kept as raw JSON text until a rule looks at them, so that a number no
/// float can hold (`1e400`, four hundred digits) is judged where it stands: as a field
/// that is not an integer in range, or as an unknown field, ignored.
fn parse_checked(body: &[u8]) -> Result<LockBody, ApiError> {
    let object = object(body)?;
    let user_id = required(&object, "user_id")?;
    let products = required(&object, "products")?;
    let user = UserId(integer(user_id, "user_id")?);

    let lines: Vec<&RawValue> =
        serde_json::from_str(products.get()).map_err(|_| bad("products must be an array"))?;
    if lines.is_empty() {
        return Err(bad("products must not be empty"));
    }
    if lines.len() > MAX_LINES {
        return Err(bad(&format!(
            "products must have at most {MAX_LINES} lines"
        )));
    }
    let mut parsed = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let line: Fields<'_> = serde_json::from_str(line.get())
            .map_err(|_| bad(&format!("products[{i}] must be an object")))?;
        let product_id = required(&line, "product_id")
            .map_err(|_| bad(&format!("products[{i}].product_id is required")))?;
        let quantity = required(&line, "quantity")
            .map_err(|_| bad(&format!("products[{i}].quantity is required")))?;
        let product = integer(product_id, &format!("products[{i}].product_id"))?;
        let quantity = integer(quantity, &format!("products[{i}].quantity"))?;
        parsed.push((ProductId(product), quantity));
    }
    let hold_seconds = match object.get("hold_seconds") {
        Some(value) if value.get() != "null" => Some(
            serde_json::from_str::<i64>(value.get())
                .ok()
                .and_then(hold_seconds)
                .ok_or_else(|| {
                    bad(&format!(
                        "hold_seconds must be an integer between 1 and {MAX_HOLD_SECONDS}"
                    ))
                })?,
        ),
        _ => None,
    };

    let order = LockOrder::new(user, parsed).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(LockBody {
        order,
        hold_seconds,
    })
}

/// A JSON object's fields as raw JSON text; of a repeated key, the last one counts.
pub(super) type Fields<'a> = BTreeMap<String, &'a RawValue>;

/// Rule 1's last part: the body is one JSON object, UTF-8 throughout.
pub(super) fn object(body: &[u8]) -> Result<Fields<'_>, ApiError> {
    let not_an_object = || bad("request body must be one JSON object");
    let text = std::str::from_utf8(body).map_err(|_| not_an_object())?;
    serde_json::from_str(text).map_err(|_| not_an_object())
}

pub(super) fn bad(message: &str) -> ApiError {
    ApiError::BadRequest(message.to_owned())
}

/// A field that must be present and not null.
pub(super) fn required<'a>(object: &Fields<'a>, field: &str) -> Result<&'a RawValue, ApiError> {
    match object.get(field) {
        Some(value) if value.get() != "null" => Ok(value),
        _ => Err(bad(&format!("{field} is required"))),
    }
}

/// An integer in `1..=MAX_QUANTITY`: not a string, a boolean, or a number written with a
/// fraction or an exponent (`2.0`, `1e2`), nor one too large for any integer type.
pub(super) fn integer(value: &RawValue, field: &str) -> Result<i64, ApiError> {
    integer_from(value, field, 1)
}

/// An integer in `min..=MAX_QUANTITY`, judged as `integer` is.
pub(super) fn integer_from(value: &RawValue, field: &str, min: i64) -> Result<i64, ApiError> {
    match serde_json::from_str::<i64>(value.get()) {
        Ok(n) if (min..=MAX_QUANTITY).contains(&n) => Ok(n),
        _ => Err(bad(&format!(
            "{field} must be an integer between {min} and {MAX_QUANTITY}"
        ))),
    }
}

/// The `Idempotency-Key` header.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The `Idempotency-Key` header, if the request has one.
pub(super) fn idempotency_key(
    headers: &HeaderMap,
) -> Result<Option<crate::domain::IdempotencyKey>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let (first, second) = (values.next(), values.next());
    match (first, second) {
        (None, _) => Ok(None),
        (Some(value), None) => crate::domain::IdempotencyKey::parse(value.as_bytes())
            .map(Some)
            .map_err(|e| ApiError::BadRequest(e.to_string())),
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "send one Idempotency-Key header, not several".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderLine;

    fn message(body: &str) -> String {
        match parse_lock_order(body.as_bytes()) {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("expected a 400 for {body}, got {other:?}"),
        }
    }

    #[test]
    fn every_rule_names_its_field() {
        assert!(message("[]").contains("JSON object"));
        assert!(message("{").contains("JSON object"));
        assert!(message(r#"{"products":[]}"#).contains("user_id"));
        assert!(message(r#"{"user_id":1,"products":null}"#).contains("products"));
        assert!(message(r#"{"user_id":"1","products":[]}"#).contains("user_id"));
        assert!(message(r#"{"user_id":1,"products":{}}"#).contains("array"));
        assert!(message(r#"{"user_id":1,"products":[]}"#).contains("empty"));
        for q in [
            "2.5",
            "2.0",
            "1e2",
            "true",
            "\"2\"",
            "0",
            "-1",
            "2147483648",
        ] {
            let body = format!(r#"{{"user_id":1,"products":[{{"product_id":1,"quantity":{q}}}]}}"#);
            assert!(message(&body).contains("products[0].quantity"), "{q}");
        }
        let body = r#"{"user_id":1,"products":[{"product_id":1,"quantity":2147483647},{"product_id":1,"quantity":1}]}"#;
        assert!(message(body).contains("product 1"));
    }

    #[test]
    fn a_valid_body_becomes_a_merged_order_and_unknown_fields_are_ignored() {
        let body = r#"{"user_id":2,"extra":true,"products":[{"product_id":2,"quantity":1},{"product_id":1,"quantity":2,"note":"x"},{"product_id":2,"quantity":3}]}"#;
        let lock = parse_lock_order(body.as_bytes()).unwrap();
        assert_eq!(lock.order.buyer(), UserId(2));
        assert_eq!(lock.hold_seconds, None);
        let lines: Vec<_> = lock
            .order
            .lines()
            .iter()
            .map(|l| (l.product.0, l.quantity))
            .collect();
        assert_eq!(lines, [(1, 2), (2, 4)]);
    }

    #[test]
    fn hold_seconds_is_an_integer_of_at_most_a_week() {
        let body = |hold: &str| {
            format!(
                r#"{{"user_id":2,"hold_seconds":{hold},"products":[{{"product_id":1,"quantity":1}}]}}"#
            )
        };
        for bad in ["0", "-1", "604801", "1.5", "\"5\"", "true", "1e2", "[]"] {
            assert!(message(&body(bad)).contains("hold_seconds"), "{bad}");
        }
        for (good, seconds) in [("1", Some(1)), ("604800", Some(604_800)), ("null", None)] {
            let lock = parse_lock_order(body(good).as_bytes()).unwrap();
            assert_eq!(lock.hold_seconds, seconds, "{good}");
        }
        // The fields of rule 2 are judged first.
        let both = r#"{"user_id":0,"hold_seconds":0,"products":[{"product_id":1,"quantity":1}]}"#;
        assert!(message(both).contains("user_id"));
    }

    #[test]
    fn the_buyer_of_a_confirm_is_judged_like_a_lock_user_id() {
        assert_eq!(parse_buyer(br#"{"user_id":2,"x":1}"#).unwrap(), UserId(2));
        for bad in [
            &b"{}"[..],
            br#"{"user_id":null}"#,
            br#"{"user_id":"2"}"#,
            br#"{"user_id":0}"#,
        ] {
            match parse_buyer(bad) {
                Err(ApiError::BadRequest(m)) => assert!(m.contains("user_id"), "{m}"),
                other => panic!("expected a 400, got {other:?}"),
            }
        }
        assert!(
            matches!(parse_buyer(b"[2]"), Err(ApiError::BadRequest(m)) if m.contains("JSON object"))
        );
    }

    #[test]
    fn an_order_id_is_a_plain_positive_integer() {
        assert_eq!(parse_id("42"), Some(42));
        assert_eq!(parse_id("9223372036854775807"), Some(i64::MAX));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "007",
            "abc",
            "1.0",
            "9223372036854775808",
            "1 ",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_body_that_is_not_utf8_is_refused_even_in_an_unknown_field() {
        let body =
            b"{\"user_id\":1,\"note\":\"\xff\",\"products\":[{\"product_id\":1,\"quantity\":1}]}";
        match parse_lock_order(body) {
            Err(ApiError::BadRequest(m)) => assert!(m.contains("JSON object"), "{m}"),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn numbers_no_float_can_hold_are_judged_where_they_stand() {
        let huge = format!("1{}", "0".repeat(400));
        for n in ["1e400", "-1e400", huge.as_str()] {
            let body = format!(r#"{{"user_id":2,"products":[{{"product_id":1,"quantity":{n}}}]}}"#);
            assert!(message(&body).contains("products[0].quantity"), "{n}");
            let body = format!(r#"{{"user_id":{n},"products":[{{"product_id":1,"quantity":1}}]}}"#);
            assert!(message(&body).contains("user_id"), "{n}");
            // In a field Kitara does not know, it is ignored like any other value.
            let body = format!(
                r#"{{"user_id":2,"note":{n},"products":[{{"product_id":1,"quantity":1}}]}}"#
            );
            let lock = parse_lock_order(body.as_bytes()).unwrap_or_else(|_| panic!("{n}"));
            assert_eq!(lock.order.buyer(), UserId(2), "{n}");
            assert_eq!(
                lock.order.lines(),
                &[OrderLine {
                    product: ProductId(1),
                    quantity: 1
                }],
                "{n}"
            );
            let body = format!(
                r#"{{"user_id":2,"note":{n},"products":[{{"product_id":1,"quantity":0}}]}}"#
            );
            assert!(message(&body).contains("products[0].quantity"), "{n}");
        }
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        let body = format!(
            r#"{{"user_id":2,"note":{deep},"products":[{{"product_id":1,"quantity":0}}]}}"#
        );
        assert!(message(&body).contains("products[0].quantity"));
    }

    #[test]
    fn an_array_is_not_an_object() {
        assert!(message("[2,[[1,2],[2,1]]]").contains("JSON object"));
        assert!(message(r#"[2,[{"product_id":1,"quantity":1}]]"#).contains("JSON object"));
        assert!(
            message(r#"{"user_id":2,"products":[[1,2]]}"#)
                .contains("products[0] must be an object")
        );
    }

    #[test]
    fn a_well_formed_body_takes_the_shortcut() {
        let body = br#"{"user_id":2,"products":[{"product_id":1,"quantity":2},{"product_id":2,"quantity":1}]}"#;
        let order = parse_well_formed(body).expect("a well-formed body is read directly");
        assert_eq!(order, parse_checked(body).unwrap());
        // Merging is judged by `LockOrder::new` either way: an overflow goes the long way.
        let body = br#"{"user_id":1,"products":[{"product_id":1,"quantity":2147483647},{"product_id":1,"quantity":1}]}"#;
        assert!(parse_well_formed(body).is_none());
    }

    mod shortcut {
        use proptest::prelude::*;

        use super::super::{parse_checked, parse_lock_order, parse_well_formed};

        /// JSON values an integer field may hold in a real or hostile request.
        fn scalar() -> BoxedStrategy<String> {
            prop_oneof![
                4 => (-2i64..5).prop_map(|n| n.to_string()),
                1 => Just("2147483647".to_owned()),
                1 => Just("2147483648".to_owned()),
                1 => Just("9223372036854775807".to_owned()),
                1 => Just("18446744073709551616".to_owned()),
                1 => Just("-0".to_owned()),
                1 => Just("1e400".to_owned()),
                1 => Just(format!("1{}", "0".repeat(400))),
                1 => prop_oneof![Just("2.0"), Just("2.5"), Just("1e2"), Just("1E0")].prop_map(str::to_owned),
                1 => prop_oneof![Just("\"2\""), Just("true"), Just("null"), Just("[]"), Just("{}")].prop_map(str::to_owned),
            ]
            .boxed()
        }

        /// An object from (key, value) entries; keys may repeat, as JSON allows.
        fn object(entries: Vec<(String, String)>) -> String {
            let fields: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}", fields.join(","))
        }

        /// A line as an object, or as an array of its values (which is not a line).
        fn line() -> BoxedStrategy<String> {
            let key = prop_oneof![
                4 => Just("product_id"),
                4 => Just("quantity"),
                1 => Just("note"),
            ];
            prop_oneof![
                6 => prop::collection::vec((key.prop_map(str::to_owned), scalar()), 0..4).prop_map(object),
                1 => (scalar(), scalar()).prop_map(|(p, q)| format!("[{p},{q}]")),
            ]
            .boxed()
        }

        fn products() -> BoxedStrategy<String> {
            prop_oneof![
                8 => prop::collection::vec(line(), 0..4).prop_map(|l| format!("[{}]", l.join(","))),
                1 => scalar(),
            ]
            .boxed()
        }

        fn body() -> BoxedStrategy<String> {
            let entry = prop_oneof![
                3 => scalar().prop_map(|v| ("user_id".to_owned(), v)),
                3 => products().prop_map(|v| ("products".to_owned(), v)),
                1 => scalar().prop_map(|v| ("hold_seconds".to_owned(), v)),
                1 => scalar().prop_map(|v| ("extra".to_owned(), v)),
            ];
            prop_oneof![
                12 => prop::collection::vec(entry, 0..4).prop_map(object),
                1 => Just("[]".to_owned()),
                1 => Just("{\"user_id\":1,".to_owned()),
                // The fields' values in an array, as a derived serde struct would take them.
                2 => (scalar(), products()).prop_map(|(u, p)| format!("[{u},{p}]")),
            ]
            .boxed()
        }

        /// A body shaped like a real order, so that the shortcut is often taken.
        fn plausible_body() -> BoxedStrategy<String> {
            let line = (scalar(), scalar(), 0..8).prop_map(|(p, q, shape)| match shape {
                0 => format!("[{p},{q}]"),
                _ => format!("{{\"product_id\":{p},\"quantity\":{q}}}"),
            });
            let hold = prop_oneof![
                4 => Just(String::new()),
                2 => scalar().prop_map(|h| format!(",\"hold_seconds\":{h}")),
                1 => prop_oneof![Just("900"), Just("604800"), Just("604801"), Just("null")]
                    .prop_map(|h| format!(",\"hold_seconds\":{h}")),
            ];
            (scalar(), prop::collection::vec(line, 0..4), hold)
                .prop_map(|(user, lines, hold)| {
                    format!(
                        "{{\"user_id\":{user},\"products\":[{}]{hold}}}",
                        lines.join(",")
                    )
                })
                .boxed()
        }

        /// A body the shortcut accepts as it is.
        fn valid_body() -> BoxedStrategy<String> {
            let line = (1i64..20, 1i64..5)
                .prop_map(|(p, q)| format!("{{\"product_id\":{p},\"quantity\":{q}}}"));
            (1i64..5, prop::collection::vec(line, 1..4), any::<bool>())
                .prop_map(|(user, lines, as_array)| {
                    let lines = lines.join(",");
                    if as_array {
                        format!("[{user},[{lines}]]")
                    } else {
                        format!("{{\"user_id\":{user},\"products\":[{lines}]}}")
                    }
                })
                .boxed()
        }

        /// A body's bytes, sometimes with an unknown field whose string is not UTF-8.
        fn bytes() -> impl Strategy<Value = Vec<u8>> {
            let text = prop_oneof![body(), plausible_body(), valid_body()];
            (
                text,
                prop_oneof![4 => Just(None), 1 => Just(Some(0xffu8)), 1 => Just(Some(0xc3))],
            )
                .prop_map(|(text, byte)| match (byte, text.strip_prefix('{')) {
                    (Some(byte), Some(rest)) => {
                        let mut bytes = b"{\"note\":\"".to_vec();
                        bytes.push(byte);
                        bytes.extend_from_slice(b"\",");
                        bytes.extend_from_slice(rest.as_bytes());
                        bytes
                    }
                    _ => text.into_bytes(),
                })
        }

        proptest! {
            #[test]
            fn the_shortcut_never_changes_the_verdict(body in bytes()) {
                let body = body.as_slice();
                if let Some(order) = parse_well_formed(body) {
                    prop_assert_eq!(Some(order), parse_checked(body).ok());
                }
                prop_assert_eq!(
                    format!("{:?}", parse_lock_order(body)),
                    format!("{:?}", parse_checked(body))
                );
            }
        }
    }
}
