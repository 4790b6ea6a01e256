//! The `sentinel-proxy` binary. Run `sentinel-proxy --help` for every setting.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use sentinel_proxy::settings::{Cli, Settings};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli, &|name| std::env::var(name).ok()) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "sentinel-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let level = match settings.log.as_str() {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    // Register the signal handlers before serving, so a SIGTERM that comes
    // right after start-up drains instead of killing the process.
    let signals = Signals::install();
    let demo = settings.demo;
    let proxy = match sentinel_proxy::start(settings).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "sentinel-proxy could not start");
            let _ = writeln!(std::io::stderr(), "sentinel-proxy: {e}");
            return ExitCode::from(1);
        }
    };
    let addr = proxy.addr();
    tracing::info!(%addr, demo, "sentinel-proxy listening");
    if demo {
        let _ = writeln!(std::io::stdout(), "{}", demo_banner(addr));
    }

    signals.wait().await;
    tracing::info!("shutting down: draining in-flight requests");
    proxy.shutdown();
    match proxy.wait().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server error");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM and SIGINT, registered when created.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    async fn wait(self) {
        #[cfg(unix)]
        {
            let (mut term, mut int) = (self.term, self.int);
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            };
            tokio::select! {
                () = term => {}
                () = int => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn demo_banner(addr: std::net::SocketAddr) -> String {
    format!(
        r#"
Sentinel demo: a mock OpenAI upstream, the built-in tiers, memory caches.
Try:

  curl -s http://{addr}/v1/chat/completions -H 'content-type: application/json' \
    -d '{{"tier":"moderate","messages":[{{"role":"user","content":"Hello"}}]}}' -i

  curl -sN http://{addr}/v1/chat/completions -H 'content-type: application/json' \
    -H 'x-sentinel-session: demo-1' \
    -d '{{"model":"complex","stream":true,"messages":[{{"role":"user","content":"Stream please"}}]}}'

  curl -s http://{addr}/v1/models
  curl -s http://{addr}/metrics | grep sentinel_

Press Ctrl-C to stop.
"#
    )
}
