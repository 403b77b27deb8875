//! `svcdns serve`: wires configuration, zones, registry, DNS, registration and HTTP
//! listeners together; reloads zones and upstreams on SIGHUP, and takes everything
//! down again on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::api::{RegistrationServer, RegistrationSettings};
use crate::config::Config;
use crate::dns::front::{Fallback, Responder};
use crate::dns::rate_limit::RateLimitSettings;
use crate::dns::server::{DnsServer, DnsSettings};
use crate::dns::tcp::TcpSettings;
use crate::dns::transfer::Transfers;
use crate::dns::update::Updates;
use crate::dns::LiveZones;
use crate::http::{HttpServer, Readiness};
use crate::metrics::{self, Exporter};
use crate::registry::Registry;
use crate::reload::{answering, apply_static_services, sampling, Built, Reloader, StaticPlan};
use crate::stop::StopSignals;
use crate::store::embedded::EmbeddedStore;
use crate::store::{MemoryStore, Store};

/// Runs the server until SIGTERM or SIGINT; SIGHUP reloads the zones and the forward
/// upstreams (re-reading `config_path`, when given).
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<()> {
    // Installed first: a SIGTERM that arrives once we have said we are ready must take
    // the graceful path, not the default action that kills the process outright. The
    // same holds for SIGHUP, whose default action also ends the process.
    let mut stop = StopSignals::install()?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let built = Built::new(&config, None)?;
    // Read now, so that a bad tokens or keys file stops the start before anything listens.
    let registration_settings = RegistrationSettings::from_config(&config.registration)?;
    let update_keys = config.dns.update.keys()?;
    let store = open_store(&config)?;
    let zone_settings = built.zones.settings().into_iter().flatten().collect();
    let zones = Arc::new(LiveZones::new(built.zones));
    // The store is loaded here, before DNS answers.
    let limits = config.registration.limits();
    let registry = Registry::start(
        zone_settings,
        &config.default_zone(),
        zones.clone(),
        store,
        limits,
    )?;
    // Up first, so that probes get "starting" rather than no answer while we load.
    let readiness = Readiness::default();
    let http = match &config.http {
        Some(http) => Some(
            HttpServer::start(
                http.listen,
                Exporter::new(registry.clone()),
                readiness.clone(),
            )
            .await?,
        ),
        None => None,
    };
    apply_static_services(&registry, &StaticPlan::new(&[], &built.specs)).await?;
    let (served, catalog) = answering(
        &zones.current(),
        &registry,
        sampling(&config),
        built.forwarder,
    );
    let responder = Arc::new(Responder::new(served, config.dns.fast_path));
    let transfers = Transfers::start(
        responder.clone(),
        registry.published(),
        config.dns.transfer.settings(),
    )
    .context("starting the zone transfer journal")?;
    let updates = Arc::new(Updates::new(
        responder.clone(),
        registry.clone(),
        update_keys,
    ));
    let fallback = Fallback::new(catalog)
        .with_transfers(transfers.clone())
        .with_updates(updates.clone());
    let dns_settings = DnsSettings {
        listen: config.dns.listen.clone(),
        udp_threads: config
            .dns
            .udp_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        tcp: TcpSettings {
            max_connections: config.dns.tcp_max_connections,
            idle_timeout: Duration::from_secs(config.dns.tcp_idle_timeout),
            max_lifetime: Duration::from_secs(config.dns.tcp_max_lifetime),
        },
        rate_limit: config
            .dns
            .rate_limit
            .as_ref()
            .map(|limit| RateLimitSettings {
                responses_per_second: limit.responses_per_second,
                slip: limit.slip,
                ipv4_prefix: limit.ipv4_prefix,
                ipv6_prefix: limit.ipv6_prefix,
            }),
    };
    raise_open_files_limit();
    let dns = DnsServer::start(&dns_settings, responder.clone(), fallback.clone()).await?;
    let tokens = registration_settings.tokens.clone();
    let registration = RegistrationServer::start(registry.clone(), registration_settings).await?;

    let origins: Vec<String> = built.specs.iter().map(|s| s.origin.to_string()).collect();
    info!(zones = ?origins, "serving");
    // One machine-readable line on stdout, for scripts and tests that start svcdns on
    // port 0 and need to know where it ended up.
    let dns_addrs: Vec<String> = dns.local_addrs.iter().map(|a| a.to_string()).collect();
    let mut ready = format!("svcdns ready dns={}", dns_addrs.join(","));
    if let Some(path) = &registration.unix_addr {
        ready.push_str(&format!(" unix={}", path.display()));
    }
    if let Some(address) = &registration.tcp_addr {
        ready.push_str(&format!(" tcp={address}"));
    }
    if let Some(http) = &http {
        ready.push_str(&format!(" http={}", http.local_addr));
    }
    // Ready for probes before the line says so: whoever reads it may probe at once.
    readiness.set_ready();
    println!("{ready}");

    let mut reloader = Reloader {
        config_path,
        config,
        specs: built.specs,
        zones,
        registry: registry.clone(),
        responder,
        fallback,
        transfers: transfers.clone(),
        updates,
        tokens,
    };
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            _ = hangup.recv() => {
                info!("SIGHUP: reloading the zones and the forward upstreams");
                let outcome = reloader.reload().await;
                metrics::reloaded(outcome.is_ok());
                if let Err(e) = outcome {
                    error!("{e:#}");
                }
            }
        }
    }
    info!("shutting down");
    readiness.set_stopping();
    transfers.stop();
    registration.shutdown().await;
    let writer = registry.clone();
    tokio::task::spawn_blocking(move || writer.shutdown())
        .await
        .context("stopping the registry's writer")?;
    dns.shutdown().await?;
    if let Some(http) = http {
        http.shutdown();
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: every DNS-over-TCP and
/// registration connection is a file, and the soft default (often 1024) is below what
/// `dns.tcp_max_connections` and `registration.max_connections` allow together.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), "cannot read the open files limit");
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        info!(open_files = limit.rlim_cur, "open files limit");
        return;
    }
    let previous = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), open_files = previous, "cannot raise the open files limit");
        return;
    }
    info!(
        from = previous,
        to = limit.rlim_cur,
        "raised the open files limit"
    );
}

/// The registry's home: etcd, `data_dir`, or memory.
fn open_store(config: &Config) -> Result<Box<dyn Store>> {
    if let Some(etcd) = &config.etcd {
        #[cfg(feature = "etcd")]
        return Ok(Box::new(crate::store::etcd::EtcdStore::connect(etcd)?));
        #[cfg(not(feature = "etcd"))]
        anyhow::bail!(
            "etcd ({}) is configured, but this svcdns was built without etcd support: build it with `cargo build --release --features etcd` (which needs protoc, Debian's protobuf-compiler)",
            etcd.endpoints.join(",")
        );
    }
    Ok(match &config.data_dir {
        Some(data_dir) => Box::new(EmbeddedStore::open(data_dir)?),
        None => Box::new(MemoryStore::default()),
    })
}
