//! The client subcommands: each builds a protocol request, sends it, and prints the
//! outcome for a person (or JSON for a script).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Map, Value};
use svcdns::client::{Connection, Endpoint};
use svcdns::config::Config;
use svcdns::stop::StopSignals;
use svcdns::store::embedded::EmbeddedStore;
use svcdns::store::{StoreError, StoredInstance, StoredRecords, BACKUP_FORMAT};
use tokio::time::Instant;

use crate::ConnectArgs;

/// Lease used by `--keepalive` when no `--ttl` is given.
const KEEPALIVE_DEFAULT_TTL: u64 = 10;

#[derive(Args)]
pub struct RegisterArgs {
    /// Service name (a DNS label), e.g. web
    service: String,
    /// Instance id, unique within the service (a DNS label), e.g. web-1
    id: String,
    /// IPv4 or IPv6 address; repeat for several
    #[arg(long = "address", short = 'a', required = true)]
    addresses: Vec<String>,
    /// Port the instance serves on (1-65535), given in its SRV records
    #[arg(long, short, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// tcp or udp: the `_tcp`/`_udp` label of its SRV name [default: tcp]
    #[arg(long)]
    proto: Option<String>,
    /// SRV priority, 0-65535; clients try lower values first [default: 1]
    #[arg(long)]
    priority: Option<u16>,
    /// SRV weight, 0-65535; spreads clients among equal priorities [default: 1]
    #[arg(long)]
    weight: Option<u16>,
    /// Tag; repeat for several
    #[arg(long = "tag", short = 't')]
    tags: Vec<String>,
    /// Metadata as key=value; repeat for several
    #[arg(long = "meta", short = 'm', value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// Lease in seconds: the instance disappears unless renewed within it
    #[arg(long)]
    ttl: Option<u64>,
    /// TTL of the DNS records, in seconds (the zone's default otherwise)
    #[arg(long)]
    dns_ttl: Option<u32>,
    /// Zone to register in (the server's default zone otherwise)
    #[arg(long)]
    zone: Option<String>,
    /// Tie the instance to this command: renew the lease until interrupted, then deregister
    #[arg(long)]
    keepalive: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Args)]
pub struct KeyArgs {
    /// Service name, e.g. web
    service: String,
    /// Instance id within the service, e.g. web-1
    id: String,
    /// Zone the instance is in (the server's default zone otherwise)
    #[arg(long)]
    zone: Option<String>,
    #[command(flatten)]
    connect: ConnectArgs,
}

impl KeyArgs {
    fn request(&self, op: &str) -> Value {
        let mut request = json!({"op": op, "service": self.service, "id": self.id});
        if let (Some(zone), Value::Object(map)) = (&self.zone, &mut request) {
            map.insert("zone".into(), json!(zone));
        }
        request
    }
}

/// Whether an instance takes traffic, as `svcdns mark` sets it.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum HealthArg {
    /// Back in the answers
    Healthy,
    /// Out of every answer, still registered and listed
    Critical,
}

#[derive(Args)]
pub struct MarkArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// critical: leave every DNS answer at once (still registered); healthy: come back
    #[arg(value_enum)]
    health: HealthArg,
}

impl RegisterArgs {
    fn request(&self) -> Result<Value> {
        let mut meta = Map::new();
        for pair in &self.meta {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("--meta {pair:?} is not KEY=VALUE");
            };
            meta.insert(key.to_string(), json!(value));
        }
        let mut request = json!({
            "op": "register",
            "service": self.service,
            "id": self.id,
            "addresses": self.addresses,
            "port": self.port,
            "tags": self.tags,
            "meta": meta,
        });
        let ttl = match (self.ttl, self.keepalive) {
            (None, true) => Some(KEEPALIVE_DEFAULT_TTL),
            (ttl, _) => ttl,
        };
        let optional = [
            ("proto", self.proto.as_ref().map(|p| json!(p))),
            ("priority", self.priority.map(|p| json!(p))),
            ("weight", self.weight.map(|w| json!(w))),
            ("ttl", ttl.map(|t| json!(t))),
            ("dns_ttl", self.dns_ttl.map(|t| json!(t))),
            ("zone", self.zone.as_ref().map(|z| json!(z))),
        ];
        if let Value::Object(map) = &mut request {
            for (key, value) in optional {
                if let Some(value) = value {
                    map.insert(key.into(), value);
                }
            }
        }
        Ok(request)
    }
}

