//! How requests forwarded to one owner travel together: the body of one
//! `POST /api/v1/cluster/forward` holds several requests, and its answer streams their
//! answers back, each as soon as the owner gave it (not in order, and never one waiting
//! for another). One exchange then carries what would be one HTTP exchange per request:
//! a node forwards two requests in three on a three-node cluster, and the hop's cost is
//! mostly the exchange's, not the request's.
//!
//! A request: method, target (path and query), headers, body. An answer: the index of
//! its request in the batch, status, headers, body. Lengths are big-endian; an answer is
//! prefixed by its whole length, so that the reader knows when it has it all.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};

/// Where a node sends the requests it forwards to another.
pub const PATH: &str = "/api/v1/cluster/forward";

/// The media type of a batch and of its answer.
pub const MEDIA_TYPE: &str = "application/vnd.kitara.forward";

/// What is wrong with a batch or an answer that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed forwarded batch: {0}")]
pub struct Malformed(&'static str);

/// Appends one request to a batch.
pub fn put_request(out: &mut BytesMut, parts: &Parts, body: &[u8]) -> Result<(), Malformed> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    put_short(out, parts.method.as_str().as_bytes())?;
    put_short(out, target.as_bytes())?;
    put_headers(out, &parts.headers)?;
    put_long(out, body)
}

/// The requests of a batch, in order; a request that does not decode, or more than
/// `most` of them, refuses the whole batch.
pub fn requests(mut batch: Bytes, most: usize) -> Result<Vec<Request<Bytes>>, Malformed> {
    let mut requests = Vec::new();
    while batch.has_remaining() {
        if requests.len() == most {
            return Err(Malformed("too many requests"));
        }
        let method = Method::from_bytes(&short(&mut batch)?).map_err(|_| Malformed("method"))?;
        let target = short(&mut batch)?;
        let headers = headers(&mut batch)?;
        let body = long(&mut batch)?;
        let mut request = Request::builder()
            .method(method)
            .uri(target.as_ref())
            .body(body)
            .map_err(|_| Malformed("target"))?;
        *request.headers_mut() = headers;
        requests.push(request);
    }
    Ok(requests)
}

/// One answer, framed: its whole length, then the index of its request, the status,
/// the headers and the body.
pub fn answer(index: u32, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + body.len());
    out.put_u32(0);
    out.put_u32(index);
    out.put_u16(status.as_u16());
    // The owner's own headers are short; one too long for the frame is left out rather
    // than the answer.
    let mut kept = HeaderMap::new();
    for (name, value) in headers {
        if name.as_str().len() <= usize::from(u16::MAX) && value.len() <= usize::from(u16::MAX) {
            kept.append(name, value.clone());
        }
    }
    let _ = put_headers(&mut out, &kept);
    out.put_slice(body);
    let len = u32::try_from(out.len() - 4).unwrap_or(u32::MAX);
    out[..4].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

/// Takes the next whole answer off the front of `buffer`, with the index of its
/// request; `None` until all of it has arrived.
pub fn next_answer(buffer: &mut BytesMut) -> Result<Option<(u32, Response<Bytes>)>, Malformed> {
    if buffer.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
    if buffer.len() - 4 < len {
        return Ok(None);
    }
    buffer.advance(4);
    let mut frame = buffer.split_to(len).freeze();
    let index = take_u32(&mut frame)?;
    if frame.remaining() < 2 {
        return Err(Malformed("status"));
    }
    let status = StatusCode::from_u16(frame.get_u16()).map_err(|_| Malformed("status"))?;
    let headers = headers(&mut frame)?;
    let mut response = Response::new(frame);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(Some((index, response)))
}

fn put_headers(out: &mut BytesMut, headers: &HeaderMap) -> Result<(), Malformed> {
    let count = u16::try_from(headers.len()).map_err(|_| Malformed("too many headers"))?;
    out.put_u16(count);
    for (name, value) in headers {
        put_short(out, name.as_str().as_bytes())?;
        put_short(out, value.as_bytes())?;
    }
    Ok(())
}

