//! Query strings, read one way for every endpoint: only the parameters the endpoint
//! knows, each at most once (a repeated one is refused, not picked), ids as plain ASCII
//! digits; the others are ignored, as SPEC.md's bad-input rules say.

use std::borrow::Cow;
use std::ops::RangeInclusive;

use super::response::ApiError;

/// The known parameters of one request's query string.
#[derive(Debug, Default)]
pub struct Query<'q> {
    params: Vec<(&'static str, Cow<'q, str>)>,
}

impl<'q> Query<'q> {
    /// Reads the parameters of `query` that are `known`; a known one given twice is a
    /// 400 naming it.
    pub fn parse(query: Option<&'q str>, known: &[&'static str]) -> Result<Self, ApiError> {
        let mut params: Vec<(&'static str, Cow<'q, str>)> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let Some(&name) = known.iter().find(|&&k| k == key) else {
                continue;
            };
            if params.iter().any(|(k, _)| *k == name) {
                return Err(ApiError::BadRequest(format!(
                    "{name} must be given at most once"
                )));
            }
            params.push((name, value));
        }
        Ok(Self { params })
    }

    /// Whether the query names none of the known parameters.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_ref())
    }

    /// The value of `name` as an integer in `range`, written in ASCII digits alone (no
    /// sign, no space); an empty value breaks the rule too.
    pub fn integer(&self, name: &str, range: RangeInclusive<i64>) -> Result<Option<i64>, ApiError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
        digits
            .then(|| value.parse::<i64>().ok())
            .flatten()
            .filter(|n| range.contains(n))
            .map(Some)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{name} must be an integer between {} and {}",
                    range.start(),
                    range.end()
                ))
            })
    }
}

/// The message of a 400, for the tests of what the edge refuses.
#[cfg(test)]
pub(super) fn refusal(result: Result<impl std::fmt::Debug, ApiError>) -> String {
    match result {
        Err(ApiError::BadRequest(message)) => message,
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_parameters_are_read_once_and_the_others_ignored() {
        let query = Query::parse(Some("a=1&x=2&x=3&b=%31%32"), &["a", "b", "c"]).unwrap();
        assert_eq!(query.get("a"), Some("1"));
        assert_eq!(query.integer("b", 0..=99).unwrap(), Some(12));
        assert_eq!(query.get("x"), None);
        assert_eq!(query.integer("c", 0..=9).unwrap(), None);
        assert!(Query::parse(None, &["a"]).unwrap().is_empty());
        assert!(Query::parse(Some("x=1"), &["a"]).unwrap().is_empty());
        let twice = Query::parse(Some("a=1&a=1"), &["a"]);
        assert_eq!(refusal(twice), "a must be given at most once");
    }

    #[test]
    fn an_integer_is_plain_ascii_digits_within_its_range() {
        let max = i64::MAX.to_string();
        let query = format!("v={max}");
        assert_eq!(
            Query::parse(Some(&query), &["v"])
                .unwrap()
                .integer("v", 0..=i64::MAX)
                .unwrap(),
            Some(i64::MAX)
        );
        for bad in [
            "v=",
            "v",
            "v=-0",
            "v=+1",
            "v=1.0",
            "v=1e3",
            "v=%201",
            "v=0x10",
            "v=٣",
            "v=1001",
            "v=9223372036854775808",
        ] {
            let query = Query::parse(Some(bad), &["v"]).unwrap();
            assert_eq!(
                refusal(query.integer("v", 0..=1000)),
                "v must be an integer between 0 and 1000",
                "{bad}"
            );
        }
    }
}