pub async fn register(args: RegisterArgs) -> Result<()> {
    let endpoint = args.connect.endpoint();
    let request = args.request()?;
    // Caught from before the registration, so an early Ctrl-C still deregisters.
    let stop = if args.keepalive {
        Some(StopSignals::install()?)
    } else {
        None
    };
    let mut connection = Connection::open(&endpoint).await?;
    let reply = connection.request(&request).await?;
    println!(
        "registered {}.{} in {}",
        args.id,
        args.service,
        reply["zone"].as_str().unwrap_or("?")
    );
    let Some(stop) = stop else {
        return Ok(());
    };
    let ttl = reply["ttl"].as_u64().unwrap_or(KEEPALIVE_DEFAULT_TTL);
    keepalive(&endpoint, connection, &[request], ttl, stop).await
}

/// Longest silence between requests while holding leases: well inside the server's
/// default `registration.idle_timeout` (60 s), so a long lease does not get its
/// connection closed as idle between renewals.
const KEEPALIVE_PING: Duration = Duration::from_secs(20);

/// Wait before renewing over a new connection after the old one broke.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// `id.service` of a register request, for messages.
fn instance_name(request: &Value) -> String {
    format!(
        "{}.{}",
        request["id"].as_str().unwrap_or("?"),
        request["service"].as_str().unwrap_or("?")
    )
}

/// The request naming the instance of `register` for `op` (renew, deregister).
fn instance_request(op: &str, register: &Value) -> Value {
    json!({"op": op, "service": register["service"], "id": register["id"], "zone": register.get("zone")})
}

/// Holds the leases of `requests` (register requests already acknowledged) on one
/// connection. Renews them all, pipelined, at a third of the shortest lease, so two
/// renewals can be lost before one lapses, and pings in between when renewals are
/// further apart than [`KEEPALIVE_PING`]. If the server forgot an instance (it
/// restarted), registers it again; if the connection broke or was closed, opens a
/// new one. On Ctrl-C or SIGTERM, deregisters them all and returns.
async fn keepalive(
    endpoint: &Endpoint,
    connection: Connection,
    requests: &[Value],
    ttl: u64,
    mut stop: StopSignals,
) -> Result<()> {
    let period = Duration::from_millis((ttl * 1000 / 3).max(200));
    let renewals: Vec<Value> = requests
        .iter()
        .map(|request| instance_request("renew", request))
        .collect();
    eprintln!(
        "keeping {} lease(s) alive every {:.1}s on one connection; Ctrl-C to deregister and exit",
        requests.len(),
        period.as_secs_f64()
    );
    let mut connection = Some(connection);
    let mut next_renewal = Instant::now() + period;
    loop {
        // Renewals start a period apart however long a round takes.
        let wake = next_renewal.min(Instant::now() + KEEPALIVE_PING);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.wait() => break,
        }
        let current = match connection.as_mut() {
            Some(current) => current,
            None => match Connection::open(endpoint).await {
                Ok(fresh) => connection.insert(fresh),
                Err(e) => {
                    eprintln!("{e:#}");
                    next_renewal = Instant::now() + RETRY_AFTER;
                    continue;
                }
            },
        };
        let started = Instant::now();
        let outcome = if started < next_renewal {
            let ping = [json!({"op": "ping"})];
            current.pipeline_reconnecting(&ping).await.map(drop)
        } else {
            renew_all(current, requests, &renewals).await
        };
        match outcome {
            Ok(()) if started >= next_renewal => next_renewal = started + period,
            Ok(()) => {}
            Err(e) => {
                eprintln!("the connection to svcdns broke ({e:#}); trying again");
                connection = None;
                // Renewed (early, if need be) over a new connection soon: not at
                // once, as the server may be restarting, nor a period later, as the
                // leases are running.
                next_renewal = Instant::now() + RETRY_AFTER;
            }
        }
    }
    let mut connection = match connection {
        Some(connection) => connection,
        None => Connection::open(endpoint).await?,
    };
    let deregistrations: Vec<Value> = requests
        .iter()
        .map(|request| instance_request("deregister", request))
        .collect();
    let outcomes = connection
        .pipeline_reconnecting(&deregistrations)
        .await
        .context("deregistering")?;
    let mut failed = 0;
    for (request, outcome) in requests.iter().zip(outcomes) {
        match outcome {
            // Gone already (its lease ran out, or an earlier try got through).
            Ok(_) => {}
            Err(refusal) if refusal.code == "not_found" => {}
            Err(refusal) => {
                eprintln!("deregistering {} failed: {refusal}", instance_name(request));
                failed += 1;
            }
        }
    }
    match (failed, requests) {
        (0, [one]) => println!("deregistered {}", instance_name(one)),
        (0, _) => println!("deregistered {} instances", requests.len()),
        _ => bail!(
            "{failed} of {} instances were not deregistered",
            requests.len()
        ),
    }
    Ok(())
}

