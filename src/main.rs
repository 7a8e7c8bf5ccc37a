use std::process::ExitCode;

use clap::Parser;
use kitara::config::{Cli, Command, LogFormat};
use kitara::error::StartupError;
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
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(StartupError::Runtime)
                .and_then(|runtime| runtime.block_on(db::migrate(&args.database, !args.no_demo)))
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
