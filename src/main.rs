//! The `tailpass` binary: parses the command line, sets up logging, and hands over to the
//! library.

use clap::Parser as _;

/// mimalloc: the server allocates many small, short-lived buffers per request (JSON, JWS
/// assembly), where it measured faster than the system allocator (see the README's figures).
/// Built with `no_thp`: otherwise mimalloc asks for transparent huge pages for its arenas,
/// and an idle server's few live allocations pin whole 2 MiB pages (14 of an idle 31 MB).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tailpass::cli::{Cli, Command};
use tailpass::config::LogFormat;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("TAILPASS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: journald and log shippers get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Serve(args) => match tailpass::config::resolve(&cli.global, &args) {
            Ok(settings) => {
                init_logging(settings.log_format);
                tailpass::server::run(settings)
                    .await
                    .map_err(anyhow::Error::from)
            }
            Err(e) => Err(e.into()),
        },
        Command::Keys { action } => {
            init_logging(LogFormat::Text);
            tailpass::commands::keys(&cli.global, action)
                .await
                .map_err(anyhow::Error::from)
        }
        Command::Clients { action } => {
            init_logging(LogFormat::Text);
            tailpass::commands::clients(&cli.global, action)
                .await
                .map_err(anyhow::Error::from)
        }
        Command::Token(args) => tailpass::commands::token::token(args)
            .await
            .map_err(anyhow::Error::from),
        Command::Revoke(args) => {
            init_logging(LogFormat::Text);
            tailpass::commands::revoke(&cli.global, args)
                .await
                .map_err(anyhow::Error::from)
        }
        Command::Verify(args) => tailpass::commands::verify::verify(args)
            .await
            .map_err(anyhow::Error::from),
        Command::Gateway(args) => {
            init_logging(LogFormat::Text);
            tailpass::gateway::run(&cli.global, &args)
                .await
                .map_err(anyhow::Error::from)
        }
        Command::Policy { action } => {
            init_logging(LogFormat::Text);
            return match tailpass::commands::policy::policy(&cli.global, action).await {
                Ok(tailpass::commands::policy::Verdict::Yes) => std::process::ExitCode::SUCCESS,
                Ok(tailpass::commands::policy::Verdict::No) => std::process::ExitCode::from(1),
                Err(e) => {
                    eprintln!("tailpass: {e}");
                    std::process::ExitCode::from(2)
                }
            };
        }
        Command::Store { action } => {
            init_logging(LogFormat::Text);
            tailpass::commands::store::store(action)
                .await
                .map_err(anyhow::Error::from)
        }
        Command::Audit(args) => {
            init_logging(LogFormat::Text);
            tailpass::commands::audit(&cli.global, args)
                .await
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailpass: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