/// One renewal of every lease, pipelined; instances the server forgot are registered
/// again. Fails only when the connection is lost.
async fn renew_all(
    connection: &mut Connection,
    requests: &[Value],
    renewals: &[Value],
) -> Result<()> {
    let outcomes = connection.pipeline_reconnecting(renewals).await?;
    let mut forgotten = Vec::new();
    for (request, outcome) in requests.iter().zip(outcomes) {
        match outcome {
            Ok(_) => {}
            Err(refusal) if refusal.code == "not_found" => forgotten.push(request.clone()),
            Err(refusal) => eprintln!("renewing {} failed: {refusal}", instance_name(request)),
        }
    }
    if forgotten.is_empty() {
        return Ok(());
    }
    let outcomes = connection.pipeline(&forgotten).await?;
    for (request, outcome) in forgotten.iter().zip(outcomes) {
        match outcome {
            Ok(_) => eprintln!(
                "{} was forgotten; registered it again",
                instance_name(request)
            ),
            Err(refusal) => eprintln!(
                "registering {} again failed: {refusal}",
                instance_name(request)
            ),
        }
    }
    Ok(())
}

/// `svcdns keepalive FILE`: registers every instance the file lists on one connection
/// and holds their leases until interrupted, then deregisters them.
pub async fn keepalive_file(file: &Path, connect: &ConnectArgs) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let listed: Vec<Value> = serde_yaml::from_str(&text)
        .with_context(|| format!("{}: not a YAML list of instances", file.display()))?;
    if listed.is_empty() {
        bail!("{} lists no instances", file.display());
    }
    let requests: Vec<Value> = listed
        .into_iter()
        .enumerate()
        .map(|(index, mut instance)| {
            let Value::Object(map) = &mut instance else {
                bail!(
                    "{}: entry {} is not a map of register fields",
                    file.display(),
                    index + 1
                );
            };
            map.insert("op".into(), json!("register"));
            map.entry("ttl").or_insert(json!(KEEPALIVE_DEFAULT_TTL));
            Ok(instance)
        })
        .collect::<Result<_>>()?;
    let endpoint = connect.endpoint();
    let stop = StopSignals::install()?;
    let mut connection = Connection::open(&endpoint).await?;
    let mut ttl = u64::MAX;
    let outcomes = connection
        .pipeline(&requests)
        .await
        .context("registering")?;
    let mut refused = Vec::new();
    let mut registered = Vec::new();
    for (request, outcome) in requests.iter().zip(outcomes) {
        match outcome {
            Ok(reply) => {
                ttl = ttl.min(reply["ttl"].as_u64().unwrap_or(KEEPALIVE_DEFAULT_TTL));
                registered.push(instance_request("deregister", request));
            }
            Err(refusal) => refused.push(format!("{}: {refusal}", instance_name(request))),
        }
    }
    if !refused.is_empty() {
        // All or nothing: what did register is taken back before giving up.
        let _ = connection.pipeline(&registered).await;
        bail!(
            "{} of {} instances were refused, so none is kept: {}",
            refused.len(),
            requests.len(),
            refused.join("; ")
        );
    }
    println!("registered {} instances", requests.len());
    keepalive(&endpoint, connection, &requests, ttl, stop).await
}

