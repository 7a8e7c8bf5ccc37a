//! README.md's examples are what a new user runs first: this test runs them, in the
//! order they appear, against one live Kitara (a fresh SQLite database with the demo
//! data, the admin token of the README), and compares each answer with the one shown.
//!
//! An example is a `$ …` line of a `console` block (a line ending in `\` goes on) and
//! the lines below it up to the next `$`. `curl` is sent over HTTP, `sleep` sleeps,
//! `kitara check` runs the binary on the test's database. What must vary is masked:
//! `server_time`, `created_at` and `expires_at` (only whether it is null is compared),
//! the `date`, `x-request-id` and `kitara-node` headers. Everything else is compared: the status line,
//! the other headers, `code`, `message` and `data` in full. An example the test cannot
//! run (a restart, the database down, another tool) says so on its command line, with
//! a comment that starts `# not run by the README test:`; any other command fails the
//! test.
//!
//! `trycmd` and `snapbox` test a document's commands one process at a time; README's
//! examples are mostly HTTP requests to one server whose state carries from each to the
//! next (a lock, then its confirm, then the listing), so this runner sends them itself,
//! and runs the few `kitara` commands in the same sequence with the same masking.
//!
//! `KITARA_README=overwrite cargo test readme` writes the answers Kitara gives into
//! README.md instead of comparing: for a change of the answers, reviewed in the diff.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::helpers::{Backend, TestDb, spawn_app_with};

/// The token the README's admin examples use.
const TOKEN: &str = "change-me-to-a-long-secret";
/// What marks an example the test does not run.
const NOT_RUN: &str = "# not run by the README test:";

/// One example: the command, and the answer shown below it.
#[derive(Debug)]
struct Example {
    /// The line of the README the command starts on (1-based).
    line: usize,
    command: String,
    /// The lines of the answer shown: `expected.0` is the first line's index.
    expected: (usize, Vec<String>),
}

/// The examples of `readme`, in order.
fn examples(readme: &str) -> Vec<Example> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut examples = Vec::new();
    let mut in_console = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if !in_console {
            in_console = line.trim_end() == "```console";
            i += 1;
            continue;
        }
        if line.starts_with("```") {
            in_console = false;
            i += 1;
            continue;
        }
        let Some(first) = line.strip_prefix("$ ") else {
            panic!(
                "README.md:{}: a console line outside an example: {line}",
                i + 1
            );
        };
        let start = i;
        let mut command = first.to_owned();
        while command.ends_with('\\') {
            command.pop();
            i += 1;
            command.push(' ');
            command.push_str(lines[i].trim());
        }
        i += 1;
        let from = i;
        let mut expected = Vec::new();
        while i < lines.len() && !lines[i].starts_with("$ ") && !lines[i].starts_with("```") {
            expected.push(lines[i].to_owned());
            i += 1;
        }
        examples.push(Example {
            line: start + 1,
            command,
            expected: (from, expected),
        });
    }
    examples
}

/// Splits a command as a POSIX shell would for these examples: quotes, `$NAME` inside
/// double quotes, and a trailing comment (returned apart).
fn words(command: &str, env: &HashMap<&str, &str>) -> (Vec<String>, Option<String>) {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '$' => {
                            let mut name = String::new();
                            while let Some(&n) = chars.peek() {
                                if !(n.is_ascii_alphanumeric() || n == '_') {
                                    break;
                                }
                                name.push(n);
                                chars.next();
                            }
                            let value = env.get(name.as_str()).unwrap_or_else(|| {
                                panic!("${name} is not set in the README's examples")
                            });
                            word.push_str(value);
                        }
                        '\\' => word.extend(chars.next()),
                        c => word.push(c),
                    }
                }
            }
            '#' if !in_word => {
                let comment: String = std::iter::once('#').chain(chars).collect();
                return (words, Some(comment));
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    (words, None)
}

/// What `curl` was asked to do.
struct Curl {
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    /// `-i`: the status line and headers are shown too.
    include: bool,
}

