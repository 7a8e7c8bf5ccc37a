use std::process::ExitCode;

use clap::Parser;
use kitara::config::{Cli, Command, LogFormat};
use kitara::{db, startup, telemetry};

/// Every lock request allocates a little (its parsed body, its answer, its trip through
/// the store actor and the writer) on two or more threads at once; with glibc's malloc
/// that cost about a tenth of the order path's CPU. The flash-sale benchmark uses the
/// same allocator, so it measures Kitara as shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // Flags > environment > .env > defaults: `.env` never overrides the environment.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(settings) => {
            telemetry::init(settings.log_format);
            startup::serve(settings).await
        }
        Command::Migrate(args) => {
            telemetry::init(LogFormat::Text);
            db::migrate(&args.database, !args.no_demo).await
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