pub async fn deregister(args: KeyArgs) -> Result<()> {
    let mut connection = Connection::open(&args.connect.endpoint()).await?;
    connection.request(&args.request("deregister")).await?;
    println!("deregistered {}.{}", args.id, args.service);
    Ok(())
}

pub async fn renew(args: KeyArgs) -> Result<()> {
    let mut connection = Connection::open(&args.connect.endpoint()).await?;
    let reply = connection.request(&args.request("renew")).await?;
    match reply["ttl"].as_u64() {
        Some(ttl) => println!("renewed {}.{} for {ttl}s", args.id, args.service),
        None => println!(
            "{}.{} has no lease to renew; it stays until deregistered",
            args.id, args.service
        ),
    }
    Ok(())
}

pub async fn mark(args: MarkArgs) -> Result<()> {
    let key = &args.key;
    let health = match args.health {
        HealthArg::Healthy => "healthy",
        HealthArg::Critical => "critical",
    };
    let mut request = key.request("mark");
    if let Value::Object(map) = &mut request {
        map.insert("health".into(), json!(health));
    }
    let mut connection = Connection::open(&key.connect.endpoint()).await?;
    connection.request(&request).await?;
    match args.health {
        HealthArg::Critical => println!(
            "{}.{} is critical: it is in no DNS answer until marked healthy",
            key.id, key.service
        ),
        HealthArg::Healthy => {
            println!("{}.{} is healthy: back in the answers", key.id, key.service)
        }
    }
    Ok(())
}

