//! The zones and forwarding in force, built at start and rebuilt on SIGHUP without
//! dropping the registry: edit `zones/` or `forward:`, send SIGHUP, and DNS answers
//! from the new files while every registration, lease and watcher carries on.
//!
//! A reload is all or nothing where it can be: everything is read and checked first
//! (config and zone files, upstreams, and that no registered instance would clash
//! with the new static records or lose its zone), and only then applied. A refused
//! reload changes nothing and says why, naming the file.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use hickory_proto::rr::Name;
use tracing::{info, warn};

use crate::api::auth::{LiveTokens, Tokens};
use crate::config::Config;
use crate::dns::forward::Forwarder;
use crate::dns::front::{Fallback, Responder};
use crate::dns::transfer::Transfers;
use crate::dns::update::keys::UpdateKeys;
use crate::dns::update::Updates;
use crate::dns::{self, zone_file, LiveZones, Sampling, ServedZone, ZoneSpec, Zones};
use crate::registry::{InstanceKey, Registration, Registry, View};
use crate::store::owner_text;

/// What a reload can replace, and what it needs to rebuild it: what `serve` built at
/// start, handed over.
pub struct Reloader {
    /// `None`: serving the embedded defaults, so only `zones_dir` is read again.
    pub config_path: Option<PathBuf>,
    /// The configuration and zone specs in force.
    pub config: Config,
    pub specs: Vec<ZoneSpec>,
    pub zones: Arc<LiveZones>,
    pub registry: Registry,
    pub responder: Arc<Responder>,
    pub fallback: Fallback,
    /// Zone transfers, whose `dns.transfer` settings a reload replaces.
    pub transfers: Arc<Transfers>,
    /// DNS UPDATE, whose keys (`dns.update.keys_file`) a reload reads again.
    pub updates: Arc<Updates>,
    /// The registration tokens, when `registration.tokens_file` is set: read again
    /// from the file the server started with.
    pub tokens: Option<Arc<LiveTokens>>,
}

/// The zones and forwarding of a configuration, ready to serve.
pub struct Built {
    pub specs: Vec<ZoneSpec>,
    pub zones: Zones,
    pub forwarder: Option<Forwarder>,
}

impl Built {
    /// Reads the zone files and sets up forwarding for `config`, placing zones at the
    /// positions `previous` gave their origins.
    pub fn new(config: &Config, previous: Option<&Zones>) -> Result<Built> {
        let specs = zone_specs(config)?;
        let zones = match previous {
            Some(previous) => previous.reloaded(&specs),
            None => Zones::new(&specs),
        };
        let forwarder = Forwarder::from_config(&config.forward, &config.dns.listen)?;
        Ok(Built {
            specs,
            zones,
            forwarder,
        })
    }
}

/// The served zones of `zones` and the Catalog over them and `forwarder`.
pub fn answering(
    zones: &Zones,
    registry: &Registry,
    sampling: Sampling,
    forwarder: Option<Forwarder>,
) -> (Vec<Arc<ServedZone>>, hickory_server::zone_handler::Catalog) {
    let served = zones.served(&registry.published(), sampling);
    let catalog = dns::catalog(&served, forwarder);
    (served, catalog)
}

/// How large answers are sampled (`dns.max_answer_records`).
pub fn sampling(config: &Config) -> Sampling {
    Sampling {
        max_answer_records: config.dns.max_answer_records,
    }
}