impl Curl {
    fn parse(args: &[String]) -> Self {
        let (mut method, mut path, mut headers, mut body, mut include) =
            (None, None, Vec::new(), None, false);
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "-s" | "-N" => {}
                "-si" | "-is" | "-i" => include = true,
                "-X" => method = args.next().map(|m| m.parse::<Method>().expect("method")),
                "-H" => {
                    let header = args.next().expect("a header after -H");
                    let (name, value) = header.split_once(':').expect("a header is name: value");
                    headers.push((name.trim().to_owned(), value.trim().to_owned()));
                }
                "-d" | "--data" => body = args.next().cloned(),
                flag if flag.starts_with('-') => panic!("curl {flag} is not known to the test"),
                url => {
                    let rest = url
                        .trim_start_matches("http://")
                        .trim_start_matches("localhost:6071")
                        .trim_start_matches("127.0.0.1:6071");
                    path = Some(rest.to_owned());
                }
            }
        }
        // curl -d sends a form unless told otherwise.
        if body.is_some()
            && !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            headers.push((
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
        }
        let method = method.unwrap_or(if body.is_some() {
            Method::POST
        } else {
            Method::GET
        });
        Curl {
            method,
            path: path.expect("curl names a URL"),
            headers,
            body,
            include,
        }
    }

    /// Sends it; answers the lines curl would print.
    async fn run(&self, addr: std::net::SocketAddr) -> Vec<String> {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(format!("http://{addr}{}", self.path));
        for (name, value) in &self.headers {
            request = request.header(
                name.as_str(),
                hyper::header::HeaderValue::from_bytes(value.as_bytes()).expect("header"),
            );
        }
        let body = Bytes::from(self.body.clone().unwrap_or_default());
        let response = client
            .request(request.body(Full::new(body)).unwrap())
            .await
            .expect("Kitara answers");
        let mut lines = Vec::new();
        if self.include {
            let status = response.status();
            lines.push(format!(
                "HTTP/1.1 {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or_default()
            ));
            for (name, value) in response.headers() {
                lines.push(format!("{name}: {}", value.to_str().unwrap_or_default()));
            }
            lines.push(String::new());
        }
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        lines.push(String::from_utf8_lossy(&bytes).into_owned());
        lines
    }
}

/// Whether an answer agrees with the one shown, up to what must vary; the difference
/// if not.
fn differs(shown: &[String], got: &[String]) -> Option<String> {
    if shown.len() != got.len() {
        return Some(format!(
            "{} lines shown, {} answered",
            shown.len(),
            got.len()
        ));
    }
    for (shown, got) in shown.iter().zip(got) {
        let same = match (
            serde_json::from_str::<Value>(shown),
            serde_json::from_str::<Value>(got),
        ) {
            (Ok(shown), Ok(got)) => same_json(&shown, &got, ""),
            _ => same_header(shown, got),
        };
        if !same {
            return Some(format!("shown: {shown}\n     got: {got}"));
        }
    }
    None
}

fn same_header(shown: &str, got: &str) -> bool {
    match (shown.split_once(": "), got.split_once(": ")) {
        (Some((a, _)), Some((b, _)))
            if a == b && (a == "date" || a == "x-request-id" || a == "kitara-node") =>
        {
            true
        }
        _ => shown == got,
    }
}