pub async fn list(endpoint: &Endpoint, service: Option<String>, as_json: bool) -> Result<()> {
    let mut connection = Connection::open(endpoint).await?;
    let reply = connection
        .request(&json!({"op": "list", "service": service}))
        .await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
    let rows: Vec<[String; 8]> = reply["instances"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|i| {
            let joined = |key: &str| {
                i[key]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
            };
            let lease = match i["expires_in"].as_f64() {
                Some(left) => format!("{left:.0}s left"),
                None if i["ephemeral"] == json!(true) => "ephemeral".to_string(),
                None => "permanent".to_string(),
            };
            [
                i["service"].as_str().unwrap_or("").to_string(),
                i["id"].as_str().unwrap_or("").to_string(),
                joined("addresses"),
                format!("{}/{}", i["port"], i["proto"].as_str().unwrap_or("")),
                joined("tags"),
                i["health"].as_str().unwrap_or("").to_string(),
                lease,
                i["zone"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    let header = [
        "SERVICE",
        "ID",
        "ADDRESSES",
        "PORT",
        "TAGS",
        "HEALTH",
        "LEASE",
        "ZONE",
    ]
    .map(String::from);
    let mut widths = [0usize; 8];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

pub async fn watch(endpoint: &Endpoint, service: Option<String>) -> Result<()> {
    let mut connection = Connection::open(endpoint).await?;
    let reply = connection
        .request(&json!({"op": "watch", "service": service}))
        .await?;
    for instance in reply["instances"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!("{}", json!({"event": "present", "instance": instance}));
    }
    while let Some(message) = connection.next_message().await? {
        println!("{message}");
        if message.get("ok") == Some(&Value::Bool(false)) {
            svcdns::client::check(message)?;
        }
    }
    // A watch never ends on its own: the server went away, and whoever reads our
    // output must not take the silence for "no more changes".
    bail!("the server closed the watch (stopped or restarted?): changes are no longer followed")
}

#[derive(clap::Subcommand)]
pub enum SnapshotCommand {
    /// Write every stored instance of a running server to FILE (JSON lines)
    Save {
        /// Where to write the backup; replaced atomically
        file: PathBuf,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Replace the store in a data_dir with a backup; the server must be stopped
    Restore {
        /// A file written by `svcdns snapshot save`
        file: PathBuf,
        /// The data_dir to restore into
        #[arg(long, conflicts_with = "config")]
        data_dir: Option<PathBuf>,
        /// Take the data_dir from this configuration file
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// The first line of a backup file.
fn backup_header(serial: &Value, instances: usize, records: usize) -> Value {
    json!({"svcdns_snapshot": BACKUP_FORMAT, "serial": serial, "instances": instances, "records": records})
}

pub async fn snapshot(command: SnapshotCommand) -> Result<()> {
    match command {
        SnapshotCommand::Save { file, connect } => save(&file, &connect).await,
        SnapshotCommand::Restore {
            file,
            data_dir,
            config,
        } => {
            let data_dir = match (data_dir, config) {
                (Some(dir), _) => dir,
                (None, Some(config)) => Config::load(&config)?.data_dir.with_context(|| {
                    format!("{} sets no data_dir to restore into", config.display())
                })?,
                (None, None) => bail!("say where to restore: --data-dir DIR or --config FILE"),
            };
            restore(&file, &data_dir)
        }
    }
}

async fn save(file: &Path, connect: &ConnectArgs) -> Result<()> {
    let mut connection = Connection::open(&connect.endpoint()).await?;
    let reply = connection.request(&json!({"op": "snapshot"})).await?;
    let list = |key: &str| reply[key].as_array().map(Vec::as_slice).unwrap_or_default();
    let (instances, records) = (list("instances"), list("records"));
    let mut text = backup_header(&reply["serial"], instances.len(), records.len()).to_string();
    text.push('\n');
    for line in instances.iter().chain(records) {
        text.push_str(&line.to_string());
        text.push('\n');
    }
    // Written beside the target, then renamed over it: a crash leaves the old backup.
    let partial = file.with_extension("partial");
    std::fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, file).with_context(|| format!("writing {}", file.display()))?;
    println!(
        "saved {} instances and {} names' records to {}",
        instances.len(),
        records.len(),
        file.display()
    );
    Ok(())
}

fn restore(file: &Path, data_dir: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut lines = text.lines().enumerate();
    let header: Value = lines
        .next()
        .and_then(|(_, line)| serde_json::from_str(line).ok())
        .with_context(|| {
            format!(
                "{}: not a backup written by svcdns snapshot save",
                file.display()
            )
        })?;
    if header["svcdns_snapshot"] != json!(BACKUP_FORMAT) {
        bail!(
            "{}:1: backup format {} is not {BACKUP_FORMAT}",
            file.display(),
            header["svcdns_snapshot"]
        );
    }
    let mut instances = Vec::new();
    let mut records = Vec::new();
    for (index, line) in lines.filter(|(_, line)| !line.trim().is_empty()) {
        let at = |problem: String| anyhow::anyhow!("{}:{}: {problem}", file.display(), index + 1);
        let object: serde_json::Map<String, Value> =
            serde_json::from_str(line).map_err(|e| at(format!("not a JSON object: {e}")))?;
        if StoredRecords::is_records(&object) {
            records.push(StoredRecords::from_object(&object).map_err(at)?);
        } else {
            instances.push(StoredInstance::from_backup_line(line).map_err(at)?);
        }
    }
    // Backups from before records were kept have no count of them.
    let expected_records = header["records"].as_u64().unwrap_or(0);
    if header["instances"].as_u64() != Some(instances.len() as u64)
        || expected_records != records.len() as u64
    {
        bail!(
            "{}: the header says {} instances and {expected_records} records but the file has {} and {}: cut short?",
            file.display(),
            header["instances"],
            instances.len(),
            records.len()
        );
    }
    let serial = header["serial"]
        .as_u64()
        .and_then(|s| u32::try_from(s).ok());
    let mut store = EmbeddedStore::open(data_dir).map_err(|e| match e {
        StoreError::Unusable(message) if message.contains("in use") => anyhow::anyhow!(
            "a server is running on {}: stop it before restoring ({message})",
            data_dir.display()
        ),
        other => anyhow::anyhow!(other),
    })?;
    store.replace_all(&instances, &records, serial)?;
    println!(
        "restored {} instances and {} names' records into {}",
        instances.len(),
        records.len(),
        store.path().display()
    );
    Ok(())
}
