//! Parsing the lock-order body (rules 1 to 3 of the judging order) into a `LockOrder`.
//!
//! The body is read as a `serde_json::Value` first so that every rule can name the field
//! it is about, and so that `2.0`, `1e2`, `"2"` and `true` are told apart from integers.

use serde_json::{Map, Value};

use crate::domain::{LockOrder, MAX_LINES, MAX_QUANTITY, ProductId, UserId};

use super::response::ApiError;

pub fn parse_lock_order(body: &[u8]) -> Result<LockOrder, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| bad("request body must be one JSON object"))?;
    let Value::Object(object) = value else {
        return Err(bad("request body must be one JSON object"));
    };

    let user_id = required(&object, "user_id")?;
    let products = required(&object, "products")?;
    let user = UserId(integer(user_id, "user_id")?);

    let Value::Array(lines) = products else {
        return Err(bad("products must be an array"));
    };
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
        let Value::Object(line) = line else {
            return Err(bad(&format!("products[{i}] must be an object")));
        };
        let product_id = required(line, "product_id")
            .map_err(|_| bad(&format!("products[{i}].product_id is required")))?;
        let quantity = required(line, "quantity")
            .map_err(|_| bad(&format!("products[{i}].quantity is required")))?;
        let product = integer(product_id, &format!("products[{i}].product_id"))?;
        let quantity = integer(quantity, &format!("products[{i}].quantity"))?;
        parsed.push((ProductId(product), quantity));
    }

    LockOrder::new(user, parsed).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn bad(message: &str) -> ApiError {
    ApiError::BadRequest(message.to_owned())
}

/// A field that must be present and not null.
fn required<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a Value, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Err(bad(&format!("{field} is required"))),
        Some(value) => Ok(value),
    }
}

/// An integer in `1..=MAX_QUANTITY`: not a string, a boolean, or a number written with a
/// fraction or an exponent (`2.0`, `1e2`).
fn integer(value: &Value, field: &str) -> Result<i64, ApiError> {
    match value.as_i64() {
        Some(n) if (1..=MAX_QUANTITY).contains(&n) => Ok(n),
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
}
