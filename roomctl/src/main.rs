use std::process::ExitCode;

use clap::Parser;
use roomctl::admin::{self, exit};
use roomctl::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Bench(args) => roomctl::bench::run(args.clone())
            .await
            .map(|report| report.to_string())
            .map_err(admin::Failure::from),
        Command::Token(args) => roomctl::token::mint(args)
            .map_err(|e| admin::Failure { code: exit::USAGE, message: e.to_string() }),
        _ => admin::run(&cli).await,
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::from(exit::OK)
        }
        Err(failure) => {
            eprintln!("roomctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
