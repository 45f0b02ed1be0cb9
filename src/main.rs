//! The `tandem` binary: `tandem [run] --config FILE`, `tandem check-config FILE` and
//! `tandem sim …` (the device simulator, docs/sim.md).

use clap::{Parser, Subcommand};

// mimalloc: the hot path allocates many small strings per message; glibc malloc
// spent ~35 % of the CPU in a REGISTER load profile (see docs/decisions.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;
use std::process::ExitCode;
use tandem::config::Config;

#[derive(Parser)]
#[command(name = "tandem", version, about = "Tandem: a clustered SIP softswitch")]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short, global = true, default_value = "config/tandem.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the softswitch (the default).
    Run,
    /// Validate a configuration file and exit.
    CheckConfig {
        /// The file to check (defaults to --config).
        file: Option<PathBuf>,
    },
    /// Simulate N phones registering (docs/sim.md); exits 0 when all registered.
    Sim(tandem::sim::SimArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Sim(args) => tandem::sim::main(args),
        Command::CheckConfig { file } => {
            let path = file.unwrap_or(cli.config);
            match Config::load(&path) {
                Ok(_) => {
                    println!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run => {
            let cfg = match Config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.log.level))
                .init();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                tandem::admin::prometheus();
                let node = match tandem::app::start(cfg).await {
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                tracing::info!("tandem {} running", env!("CARGO_PKG_VERSION"));
                shutdown_signal().await;
                tracing::info!("shutting down");
                node.shutdown().await;
                ExitCode::SUCCESS
            })
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