impl Reloader {
    /// Reads the configuration and zone files again and applies them. Logs what it
    /// did; an error says whether anything changed.
    pub async fn reload(&mut self) -> Result<()> {
        let (config, built, plan, tokens, update_keys) = self
            .prepare()
            .await
            .context("reload refused, nothing changed")?;
        let Built {
            specs,
            zones,
            forwarder,
        } = built;
        let touched = changed_zones(&self.specs, &specs, &zones);
        self.registry
            .reconfigure(zones.settings(), touched)
            .await
            .map_err(|e| anyhow!("reload failed, nothing changed: {e}"))?;
        let (served, catalog) = answering(&zones, &self.registry, sampling(&config), forwarder);
        self.zones.replace(zones);
        self.fallback.replace_catalog(catalog);
        self.responder.replace_zones(served);
        self.transfers
            .replace_settings(config.dns.transfer.settings());
        if let Some(keys) = &update_keys {
            info!(keys = keys.len(), "reloaded the DNS UPDATE keys");
        }
        self.updates.replace_keys(update_keys);
        let ignored = unreloadable_changes(&self.config, &config);
        self.config = config;
        self.specs = specs;
        if let (Some(live), Some(tokens)) = (&self.tokens, tokens) {
            info!(tokens = tokens.len(), "reloaded the registration tokens");
            live.store(Arc::new(tokens));
        }
        apply_static_services(&self.registry, &plan)
            .await
            .context("the zones were reloaded, but not every static service")?;
        let origins: Vec<String> = self.specs.iter().map(|s| s.origin.to_string()).collect();
        info!(zones = ?origins, "reloaded the zones and the forward upstreams");
        for key in ignored {
            warn!("{key} changed in the configuration file; it takes effect at the next restart");
        }
        Ok(())
    }

