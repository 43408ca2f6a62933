//! `basalt-initiator`: attaches Basalt volumes to this host as `/dev/nbdX` through the kernel's
//! netlink NBD interface, and keeps them attached across node failures (see the library docs
//! and `docs/initiator.md`).
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use basalt_initiator::Error;
use basalt_initiator::attach::{self, AttachOptions};
use basalt_initiator::endpoints::Source;
use basalt_initiator::kernel::Kernel;
use basalt_initiator::state::{DEFAULT_STATE_DIR, StateDir, parse_device};
use basalt_initiator::supervise::{self, Backoff};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "basalt-initiator", version, about)]
struct Cli {
    /// Where attachments are recorded.
    #[arg(long, global = true, env = "BASALT_INITIATOR_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: String,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct SourceArgs {
    /// Basalt API base URL; repeat (or separate with commas) to give fallbacks.
    #[arg(long = "api", env = "BASALT_API", value_delimiter = ',')]
    api: Vec<String>,
    /// API bearer token.
    #[arg(long, env = "BASALT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// NBD endpoint HOST:PORT to use instead of asking the API; repeat for fallbacks.
    #[arg(long = "server")]
    servers: Vec<String>,
    /// Bound on each API call, TCP connect and NBD handshake, in seconds.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
}

impl SourceArgs {
    fn source(&self) -> Source {
        Source {
            api: self.api.clone(),
            token: self.token.clone(),
            servers: self.servers.clone(),
        }
    }
}

#[derive(Args)]
struct AttachArgs {
    /// Volume name.
    volume: String,
    #[command(flatten)]
    source: SourceArgs,
    /// Connections to hand to the kernel (multi-connection).
    #[arg(long, default_value_t = 1)]
    connections: u32,
    /// Device to use (/dev/nbdN); the first free one by default.
    #[arg(long)]
    device: Option<String>,
    /// Per-request timeout in seconds; a request slower than this marks its connection
    /// dead (and the supervisor replaces it).
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Seconds I/O waits for a reconnect when every connection is dead, before failing.
    #[arg(long, default_value_t = 120)]
    dead_conn_timeout: u64,
    /// Stay in the foreground and replace dead connections (see `supervise`).
    #[arg(long)]
    supervise: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Attach a volume as /dev/nbdX and print the device path.
    Attach(AttachArgs),
    /// Replace dead connections of an attached device until it is detached.
    Supervise {
        /// Device path or volume name.
        target: String,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Detach a device (/dev/nbdN) or a volume.
    Detach {
        /// Device path or volume name.
        target: String,
    },
    /// List attached devices: volume, servers, connection health.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("basalt-initiator: error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Api(e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn run(cli: Cli) -> Result<(), Error> {
    let states = StateDir::new(&cli.state_dir);
    match cli.command {
        Command::Attach(args) => run_attach(args, &states, cli.json),
        Command::Supervise { target, source } => {
            let index = attach::resolve_target(&states, &target)?;
            let mut kernel = Kernel::open()?;
            let mut from = source.source();
            if from.api.is_empty() && from.servers.is_empty() {
                // The API the device was attached through.
                if let Some(state) = states.load(index)? {
                    from.api = state.api;
                }
            }
            let connect_timeout = Duration::from_secs(source.connect_timeout.max(1));
            supervise::run(
                &mut kernel,
                &states,
                index,
                &from,
                Backoff::default(),
                connect_timeout,
            )
        }
        Command::Detach { target } => {
            let mut kernel = Kernel::open()?;
            let device = attach::detach(&mut kernel, &states, &target)?;
            if cli.json {
                print_json(&serde_json::json!({ "detached": device }))
            } else {
                println!("{device}");
                Ok(())
            }
        }
        Command::List => {
            let mut kernel = Kernel::open()?;
            let entries = attach::list(&mut kernel, &states)?;
            if cli.json {
                return print_json(&entries);
            }
            print_list(entries);
            Ok(())
        }
    }
}

fn print_list(entries: Vec<attach::ListEntry>) {
    println!("DEVICE\tVOLUME\tCONNECTED\tSERVERS\tRECONNECTS\tSUPERVISED\tLAST EVENT");
    for e in entries {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            e.device,
            e.volume.as_deref().unwrap_or("-"),
            if e.connected { "yes" } else { "no" },
            if e.servers.is_empty() {
                "-".into()
            } else {
                e.servers.join(",")
            },
            e.reconnects,
            if e.supervised { "yes" } else { "no" },
            e.last_event
        );
    }
}

fn run_attach(args: AttachArgs, states: &StateDir, json: bool) -> Result<(), Error> {
    let AttachArgs {
        volume,
        source,
        connections,
        device,
        timeout,
        dead_conn_timeout,
        supervise,
    } = args;
    let device = device
        .map(|text| parse_device(&text).ok_or(Error::BadDevice(text)))
        .transpose()?;
    let connect_timeout = Duration::from_secs(source.connect_timeout.max(1));
    let options = AttachOptions {
        volume,
        source: source.source(),
        connections,
        device,
        timeout_secs: timeout,
        dead_conn_timeout_secs: dead_conn_timeout,
        connect_timeout,
    };
    let mut kernel = Kernel::open()?;
    let state = attach::attach(&mut kernel, states, &options)?;
    if json {
        print_json(&state)?;
    } else {
        println!("{}", state.device);
    }
    let _ = std::io::stdout().flush();
    if supervise {
        let backoff = Backoff::default();
        supervise::run(
            &mut kernel,
            states,
            state.index,
            &options.source,
            backoff,
            connect_timeout,
        )?;
    }
    Ok(())
}
