//! `svcdns serve`: wires configuration, zones, registry, DNS and registration listeners
//! together, and takes them down again on SIGTERM/SIGINT.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hickory_proto::rr::Name;
use tracing::{info, warn};

use crate::api::RegistrationServer;
use crate::config::Config;
use crate::dns::forward::{Forwarder, Upstreams};
use crate::dns::front::{Fallback, Responder};
use crate::dns::server::{DnsServer, DnsSettings};
use crate::dns::tcp::TcpSettings;
use crate::dns::{self, zone_file, Sampling, ZoneSpec, Zones};
use crate::http::{HttpServer, Readiness};
use crate::metrics::Exporter;
use crate::registry::Registry;
use crate::stop::StopSignals;

pub async fn run(config: Config) -> Result<()> {
    // Installed first: a SIGTERM that arrives once we have said we are ready must take
    // the graceful path, not the default action that kills the process outright.
    let mut stop = StopSignals::install()?;
    let specs = zone_specs(&config)?;
    // SOA serials start at the current time so that they only grow across restarts.
    let serial = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1);
    let zones = Arc::new(Zones::new(&specs));
    let registry = Registry::start(zones.settings(), &config.default_zone(), zones.clone())
        .context("starting the registry's writer thread")?;
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
    // Static services are queued together, then each acknowledgement is checked.
    let static_services: Vec<_> = specs
        .iter()
        .flat_map(|spec| spec.services.iter().map(move |r| (spec, r)))
        .map(|(spec, r)| (spec, r, registry.register(r.clone(), None)))
        .collect();
    for (spec, registration, acknowledgement) in static_services {
        acknowledgement.await.with_context(|| {
            let source = spec.source.as_deref().unwrap_or(Path::new("built-in zone"));
            format!(
                "{}: static service {} instance {}",
                source.display(),
                registration.service,
                registration.instance.id
            )
        })?;
    }
    let sampling = Sampling {
        max_answer_records: config.dns.max_answer_records,
    };
    let served = zones.served(&registry.published(), serial, sampling);
    let upstreams = Upstreams::new(
        &config.forward.upstreams,
        config.forward.from_resolv_conf.as_deref(),
        Duration::from_secs(config.forward.timeout),
        &config.dns.listen,
    )?;
    if !upstreams.ourselves.is_empty() {
        warn!(
            left_out = ?upstreams.ourselves,
            "forward upstreams that are svcdns's own DNS address are left out: forwarding to ourselves would loop"
        );
    }
    let forwarder = if upstreams.is_empty() {
        None
    } else {
        let forwarder = Forwarder::new(&upstreams)
            .map_err(|e| anyhow::anyhow!("setting up forwarding: {e}"))?;
        info!(upstreams = ?upstreams.addresses, "names outside our zones are forwarded");
        Some(forwarder)
    };
    let fallback = Fallback::new(dns::catalog(&served, forwarder));
    let responder = Arc::new(Responder::new(served, config.dns.fast_path));
    let dns_settings = DnsSettings {
        listen: config.dns.listen.clone(),
        udp_threads: config
            .dns
            .udp_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        tcp: TcpSettings {
            max_connections: config.dns.tcp_max_connections,
            idle_timeout: Duration::from_secs(config.dns.tcp_idle_timeout),
        },
    };
    raise_open_files_limit();
    let dns = DnsServer::start(&dns_settings, responder, fallback).await?;
    let registration = RegistrationServer::start(
        registry.clone(),
        config.registration.unix.as_deref(),
        config.registration.tcp,
        config.registration.max_connections,
    )
    .await?;

    let served: Vec<String> = specs.iter().map(|s| s.origin.to_string()).collect();
    info!(zones = ?served, "serving");
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
    println!("{ready}");
    readiness.set_ready();

    stop.wait().await;
    info!("shutting down");
    readiness.set_stopping();
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

/// The zones from `zones_dir`, plus the default zone when no file defines it.
fn zone_specs(config: &Config) -> Result<Vec<ZoneSpec>> {
    let ns_address = config
        .dns
        .listen
        .iter()
        .map(|a| a.ip())
        .find(|ip: &IpAddr| !ip.is_unspecified());
    let mut specs = zone_file::load_dir(&config.zones_dir, config.dns.ttl, ns_address)?;
    let default_zone = config.default_zone();
    if !specs.iter().any(|s| s.origin.to_string() == default_zone) {
        let origin = Name::from_ascii(&default_zone)
            .with_context(|| format!("default_zone {default_zone}"))?;
        specs.push(ZoneSpec::empty(origin, config.dns.ttl, ns_address));
    }
    Ok(specs)
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