fn same_json(shown: &Value, got: &Value, key: &str) -> bool {
    match key {
        "server_time" | "created_at" => return shown.is_string() && got.is_string(),
        "expires_at" => return shown.is_null() == got.is_null(),
        _ => {}
    }
    match (shown, got) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| same_json(v, w, k)))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(v, w)| same_json(v, w, ""))
        }
        _ => shown == got,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_of_the_readme_answers_as_shown() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let overwrite = std::env::var("KITARA_README").as_deref() == Ok("overwrite");
    let db = TestDb::with_demo_data(Backend::Sqlite).await;
    let app = spawn_app_with(&db, |s| s.admin_token = Some(TOKEN.into())).await;
    let env = HashMap::from([("KITARA_ADMIN_TOKEN", TOKEN)]);

    let examples = examples(&readme);
    let mut lines: Vec<String> = readme.lines().map(str::to_owned).collect();
    let mut rewritten: Vec<(usize, usize, Vec<String>)> = Vec::new();
    let (mut ran, mut skipped, mut failed) = (0, 0, Vec::new());
    for example in &examples {
        let (words, comment) = words(&example.command, &env);
        if comment.as_deref().is_some_and(|c| c.starts_with(NOT_RUN)) {
            skipped += 1;
            println!("README.md:{}: not run: {}", example.line, example.command);
            continue;
        }
        let got = match words.first().map(String::as_str) {
            Some("curl") => Curl::parse(&words[1..]).run(app.addr).await,
            Some("sleep") => {
                let seconds: u64 = words[1].parse().expect("sleep N");
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                Vec::new()
            }
            Some("kitara") => {
                let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kitara"))
                    .args(&words[1..])
                    .env("DATABASE_URL", &db.url)
                    .output()
                    .await
                    .expect("run kitara");
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            }
            _ => panic!(
                "README.md:{}: the test cannot run `{}`: mark it `{NOT_RUN} <why>`",
                example.line, example.command
            ),
        };
        ran += 1;
        let (from, shown) = &example.expected;
        if overwrite {
            rewritten.push((*from, shown.len(), got));
        } else if let Some(difference) = differs(shown, &got) {
            failed.push(format!(
                "README.md:{}: $ {}\n     {difference}",
                example.line, example.command
            ));
        }
    }
    println!(
        "{ran} examples run, {skipped} not run, {} differ",
        failed.len()
    );
    if overwrite {
        for (from, len, got) in rewritten.into_iter().rev() {
            lines.splice(from..from + len, got);
        }
        std::fs::write(path, lines.join("\n") + "\n").expect("write README.md");
        println!("README.md rewritten with the answers given");
    }
    assert!(
        failed.is_empty(),
        "README examples that do not answer as shown:\n{}",
        failed.join("\n")
    );
    assert!(ran >= 30, "only {ran} examples ran");
    app.stop().await;
    db.drop_database().await;
}

#[test]
fn commands_split_as_a_shell_splits_them() {
    let env = HashMap::from([("T", "secret")]);
    let (words, comment) = words(
        r#"curl -s -H "Authorization: Bearer $T" -d '{"a": 1}' x   # not run by it: why"#,
        &env,
    );
    assert_eq!(
        words,
        [
            "curl",
            "-s",
            "-H",
            "Authorization: Bearer secret",
            "-d",
            r#"{"a": 1}"#,
            "x"
        ]
    );
    assert_eq!(comment.as_deref(), Some("# not run by it: why"));
}

/// `.env.example` documents every key `kitara serve` reads, each with the default it has,
/// and names no key it does not read.
#[test]
fn env_example_names_every_key_with_its_default_and_no_other() {
    use clap::CommandFactory;
    use std::collections::BTreeMap;

    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example"))
        .expect(".env.example");
    // `# KEY=value` (commented out, as every default is) or `KEY=value`; a key may be
    // shown twice (an example and the default).
    let mut documented: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some((key, value)) = line.split_once('=')
            && !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            documented
                .entry(key.to_owned())
                .or_default()
                .push(value.to_owned());
        }
    }

    let cli = kitara::config::Cli::command();
    let serve = cli.find_subcommand("serve").expect("serve");
    let mut read: BTreeMap<String, String> = serve
        .get_arguments()
        .filter_map(|arg| {
            let key = arg.get_env()?.to_string_lossy().into_owned();
            let default = arg
                .get_default_values()
                .first()
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_default();
            Some((key, default))
        })
        .collect();
    // Read by the logging set-up rather than clap.
    read.insert(
        "KITARA_LOG".into(),
        kitara::telemetry::DEFAULT_FILTER.into(),
    );

    for (key, default) in &read {
        let shown = documented
            .get(key)
            .unwrap_or_else(|| panic!("{key} is read but .env.example does not name it"));
        assert!(
            shown.contains(default),
            "{key}: the default is {default:?}, .env.example shows {shown:?}"
        );
    }
    for key in documented.keys() {
        assert!(
            read.contains_key(key),
            ".env.example names {key}, which kitara serve does not read"
        );
    }
}
