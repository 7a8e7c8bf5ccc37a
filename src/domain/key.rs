//! Safe retries: the `Idempotency-Key` a client sends with a POST, and the fingerprint of
//! the request it was sent with (draft-ietf-httpapi-idempotency-key-header).

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use super::{LockOrder, OrderId, Resolution, UserId};

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// A key as the client sent it, its surrounding double quotes removed: 1..=255 visible
/// ASCII characters (no spaces, no controls), so it is stored and compared byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Box<str>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters")]
pub struct KeyError;

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> Result<Self, KeyError> {
        let raw = match raw {
            [b'"', inner @ .., b'"'] => inner,
            other => other,
        };
        if raw.is_empty() || raw.len() > MAX_KEY_LEN || !raw.iter().all(u8::is_ascii_graphic) {
            return Err(KeyError);
        }
        // Visible ASCII is UTF-8.
        let text = std::str::from_utf8(raw).map_err(|_| KeyError)?;
        Ok(Self(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// What a key is bound to: the endpoint, the order it names, and the validated, merged
/// body. Key order, spacing, line order and split duplicate lines do not change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 16]);

impl Fingerprint {
    /// `POST /api/v1/order/lock`; `hold_seconds` as the body gave it.
    pub fn of_lock(order: &LockOrder, hold_seconds: Option<u32>) -> Self {
        let mut text = format!("lock\nuser {}\nhold ", order.buyer());
        match hold_seconds {
            Some(seconds) => {
                let _ = write!(text, "{seconds}");
            }
            None => text.push('-'),
        }
        for line in order.lines() {
            let _ = write!(text, "\n{} x {}", line.product, line.quantity);
        }
        Self::of_text(&text)
    }

    /// `POST /api/v1/order/{id}/confirm` or `/cancel`.
    pub fn of_resolution(resolution: Resolution, order: OrderId, buyer: UserId) -> Self {
        let endpoint = match resolution {
            Resolution::Confirm => "confirm",
            Resolution::Cancel => "cancel",
            Resolution::Expire => "expire",
        };
        Self::of_text(&format!("{endpoint}\norder {order}\nuser {buyer}"))
    }

    /// An admin write: its endpoint (the route's label), the id its path names, and
    /// its body written canonically (keys sorted, no spacing), so that key order and
    /// spacing do not change it.
    pub fn of_admin(endpoint: &str, id: Option<i64>, canonical_body: &str) -> Self {
        let id = id.map_or_else(|| "-".to_owned(), |id| id.to_string());
        Self::of_text(&format!("admin {endpoint}\nid {id}\n{canonical_body}"))
    }

    /// The first half of a SHA-256: 128 bits tell requests apart, and the stored key
    /// row stays small.
    fn of_text(text: &str) -> Self {
        let digest = Sha256::digest(text.as_bytes());
        let mut half = [0u8; 16];
        half.copy_from_slice(&digest[..16]);
        Self(half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ProductId;

    #[test]
    fn keys_are_visible_ascii_and_lose_their_quotes() {
        let key = IdempotencyKey::parse(b"\"abc\"").unwrap();
        assert_eq!((key.as_str(), key.as_bytes()), ("abc", &b"abc"[..]));
        assert_eq!(IdempotencyKey::parse(b"a\"b").unwrap().as_str(), "a\"b");
        assert!(IdempotencyKey::parse(&[b'k'; 255]).is_ok());
        for bad in [
            &b""[..],
            b"\"\"",
            &[b'k'; 256],
            b"with space",
            b"tab\t",
            "ключ".as_bytes(),
            b"\x7f",
        ] {
            assert_eq!(IdempotencyKey::parse(bad), Err(KeyError), "{bad:?}");
        }
    }

    #[test]
    fn the_fingerprint_is_of_the_merged_order() {
        let order = |lines: &[(i64, i64)]| {
            LockOrder::new(UserId(2), lines.iter().map(|&(p, q)| (ProductId(p), q))).unwrap()
        };
        let split = order(&[(2, 1), (1, 1), (1, 1)]);
        let merged = order(&[(1, 2), (2, 1)]);
        assert_eq!(
            Fingerprint::of_lock(&split, Some(5)),
            Fingerprint::of_lock(&merged, Some(5))
        );
        assert_ne!(
            Fingerprint::of_lock(&merged, Some(5)),
            Fingerprint::of_lock(&merged, None)
        );
        assert_ne!(
            Fingerprint::of_lock(&merged, None),
            Fingerprint::of_lock(&order(&[(1, 3), (2, 1)]), None)
        );
        assert_ne!(
            Fingerprint::of_resolution(Resolution::Confirm, OrderId(1), UserId(2)),
            Fingerprint::of_resolution(Resolution::Cancel, OrderId(1), UserId(2))
        );
    }
}
