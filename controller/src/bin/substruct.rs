//! `substruct`: the admin CLI, a thin wrapper over [`substruct_controller::cli`].

use clap::Parser;
use substruct_controller::cli::{self, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match cli::run(args, &mut stdout).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("substruct: {}", substruct_controller::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
