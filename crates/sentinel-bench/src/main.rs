//! `sentinel-bench`: the load harness behind `scripts/bench`.
//!
//! Three roles in one binary, each its own process during a run so that
//! each one's CPU time can be read apart:
//!
//! - `sentinel-bench upstream`: a fast mock OpenAI upstream (chat
//!   completions as JSON or SSE, and `/models`);
//! - `sentinel-bench passthrough`: a bare pass-through proxy written with
//!   hyper, the floor for any extra hop;
//! - `sentinel-bench run`: the driver. It starts the two above, a
//!   `redis-server` and two `sentinel-proxy` processes (memory backends,
//!   Redis sessions), with `--baseline` a third (an older build, memory
//!   backends), drives each with `oha`, and prints one table;
//! - `sentinel-bench soak`: the reliability run behind `scripts/soak`. It
//!   starts a fault-injecting mock upstream and a flapping mock Zion
//!   (inside the harness), a `redis-server` it restarts mid-run, and one
//!   `sentinel-proxy`, drives mixed JSON and SSE load, and checks what the
//!   client saw against the proxy's metrics and log.
//!
//! See `BENCHMARKS.md` and `RELIABILITY.md` at the root of the repository
//! for the methods.

mod driver;
mod oha;
mod passthrough;
mod procfs;
mod soak;
mod soak_client;
mod soak_upstream;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "sentinel-bench", about = "Sentinel's load harness.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the mock OpenAI upstream.
    Upstream {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Serve the bare hyper pass-through proxy in front of `upstream`.
    Passthrough {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// The upstream's base URL, e.g. `http://127.0.0.1:9000`.
        #[arg(long)]
        upstream: String,
    },
    /// Run the whole benchmark and print the table.
    Run(driver::Options),
    /// Run the soak: faults, chaos and load for a few minutes, then a verdict.
    Soak(soak::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Upstream { listen } => serve(upstream::serve(listen)),
        Command::Passthrough { listen, upstream } => serve(passthrough::serve(listen, upstream)),
        Command::Run(options) => driver::run(&options),
        Command::Soak(options) => soak::run(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sentinel-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a server on a multi-threaded runtime with one worker per core, as
/// `sentinel-proxy` does.
fn serve(server: impl std::future::Future<Output = std::io::Result<()>>) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(server).map_err(|e| e.to_string())
}

/// Where the `sentinel-proxy` binary is by default: next to this one.
fn sibling(name: &str) -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    Some(me.with_file_name(name))
}
