//! Parsing the lock-order body (rules 1 to 3 of the judging order) into a `LockOrder`.
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

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::domain::{LockOrder, MAX_LINES, MAX_QUANTITY, ProductId, UserId};

use super::response::ApiError;

pub fn parse_lock_order(body: &[u8]) -> Result<LockOrder, ApiError> {
    match parse_well_formed(body) {
        Some(order) => Ok(order),
        None => parse_checked(body),
    }
}

/// A body of the expected shape; serde refuses a float, a string or a boolean where an
/// `i64` is expected, and unknown fields are skipped, as `parse_checked` ignores them.
struct Body {
    user_id: i64,
    products: Vec<Line>,
}

struct Line {
    product_id: i64,
    quantity: i64,
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (user_id, products) =
            deserializer.deserialize_map(Object::new(["user_id", "products"]))?;
        Ok(Body { user_id, products })
    }
}

impl<'de> Deserialize<'de> for Line {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (product_id, quantity) =
            deserializer.deserialize_map(Object::new(["product_id", "quantity"]))?;
        Ok(Line {
            product_id,
            quantity,
        })
    }
}

/// Reads a JSON object with two required fields and skips the others. Not serde's derive:
/// a derived struct also accepts an array of its fields (`[2, [[1, 1]]]`), which is not
/// the JSON object rule 1 asks for. A repeated field, or a key with escapes, fails the
/// shortcut and leaves the verdict to `parse_checked`.
struct Object<X, Y> {
    names: [&'static str; 2],
    fields: PhantomData<(X, Y)>,
}

impl<X, Y> Object<X, Y> {
    fn new(names: [&'static str; 2]) -> Self {
        Self {
            names,
            fields: PhantomData,
        }
    }
}

impl<'de, X: Deserialize<'de>, Y: Deserialize<'de>> Visitor<'de> for Object<X, Y> {
    type Value = (X, Y);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an object with {} and {}", self.names[0], self.names[1])
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(X, Y), M::Error> {
        let [first_name, second_name] = self.names;
        let (mut first, mut second) = (None, None);
        while let Some(key) = map.next_key::<&str>()? {
            if key == first_name && first.is_none() {
                first = Some(map.next_value()?);
            } else if key == second_name && second.is_none() {
                second = Some(map.next_value()?);
            } else if key == first_name || key == second_name {
                return Err(de::Error::custom("a field appears twice"));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok((
            first.ok_or_else(|| de::Error::missing_field(first_name))?,
            second.ok_or_else(|| de::Error::missing_field(second_name))?,
        ))
    }
}

/// The order, if the body is well formed and every rule up to merging holds; `None`
/// sends it to `parse_checked` for a precise answer. `LockOrder::new` checks the lines'
/// count and quantities; the ids are checked here.
fn parse_well_formed(body: &[u8]) -> Option<LockOrder> {
    // serde skips an ignored field's string without checking its UTF-8, which reading
    // into a `Value` does check: a JSON text must be UTF-8 throughout.
    let text = std::str::from_utf8(body).ok()?;
    let body: Body = serde_json::from_str(text).ok()?;
    let in_range = |n: i64| (1..=MAX_QUANTITY).contains(&n);
    if !in_range(body.user_id) || !body.products.iter().all(|l| in_range(l.product_id)) {
        return None;
    }
    let lines = body
        .products
        .iter()
        .map(|l| (ProductId(l.product_id), l.quantity));
    LockOrder::new(UserId(body.user_id), lines).ok()
}

/// Judges any body by rules 1 to 3, naming the field a refusal is about.
///
/// Values are kept as raw JSON text until a rule looks at them, so that a number no
/// float can hold (`1e400`, four hundred digits) is judged where it stands: as a field
/// that is not an integer in range, or as an unknown field, ignored.
fn parse_checked(body: &[u8]) -> Result<LockOrder, ApiError> {
    let not_an_object = || bad("request body must be one JSON object");
    let text = std::str::from_utf8(body).map_err(|_| not_an_object())?;
    let object: Fields<'_> = serde_json::from_str(text).map_err(|_| not_an_object())?;

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

    LockOrder::new(user, parsed).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// A JSON object's fields as raw JSON text; of a repeated key, the last one counts.
type Fields<'a> = BTreeMap<String, &'a RawValue>;

fn bad(message: &str) -> ApiError {
    ApiError::BadRequest(message.to_owned())
}

/// A field that must be present and not null.
fn required<'a>(object: &Fields<'a>, field: &str) -> Result<&'a RawValue, ApiError> {
    match object.get(field) {
        Some(value) if value.get() != "null" => Ok(value),
        _ => Err(bad(&format!("{field} is required"))),
    }
}

/// An integer in `1..=MAX_QUANTITY`: not a string, a boolean, or a number written with a
/// fraction or an exponent (`2.0`, `1e2`), nor one too large for any integer type.
fn integer(value: &RawValue, field: &str) -> Result<i64, ApiError> {
    match serde_json::from_str::<i64>(value.get()) {
        Ok(n) if (1..=MAX_QUANTITY).contains(&n) => Ok(n),
        _ => Err(bad(&format!(
            "{field} must be an integer between 1 and {MAX_QUANTITY}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let order = parse_lock_order(body.as_bytes()).unwrap();
        assert_eq!(order.buyer(), UserId(2));
        let lines: Vec<_> = order
            .lines()
            .iter()
            .map(|l| (l.product.0, l.quantity))
            .collect();
        assert_eq!(lines, [(1, 2), (2, 4)]);
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
            assert!(parse_lock_order(body.as_bytes()).is_ok(), "{n}");
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
        fn scalar() -> impl Strategy<Value = String> {
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
        fn line() -> impl Strategy<Value = String> {
            let key = prop_oneof![
                4 => Just("product_id"),
                4 => Just("quantity"),
                1 => Just("note"),
            ];
            prop_oneof![
                6 => prop::collection::vec((key.prop_map(str::to_owned), scalar()), 0..4).prop_map(object),
                1 => (scalar(), scalar()).prop_map(|(p, q)| format!("[{p},{q}]")),
            ]
        }

        fn products() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => prop::collection::vec(line(), 0..4).prop_map(|l| format!("[{}]", l.join(","))),
                1 => scalar(),
            ]
        }

        fn body() -> impl Strategy<Value = String> {
            let entry = prop_oneof![
                3 => scalar().prop_map(|v| ("user_id".to_owned(), v)),
                3 => products().prop_map(|v| ("products".to_owned(), v)),
                1 => scalar().prop_map(|v| ("extra".to_owned(), v)),
            ];
            prop_oneof![
                12 => prop::collection::vec(entry, 0..4).prop_map(object),
                1 => Just("[]".to_owned()),
                1 => Just("{\"user_id\":1,".to_owned()),
                // The fields' values in an array, as a derived serde struct would take them.
                2 => (scalar(), products()).prop_map(|(u, p)| format!("[{u},{p}]")),
            ]
        }

        /// A body shaped like a real order, so that the shortcut is often taken.
        fn plausible_body() -> impl Strategy<Value = String> {
            let line = (scalar(), scalar(), 0..8).prop_map(|(p, q, shape)| match shape {
                0 => format!("[{p},{q}]"),
                _ => format!("{{\"product_id\":{p},\"quantity\":{q}}}"),
            });
            (scalar(), prop::collection::vec(line, 0..4)).prop_map(|(user, lines)| {
                format!("{{\"user_id\":{user},\"products\":[{}]}}", lines.join(","))
            })
        }

        /// A body the shortcut accepts as it is.
        fn valid_body() -> impl Strategy<Value = String> {
            let line = (1i64..20, 1i64..5)
                .prop_map(|(p, q)| format!("{{\"product_id\":{p},\"quantity\":{q}}}"));
            (1i64..5, prop::collection::vec(line, 1..4), any::<bool>()).prop_map(
                |(user, lines, as_array)| {
                    let lines = lines.join(",");
                    if as_array {
                        format!("[{user},[{lines}]]")
                    } else {
                        format!("{{\"user_id\":{user},\"products\":[{lines}]}}")
                    }
                },
            )
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
