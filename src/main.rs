//! The `garrison` binary: see `garrison --help` and the README.

use clap::{CommandFactory, FromArgMatches};

#[tokio::main]
async fn main() {
    garrison::logging::init();
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