    /// Reads and checks everything a reload needs, changing nothing.
    async fn prepare(
        &self,
    ) -> Result<(
        Config,
        Built,
        StaticPlan,
        Option<Tokens>,
        Option<UpdateKeys>,
    )> {
        let config = match &self.config_path {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        // The file the server started with: a new path, like any change to
        // `registration`, waits for a restart.
        let tokens = match (&self.tokens, &self.config.registration.tokens_file) {
            (Some(_), Some(path)) => Some(Tokens::load(path)?),
            _ => None,
        };
        let update_keys = config.dns.update.keys()?;
        let built = Built::new(&config, Some(&self.zones.current()))?;
        let plan = StaticPlan::new(&self.specs, &built.specs);
        // The check visits every registered instance: off the async workers.
        let snapshot = self.registry.snapshot();
        let (built, plan) = tokio::task::spawn_blocking(move || {
            check_registered(&snapshot, &built.zones, &plan).map(|()| (built, plan))
        })
        .await
        .context("checking the registry")??;
        Ok((config, built, plan, tokens, update_keys))
    }
}

/// The zones from `zones_dir`, plus the default zone when no file defines it.
pub fn zone_specs(config: &Config) -> Result<Vec<ZoneSpec>> {
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

/// The static services (`services:` of zone files) a change of files adds, replaces
/// and removes, with the file each comes from.
#[derive(Clone, Default)]
pub struct StaticPlan {
    register: Vec<(Registration, Option<PathBuf>)>,
    remove: Vec<InstanceKey>,
}

impl StaticPlan {
    pub fn new(old: &[ZoneSpec], new: &[ZoneSpec]) -> StaticPlan {
        let statics =
            |specs: &[ZoneSpec]| -> BTreeMap<InstanceKey, (Registration, Option<PathBuf>)> {
                specs
                    .iter()
                    .flat_map(|spec| {
                        spec.services
                            .iter()
                            .map(move |r| (key_of(r), (r.clone(), spec.source.clone())))
                    })
                    .collect()
            };
        let before = statics(old);
        let after = statics(new);
        StaticPlan {
            remove: before
                .keys()
                .filter(|key| !after.contains_key(*key))
                .cloned()
                .collect(),
            register: after
                .into_iter()
                .filter(|(key, (registration, _))| {
                    before.get(key).map(|(old, _)| old) != Some(registration)
                })
                .map(|(_, entry)| entry)
                .collect(),
        }
    }

    fn removes(&self, zone: &str, service: &str, id: &str) -> bool {
        self.remove
            .iter()
            .any(|key| key.zone == zone && key.service.as_str() == service && key.id.as_str() == id)
    }
}

fn key_of(registration: &Registration) -> InstanceKey {
    InstanceKey {
        zone: registration.zone.clone(),
        service: registration.service.clone(),
        id: registration.instance.id.clone(),
    }
}

/// Registers and removes static services as `plan` says; all queued at once, then
/// every acknowledgement checked. The error names the file and the instance.
pub async fn apply_static_services(registry: &Registry, plan: &StaticPlan) -> Result<()> {
    let removals: Vec<_> = plan
        .remove
        .iter()
        .map(|key| (key, registry.deregister(key)))
        .collect();
    let registrations: Vec<_> = plan
        .register
        .iter()
        .map(|(registration, source)| {
            (
                registration,
                source,
                registry.register_static(registration.clone()),
            )
        })
        .collect();
    for (key, removal) in removals {
        // Already gone (deregistered by hand since) is what we wanted.
        if let Err(e) = removal.await {
            if e.code() != "not_found" {
                bail!(
                    "removing static service {} instance {}: {e}",
                    key.service,
                    key.id
                );
            }
        }
    }
    for (registration, source, acknowledgement) in registrations {
        acknowledgement.await.with_context(|| {
            let source = source.as_deref().unwrap_or(Path::new("built-in zone"));
            format!(
                "{}: static service {} instance {}",
                source.display(),
                registration.service,
                registration.instance.id
            )
        })?;
    }
    Ok(())
}

/// Refuses new zones that registered instances or records written through DNS UPDATE
/// cannot live with: a zone file removed while the zone holds either, a static record
/// that now owns a registered service's names, or a zone file name (with records, or
/// above them) where an update wrote records, which the file's would hide. Instances
/// the reload removes itself (static services gone from the files) do not count.
fn check_registered(snapshot: &View, zones: &Zones, plan: &StaticPlan) -> Result<()> {
    for (index, zone_view) in snapshot.zones().iter().enumerate() {
        if !zone_view.is_served() {
            continue;
        }
        let origin = &**zone_view.origin();
        let zone = zones.get(index);
        let written = zone_view.records();
        if zone.is_none() && !written.is_empty() {
            bail!(
                "the file of zone {origin} is gone but it holds {} names written through DNS UPDATE; delete them first (nsupdate), or keep the file",
                written.len()
            );
        }
        if let Some(hidden) = zone.and_then(|zone| {
            written
                .iter()
                .find(|records| zone.has_static_name(&records.owner))
        }) {
            bail!(
                "zone {origin}: the zone file now has the name {}, which holds records written through DNS UPDATE and would hide them; delete those first (nsupdate: update delete {}), or leave the name out of the file",
                owner_text(&hidden.owner),
                owner_text(&hidden.owner)
            );
        }
        let mut stranded = 0;
        for name in zone_view.service_names() {
            for (service, entry, _) in zone_view.instances_of(name.as_str()) {
                if plan.removes(origin, service.as_str(), entry.id().as_str()) {
                    continue;
                }
                match zone {
                    None => stranded += 1,
                    Some(zone) => zone.admit(service, &entry.instance).map_err(|e| {
                        anyhow!(
                            "zone {origin}: the registered instance {} of service {service} no longer fits: {e}",
                            entry.id()
                        )
                    })?,
                }
            }
        }
        if stranded > 0 {
            bail!(
                "the file of zone {origin} is gone but {stranded} instances are registered in it; deregister them first, or keep the file"
            );
        }
    }
    Ok(())
}

/// Positions of zones whose own records (SOA, NS, static records) differ between two
/// sets of specs: their serials must move so that caches and secondaries see it.
fn changed_zones(old: &[ZoneSpec], new: &[ZoneSpec], zones: &Zones) -> Vec<usize> {
    new.iter()
        .filter(|spec| {
            let before = old.iter().find(|o| o.origin == spec.origin);
            before.is_none_or(|before| {
                before.soa != spec.soa
                    || before.ns != spec.ns
                    || before.records != spec.records
                    || before.ttl != spec.ttl
            })
        })
        .filter_map(|spec| zones.position(&spec.origin.to_string()))
        .collect()
}

/// Settings a reload does not apply (sockets, threads, the registry's home), named when they
/// changed, so the operator knows to restart.
fn unreloadable_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let dns_other = |config: &Config| {
        let mut dns = config.dns.clone();
        dns.ttl = 0;
        dns.max_answer_records = None;
        dns.transfer = Default::default();
        dns.update = Default::default();
        dns
    };
    [
        (
            dns_other(old) != dns_other(new),
            "dns (other than ttl, max_answer_records, transfer and update)",
        ),
        (old.registration != new.registration, "registration"),
        (old.default_zone != new.default_zone, "default_zone"),
        (old.data_dir != new.data_dir, "data_dir"),
        (old.etcd != new.etcd, "etcd"),
        (old.http != new.http, "http"),
    ]
    .into_iter()
    .filter(|(changed, _)| *changed)
    .map(|(_, key)| key)
    .collect()
}
