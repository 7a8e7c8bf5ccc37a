use std::process::ExitCode;

use clap::Parser;
use kitara::config::{Cli, Command, LogFormat};
use kitara::{db, startup, telemetry};

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
