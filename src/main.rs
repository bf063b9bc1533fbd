//! The `howk` binary: the CLI that wires the crates together from configuration.
//!
//! Subcommands:
//! - `howk topics create`: create the topics of SPEC §2 (idempotent)
//! - `howk script test FILE`: run a script on a sample webhook with the real engine and limits
//! - `howk run [--no-api]`: every stage on Kafka (`kv` on Redis) and the REST API
//! - `howk dev [--dry] [--no-api]`: the same on the embedded log, in one process
//! - `howk api`: the REST API alone
//! - `howk bench [--count N]`: the end-to-end load benchmark
//! - `howk replay deadletter|resume|status`: replay jobs (re-driving dead letters)

mod bench;
mod bench_replay;
mod config;
mod replay_cli;
mod run;
mod script_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "howk", version, about = "Webhook delivery engine")]
struct Cli {
    /// YAML configuration file; `HOWK_*` environment variables override it (SPEC §8). Given
    /// before the subcommand (`howk --config howk.yaml topics create`), since `script test` has
    /// a `--config` of its own (the script's `script_config`).
    #[arg(long, env = "HOWK_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the Kafka topics howk uses.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Work with Lua delivery scripts.
    Script {
        #[command(subcommand)]
        command: script_cli::ScriptCommand,
    },
    /// Run every stage against Kafka (scripts table, ingest, deliver, retry, status) and serve
    /// the REST API.
    Run {
        /// Do not serve the REST API.
        #[arg(long)]
        no_api: bool,
    },
    /// Run every stage and the REST API in one process on the embedded log under
    /// `processing.data_dir`, with an in-process `kv`; loopback endpoints are allowed.
    Dev {
        /// Log each request instead of sending it.
        #[arg(long)]
        dry: bool,
        /// Do not serve the REST API.
        #[arg(long)]
        no_api: bool,
    },
    /// Serve the REST API alone, on Kafka (status and stats need `howk run`).
    Api,
    /// End-to-end load benchmark: enqueue N webhooks with a header-transform script to a local
    /// receiver and report delivered/s and enqueue→delivered latency.
    Bench(bench::BenchArgs),
    /// Replay jobs over the log: re-drive dead letters (on Kafka).
    Replay {
        #[command(subcommand)]
        command: replay_cli::ReplayCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create every topic with its partitions and cleanup policy; existing topics are kept.
    Create,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let loaded = config::load(cli.config.as_deref())?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let config = loaded.config;
    match cli.command {
        Command::Topics {
            command: TopicsCommand::Create,
        } => {
            let outcomes = howk_topology::topics::create_topics(&config.kafka).await?;
            for (topic, outcome) in outcomes {
                let policy = if topic.compacted { "compact" } else { "delete" };
                println!(
                    "{:<32} partitions={:<3} cleanup.policy={:<8} {:?}",
                    topic.name, topic.partitions, policy, outcome
                );
            }
            Ok(())
        }
        Command::Script { command } => script_cli::run(command, &config).await,
        Command::Run { no_api } => run::run(config, run::Mode::Kafka, !no_api).await,
        Command::Dev { dry, no_api } => run::run(config, run::Mode::Dev { dry }, !no_api).await,
        Command::Api => run::api_only(config).await,
        Command::Bench(args) => bench::run(args, config).await,
        Command::Replay { command } => replay_cli::run(command, &config).await,
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