fn headers(input: &mut Bytes) -> Result<HeaderMap, Malformed> {
    if input.remaining() < 2 {
        return Err(Malformed("header count"));
    }
    let count = input.get_u16();
    let mut headers = HeaderMap::with_capacity(usize::from(count));
    for _ in 0..count {
        let name = HeaderName::from_bytes(&short(input)?).map_err(|_| Malformed("header name"))?;
        let value =
            HeaderValue::from_maybe_shared(short(input)?).map_err(|_| Malformed("header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn put_short(out: &mut BytesMut, bytes: &[u8]) -> Result<(), Malformed> {
    let len = u16::try_from(bytes.len()).map_err(|_| Malformed("field too long"))?;
    out.put_u16(len);
    out.put_slice(bytes);
    Ok(())
}

fn put_long(out: &mut BytesMut, bytes: &[u8]) -> Result<(), Malformed> {
    let len = u32::try_from(bytes.len()).map_err(|_| Malformed("body too long"))?;
    out.put_u32(len);
    out.put_slice(bytes);
    Ok(())
}

fn short(input: &mut Bytes) -> Result<Bytes, Malformed> {
    if input.remaining() < 2 {
        return Err(Malformed("truncated"));
    }
    let len = usize::from(input.get_u16());
    take(input, len)
}

fn long(input: &mut Bytes) -> Result<Bytes, Malformed> {
    let len = take_u32(input)? as usize;
    take(input, len)
}

fn take_u32(input: &mut Bytes) -> Result<u32, Malformed> {
    if input.remaining() < 4 {
        return Err(Malformed("truncated"));
    }
    Ok(input.get_u32())
}

fn take(input: &mut Bytes, len: usize) -> Result<Bytes, Malformed> {
    if input.remaining() < len {
        return Err(Malformed("truncated"));
    }
    Ok(input.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, target: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::builder().method(method).uri(target);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).expect("a request").into_parts().0
    }

    #[test]
    fn requests_come_out_as_they_went_in() {
        let mut batch = BytesMut::new();
        let lock = parts(
            Method::POST,
            "/api/v1/order/lock",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "k1"),
            ],
        );
        let confirm = parts(Method::POST, "/api/v1/order/7/confirm?x=1", &[]);
        put_request(&mut batch, &lock, br#"{"user_id":1}"#).expect("encodes");
        put_request(&mut batch, &confirm, b"").expect("encodes");
        let batch = batch.freeze();
        assert_eq!(
            requests(batch.clone(), 1).err(),
            Some(Malformed("too many requests"))
        );
        let decoded = requests(batch, 2).expect("decodes");
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].method(), Method::POST);
        assert_eq!(decoded[0].uri(), "/api/v1/order/lock");
        assert_eq!(decoded[0].headers(), &lock.headers);
        assert_eq!(decoded[0].body().as_ref(), br#"{"user_id":1}"#);
        assert_eq!(decoded[1].uri(), "/api/v1/order/7/confirm?x=1");
        assert!(decoded[1].headers().is_empty());
        assert!(decoded[1].body().is_empty());
    }

    #[test]
    fn every_truncation_of_a_batch_is_refused() {
        let mut batch = BytesMut::new();
        let lock = parts(Method::POST, "/api/v1/order/lock", &[("a", "b")]);
        put_request(&mut batch, &lock, b"{}").expect("encodes");
        let batch = batch.freeze();
        for cut in 1..batch.len() {
            assert!(requests(batch.slice(..cut), 10).is_err(), "cut at {cut}");
        }
        assert_eq!(requests(Bytes::new(), 10).expect("empty").len(), 0);
    }

    #[test]
    fn a_bad_method_or_header_is_refused() {
        let mut batch = BytesMut::new();
        put_short(&mut batch, b"PO ST").expect("short");
        put_short(&mut batch, b"/").expect("short");
        batch.put_u16(0);
        put_long(&mut batch, b"").expect("long");
        assert_eq!(
            requests(batch.freeze(), 10).err(),
            Some(Malformed("method"))
        );

        let mut batch = BytesMut::new();
        put_short(&mut batch, b"POST").expect("short");
        put_short(&mut batch, b"/").expect("short");
        batch.put_u16(1);
        put_short(&mut batch, b"bad name").expect("short");
        put_short(&mut batch, b"v").expect("short");
        put_long(&mut batch, b"").expect("long");
        assert_eq!(
            requests(batch.freeze(), 10).err(),
            Some(Malformed("header name"))
        );
    }

    #[test]
    fn answers_are_read_whole_however_they_are_cut() {
        let mut headers = HeaderMap::new();
        headers.insert("kitara-node", HeaderValue::from_static("n2"));
        let first = answer(3, StatusCode::OK, &headers, b"{\"code\":200}");
        let second = answer(0, StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), b"");
        let stream = [first, second].concat();
        for cut in 0..=stream.len() {
            let mut buffer = BytesMut::from(&stream[..cut]);
            let mut got = Vec::new();
            while let Some(answer) = next_answer(&mut buffer).expect("well formed") {
                got.push(answer);
            }
            buffer.extend_from_slice(&stream[cut..]);
            while let Some(answer) = next_answer(&mut buffer).expect("well formed") {
                got.push(answer);
            }
            assert!(buffer.is_empty());
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(got[0].0, 3);
            assert_eq!(got[0].1.status(), StatusCode::OK);
            assert_eq!(got[0].1.headers()["kitara-node"], "n2");
            assert_eq!(got[0].1.body().as_ref(), b"{\"code\":200}");
            assert_eq!(got[1].0, 0);
            assert_eq!(got[1].1.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(got[1].1.body().is_empty());
        }
    }

    #[test]
    fn a_header_too_long_for_a_frame_is_left_out_not_the_answer() {
        let mut headers = HeaderMap::new();
        headers.insert("kitara-node", HeaderValue::from_static("n2"));
        let long = HeaderValue::from_str(&"x".repeat(70_000)).expect("a value");
        headers.insert("x-long", long);
        let mut frame = BytesMut::from(&answer(1, StatusCode::OK, &headers, b"{}")[..]);
        let (index, answer) = next_answer(&mut frame).expect("decodes").expect("whole");
        assert_eq!(index, 1);
        assert_eq!(answer.headers()["kitara-node"], "n2");
        assert!(!answer.headers().contains_key("x-long"));
        assert_eq!(answer.body().as_ref(), b"{}");
    }

    #[test]
    fn an_empty_last_header_and_an_empty_body_decode() {
        let mut headers = HeaderMap::new();
        headers.insert("x-empty", HeaderValue::from_static(""));
        let mut frame = BytesMut::from(&answer(0, StatusCode::NO_CONTENT, &headers, b"")[..]);
        let (_, answer) = next_answer(&mut frame).expect("decodes").expect("whole");
        assert_eq!(answer.headers()["x-empty"], "");
        assert!(answer.body().is_empty());
    }

    #[test]
    fn a_frame_too_short_for_its_fields_is_refused() {
        // Length 0: not even an index.
        let mut empty = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(next_answer(&mut empty).err(), Some(Malformed("truncated")));
        // An index and no status.
        let mut frame = BytesMut::new();
        frame.put_u32(4);
        frame.put_u32(0);
        assert_eq!(next_answer(&mut frame).err(), Some(Malformed("status")));
        // An index and a status, no header count.
        let mut frame = BytesMut::new();
        frame.put_u32(6);
        frame.put_u32(0);
        frame.put_u16(200);
        assert_eq!(
            next_answer(&mut frame).err(),
            Some(Malformed("header count"))
        );
    }

    #[test]
    fn an_answer_with_a_bad_status_is_refused() {
        let mut frame = BytesMut::new();
        frame.put_u32(6);
        frame.put_u32(0);
        frame.put_u16(1000);
        assert_eq!(next_answer(&mut frame).err(), Some(Malformed("status")));
    }
}
