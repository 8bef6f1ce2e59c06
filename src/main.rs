//! The `garrison` binary: see `garrison --help` and the README.

use clap::{CommandFactory, FromArgMatches};

#[tokio::main]
async fn main() {
    let matches = garrison::cli::Cli::command().get_matches();
    let cli = match garrison::cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    garrison::logging::init(matches!(
        cli.command,
        garrison::cli::Command::Node { .. } | garrison::cli::Command::Dev(_)
    ));
    match garrison::cli::run(cli, &matches).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
