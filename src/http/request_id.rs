//! `X-Request-Id`: the client's, if it is 1 to 128 visible ASCII characters, otherwise
//! one Kitara makes. It goes back in the answer and on every log line of the request
//! (as the field `request_id` of the span `request`, in text and JSON logs alike).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client id Kitara keeps.
const MAX_LEN: usize = 128;

/// The request's id, as it goes in the answer's header.
pub fn of(headers: &HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(X_REQUEST_ID).iter();
    match (values.next(), values.next()) {
        (Some(value), None) if sane(value.as_bytes()) => value.clone(),
        _ => make(),
    }
}

fn sane(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len()) && id.iter().all(u8::is_ascii_graphic)
}

/// A new id: this process's start (a random-enough prefix across restarts and
/// processes) and a counter, in hexadecimal. No allocation beyond the header's.
fn make() -> HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = *PREFIX.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16))
            .unwrap_or_default();
        nanos ^ std::process::id().rotate_left(8)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 25];
    for (i, byte) in id[..8].iter_mut().enumerate() {
        *byte = HEX[((prefix >> (28 - 4 * i)) & 0xf) as usize];
    }
    id[8] = b'-';
    for (i, byte) in id[9..].iter_mut().enumerate() {
        *byte = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("kitara"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(X_REQUEST_ID, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    #[test]
    fn a_sane_client_id_is_kept_and_any_other_replaced() {
        assert_eq!(of(&with(&[b"checkout-42"])), "checkout-42");
        let longest = "a".repeat(128);
        assert_eq!(of(&with(&[longest.as_bytes()])), longest.as_str());
        let made = [
            of(&HeaderMap::new()),
            of(&with(&["a".repeat(129).as_bytes()])),
            of(&with(&["caf\u{e9}".as_bytes()])),
            of(&with(&[b"two words"])),
            of(&with(&[b"one", b"two"])),
        ];
        for id in &made {
            let id = id.to_str().unwrap();
            assert_eq!(id.len(), 25, "{id}");
            assert!(
                id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
                "{id}"
            );
        }
        assert_ne!(made[0], made[1], "each made id is new");
    }
}
