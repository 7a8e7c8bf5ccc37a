//! Logging. `KITARA_LOG` takes a tracing filter (`info`, `kitara=debug,sqlx=warn`).

use tracing_subscriber::Registry;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// What is logged when `KITARA_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,sea_orm=warn";

/// Installs the global subscriber; a second call (tests) is a no-op.
///
/// A filter of targets and levels only (the default, `info,kitara=debug`, ...) is a
/// static `Targets` filter: every request opens a span for its request id, and
/// `EnvFilter` takes a lock on each enter and exit of a span to check its span
/// directives. Only a filter that has some (`kitara[request]=debug`) pays for them.
pub fn init(format: LogFormat) {
    let text = std::env::var("KITARA_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_owned());
    match text.parse::<Targets>() {
        Ok(targets) => install(targets, format),
        Err(_) => install(
            EnvFilter::try_new(&text).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER)),
            format,
        ),
    }
}

fn install<F: Layer<Registry> + Send + Sync + 'static>(filter: F, format: LogFormat) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let subscriber = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => subscriber
            .with(tracing_subscriber::fmt::layer().with_ansi(ansi))
            .try_init(),
        LogFormat::Json => subscriber
            .with(tracing_subscriber::fmt::layer().json())
            .try_init(),
    };
}
