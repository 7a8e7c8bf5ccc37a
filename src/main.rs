//! The `kitara` binary: parses the command line, sets up logging, and runs one of
//! `serve`, `migrate`, `check` or `simulate`; the work lives in the library.

use std::process::ExitCode;

use clap::Parser;
use kitara::config::{Cli, Command, LogFormat};
use kitara::db::check::Balance;
use kitara::startup::StartupError;
use kitara::{db, startup, telemetry};

/// Every lock request allocates a little (its parsed body, its answer, its trip through
/// the store actor and the writer) on two or more threads at once; with glibc's malloc
/// that cost about a tenth of the order path's CPU. The flash-sale benchmark uses the
/// same allocator, so it measures Kitara as shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Flags > environment > .env > defaults: `.env` never overrides the environment.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(settings) => {
            telemetry::init(settings.log_format);
            startup::runtime(settings.worker_threads)
                .map_err(StartupError::Runtime)
                .and_then(|runtime| runtime.block_on(startup::serve(settings)))
        }
        Command::Migrate(args) => {
            telemetry::init(LogFormat::Text);
            current_thread().and_then(|runtime| {
                runtime
                    .block_on(db::migrate(&args.database, !args.no_demo))
                    .map_err(StartupError::from)
            })
        }
        Command::Simulate(args) => {
            let simulated = startup::runtime(0)
                .map_err(|e| kitara::simulate::SimulateError::Usage(e.to_string()))
                .and_then(|runtime| runtime.block_on(kitara::simulate::run(args)));
            return match simulated {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("kitara simulate: {error}");
                    ExitCode::from(error.exit_code())
                }
            };
        }
        Command::Check(args) => {
            let checked = current_thread().and_then(|runtime| {
                runtime
                    .block_on(db::check(&args.database))
                    .map_err(StartupError::from)
            });
            return match checked {
                Ok((balances, orphans)) => report(&balances, &orphans),
                Err(error) => {
                    eprintln!("kitara check: {error}");
                    ExitCode::from(2)
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kitara: {error}");
            ExitCode::FAILURE
        }
    }
}

fn current_thread() -> Result<tokio::runtime::Runtime, StartupError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartupError::Runtime)
}

/// `kitara check`'s verdict: every product whose equation fails, then a summary line,
/// and the keys whose order is missing; exit 1 if anything fails.
fn report(balances: &[Balance], orphans: &[i64]) -> ExitCode {
    let failed: Vec<&Balance> = balances.iter().filter(|b| !b.holds()).collect();
    for balance in &failed {
        kitara::say!("{balance}");
    }
    if !orphans.is_empty() {
        kitara::say!(
            "kitara check: {} idempotency key(s) name an order that does not exist (a transaction kept in part): orders {orphans:?}",
            orphans.len()
        );
    }
    if failed.is_empty() && orphans.is_empty() {
        kitara::say!(
            "kitara check: all {} products add up (current_stock = ledger - live order units)",
            balances.len()
        );
        ExitCode::SUCCESS
    } else {
        if !failed.is_empty() {
            kitara::say!(
                "kitara check: {} of {} products do not add up",
                failed.len(),
                balances.len()
            );
        }
        ExitCode::from(1)
    }
}
