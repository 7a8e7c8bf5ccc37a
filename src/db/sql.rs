//! SQL text built from values Kitara produced, never from a client's text: the batch's
//! statements (`persist`), the outbox's rows (`events`) and the ownership table's
//! looks (`owners`).

use std::fmt::Write as _;

use crate::domain::{Deadline, NodeId, OrderStatus};

/// A transaction token: lowercase hexadecimal digits and dashes only, so it can be
/// written into SQL text as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token(pub(super) String);

impl Token {
    pub fn new(parts: &[u128]) -> Self {
        let text = parts
            .iter()
            .map(|p| format!("{p:x}"))
            .collect::<Vec<_>>()
            .join("-");
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// SQL text that only ever receives values Kitara produced: integers, Kitara's
/// hexadecimal tokens, its own status words and timestamps, and bytes written as
/// hexadecimal literals (`persist`'s module doc says why batches are text).
pub(crate) struct Sql(pub(super) String);

impl Sql {
    pub(crate) fn new(head: &str) -> Self {
        Self(String::from(head))
    }

    pub(crate) fn text(&mut self, text: &'static str) -> &mut Self {
        self.0.push_str(text);
        self
    }

    pub(crate) fn int(&mut self, value: i64) -> &mut Self {
        let _ = write!(self.0, "{value}");
        self
    }

    /// A node id, quoted: `NodeId` admits only letters, digits and `._:-`.
    pub(crate) fn node(&mut self, node: &NodeId) -> &mut Self {
        let _ = write!(self.0, "'{}'", node.as_str());
        self
    }

    pub(super) fn token(&mut self, token: &Token) -> &mut Self {
        let _ = write!(self.0, "'{}'", token.0);
        self
    }

    pub(super) fn status(&mut self, status: OrderStatus) -> &mut Self {
        let _ = write!(self.0, "'{}'", status.as_str());
        self
    }

    /// A UTC timestamp, `'YYYY-MM-DD HH:MM:SS'`, or `NULL`.
    pub(super) fn timestamp(&mut self, at: Option<Deadline>) -> &mut Self {
        use chrono::{Datelike, Timelike};
        match at.and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0)) {
            // Its fields, not `format`: parsing a format string per order shows up
            // in the writer's profile.
            Some(at) => {
                let _ = write!(
                    self.0,
                    "'{:04}-{:02}-{:02} {:02}:{:02}:{:02}'",
                    at.year(),
                    at.month(),
                    at.day(),
                    at.hour(),
                    at.minute(),
                    at.second()
                );
            }
            None => self.0.push_str("NULL"),
        }
        self
    }

    /// Bytes as a hexadecimal literal (`X'4b'`), which SQLite and MySQL both read.
    pub(crate) fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.0.reserve(bytes.len() * 2 + 3);
        self.0.push_str("X'");
        for &byte in bytes {
            self.0.push(HEX[usize::from(byte >> 4)] as char);
            self.0.push(HEX[usize::from(byte & 0xf)] as char);
        }
        self.0.push('\'');
        self
    }

    /// `(a, b, c)` for one row of integers.
    pub(super) fn row(&mut self, first: bool, values: &[i64]) -> &mut Self {
        self.text(if first { "(" } else { ", (" });
        for (i, &value) in values.iter().enumerate() {
            if i > 0 {
                self.text(", ");
            }
            self.int(value);
        }
        self.text(")")
    }

    /// `a, b, c`
    pub(crate) fn list(&mut self, values: impl IntoIterator<Item = i64>) -> &mut Self {
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.text(", ");
            }
            self.int(value);
        }
        self
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}
