//! The `garrison` binary: see `garrison --help` and the README.

use clap::{CommandFactory, FromArgMatches};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GARRISON_LOG")
                .unwrap_or_else(|_| "warn,garrison=info,openraft=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let matches = garrison::cli::Cli::command().get_matches();
    let cli = match garrison::cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match garrison::cli::run(cli, &matches).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
