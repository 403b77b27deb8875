//! The `svcdns` command: `serve`, and the client subcommands that talk to a running
//! server's registration socket.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use svcdns::client::{Address, Endpoint, ServerError};
use svcdns::config::Config;

#[derive(Parser)]
#[command(
    name = "svcdns",
    version,
    about = "DNS-based service discovery: services register over a socket, any DNS client finds them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (DNS on 127.0.0.1:8053, registrations on ./svcdns.sock and 127.0.0.1:8054 by default)
    Serve {
        /// YAML configuration file; every key is optional
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Register (or replace) a service instance
    Register(cli::RegisterArgs),
    /// Remove a service instance
    Deregister(cli::KeyArgs),
    /// Extend the lease of a service instance
    Renew(cli::KeyArgs),
    /// Register every instance a YAML file lists and hold their leases on one
    /// connection until interrupted, then deregister them
    Keepalive {
        /// A YAML list of instances, each with the fields of a register request
        file: PathBuf,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Take an instance out of every DNS answer (critical) or put it back (healthy)
    Mark(cli::MarkArgs),
    /// List registered instances
    List {
        /// Only instances of this service
        service: Option<String>,
        /// Print the server's JSON reply instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Back up a running server's registrations, or restore a backup into a data_dir
    #[command(subcommand)]
    Snapshot(cli::SnapshotCommand),
    /// Print the current instances, then every change, as JSON lines
    Watch {
        /// Only changes to this service
        service: Option<String>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// Where to reach the server.
#[derive(Args, Clone)]
pub struct ConnectArgs {
    /// Registration Unix socket
    #[arg(long, default_value = "svcdns.sock", global = true)]
    socket: PathBuf,
    /// Use the registration TCP port at this address instead of the Unix socket
    #[arg(long, value_name = "ADDR", global = true)]
    tcp: Option<String>,
    /// Token to authenticate with, when the server has registration.tokens_file
    #[arg(long, env = "SVCDNS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

impl ConnectArgs {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            address: match &self.tcp {
                Some(address) => Address::Tcp(address.clone()),
                None => Address::Unix(self.socket.clone()),
            },
            token: self.token.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("svcdns: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => {
                let loaded = match &config {
                    Some(path) => Config::load(path)?,
                    None => Config::default(),
                };
                svcdns::serve::run(loaded, config).await
            }
            Command::Register(args) => cli::register(args).await,
            Command::Deregister(args) => cli::deregister(args).await,
            Command::Renew(args) => cli::renew(args).await,
            Command::Mark(args) => cli::mark(args).await,
            Command::Keepalive { file, connect } => cli::keepalive_file(&file, &connect).await,
            Command::List {
                service,
                json,
                connect,
            } => cli::list(&connect.endpoint(), service, json).await,
            Command::Watch { service, connect } => cli::watch(&connect.endpoint(), service).await,
            Command::Snapshot(command) => cli::snapshot(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(refusal) = e.downcast_ref::<ServerError>() {
                eprintln!("svcdns: refused: {refusal}");
            } else {
                eprintln!("svcdns: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the level. hickory-server logs two INFO
/// lines per query, which at DNS rates is a flood, so it is held to warnings. Colours
/// only on a terminal: journald, files and log collectors get plain text.
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,hickory_server=warn,hickory_proto=warn,hickory_net=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Taking a registration allocates many small objects (parsed JSON, the instance, the
/// copied groups of a snapshot), as do queries on hickory's Catalog path. mimalloc keeps
/// them in per-thread pages, so a registry of a million instances does not slow the
/// writer or the DNS threads through a large, fragmented heap; see README "How it
/// scales" for the figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
