//! Applying a changed configuration to a running gateway (SIGHUP), restarting only the
//! parts that changed:
//!
//! - `devices` and `buses`: a changed device or bus is restarted, a new one started, a
//!   removed one stopped (its availability `offline`); the rest keep running.
//! - `gateway.id`, `gateway.topic_prefix`, `upstream` (including the contents of its
//!   password file), `forward`, `homeassistant`, and with Home Assistant discovery on,
//!   `devices` (discovery is announced by the links): the links (the gateway's clients,
//!   the upstream path and the devices, see `links`) are stopped and started again on
//!   the new settings. The spool is closed and opened again with its backlog; the local
//!   broker and its LAN clients, the Modbus buses and the counters keep running. If the
//!   new links do not start (the upstream's TLS files unreadable, say), the previous
//!   settings are started again and the failure is reported.
//! - Home Assistant: what was announced and is not any more (a device or point removed)
//!   gets an empty retained discovery message, so Home Assistant forgets it.
//! - `gateway.log_level`: handed back in the report for the caller to install.
//! - `metrics`: the listener moves to the new address (or stops, or starts).
//! - `broker`: `allow_anonymous` and the password and ACL files (re-read at every
//!   reload, so an edited file counts too) are swapped in; connected clients stay, and
//!   the new rules apply to what they do next. Any other change (listeners, limits,
//!   persistence) is reported and waits for the next start: restarting the broker would
//!   drop its clients.
//! - `gateway.state_dir`: reported and left as it was until the next start (moving the
//!   state directory under a running broker and spool is a restart's job).
//!
//! Checking the file is `config`'s job, done before this is called.

use std::collections::HashMap;
use std::fmt;

use tokio::sync::mpsc;

use super::links::Links;
use super::{AppError, Gateway, availability, bus_handles, serve_metrics, spawn_device};
use crate::config::{Config, Source};
use crate::modbus::bus;
use crate::mqtt::packet::QoS;

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reload {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
    /// Other parts applied: `links` (with the sections that changed), `metrics`,
    /// `gateway.log_level`.
    pub applied: Vec<String>,
    /// Parts whose new settings could not be started, with why; their previous
    /// settings run.
    pub failed: Vec<String>,
    /// Changed parts that were not applied.
    pub needs_restart: Vec<String>,
    /// Things the operator should know that are neither failures nor pending changes.
    pub notes: Vec<String>,
    /// The new log filter, when `gateway.log_level` changed: the caller installs it
    /// (with its `RUST_LOG` over it), since the logger is the process's, not ours.
    pub log: Option<crate::observe::LogFilter>,
}

impl fmt::Display for Reload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |names: &[String]| {
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        write!(
            f,
            "devices started: {}; restarted: {}; stopped: {}",
            list(&self.started),
            list(&self.restarted),
            list(&self.stopped)
        )?;
        if !self.applied.is_empty() {
            write!(f, "; applied: {}", self.applied.join(", "))?;
        }
        if !self.failed.is_empty() {
            write!(f, "; NOT applied: {}", self.failed.join("; "))?;
        }
        if !self.needs_restart.is_empty() {
            write!(
                f,
                "; changed but applied only at the next start: {}",
                self.needs_restart.join(", ")
            )?;
        }
        for note in &self.notes {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}

/// The sections a restart of the links applies.
const LINK_SECTIONS: [&str; 4] = ["gateway", "upstream", "forward", "homeassistant"];

/// The keys of `broker` a reload applies in place (see [`crate::mqtt::broker::Access`]).
const BROKER_ACCESS_KEYS: [&str; 3] = ["allow_anonymous", "password_file", "acl_file"];

/// Whether `broker` changed in more than who may connect and do what (or appeared, or
/// went away): such a change needs the broker restarted.
fn broker_changed_beyond_access(old: &Config, new: &Config) -> bool {
    let without_access = |c: &Config| {
        c.sections.get("broker").map(|text| {
            let mut value: serde_json::Value =
                serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
            if let Some(map) = value.as_object_mut() {
                for key in BROKER_ACCESS_KEYS {
                    map.remove(key);
                }
            }
            value
        })
    };
    without_access(old) != without_access(new)
}

/// Which parts of the links' settings differ between `old` and `new`.
fn links_changes(old: &Config, new: &Config) -> Vec<String> {
    let section = |name: &str| old.sections.get(name) != new.sections.get(name);
    let mut changed = Vec::new();
    if old.gateway.id != new.gateway.id {
        changed.push("gateway.id".to_string());
    }
    if old.gateway.topic_prefix != new.gateway.topic_prefix {
        changed.push("gateway.topic_prefix".to_string());
    }
    // The password is read from its file: the section's text does not show a change.
    let password = |c: &Config| c.upstream.as_ref().and_then(|u| u.password.clone());
    if section("upstream") || password(old) != password(new) {
        changed.push("upstream".to_string());
    }
    for name in ["forward", "homeassistant"] {
        if section(name) {
            changed.push(name.to_string());
        }
    }
    // Discovery announces the devices the links started with: a device added or
    // changed under Home Assistant needs them restarted to be announced.
    if new.discovery_prefix.is_some() && old.devices != new.devices {
        changed.push("devices (Home Assistant discovery)".to_string());
    }
    changed
}

/// Makes `running` keep `old`'s link settings (all but the log level).
fn keep_links(running: &mut Config, old: &Config) {
    let log = running.gateway.log.clone();
    running.gateway = old.gateway.clone();
    running.gateway.log = log;
    running.upstream = old.upstream.clone();
    running.forward = old.forward.clone();
    running.discovery_prefix = old.discovery_prefix.clone();
    keep_sections(running, old, &LINK_SECTIONS);
}

fn keep_sections(running: &mut Config, old: &Config, names: &[&str]) {
    for name in names {
        match old.sections.get(*name) {
            Some(text) => running.sections.insert((*name).into(), text.clone()),
            None => running.sections.remove(*name),
        };
    }
}

impl Gateway {
    /// Applies `new` (already checked) as far as it can without a restart (see the
    /// module header). `Err` only when the links could be started neither on the new
    /// settings nor on the previous ones: the gateway then publishes nothing, and the
    /// caller should exit so that the service manager restarts it.
    pub async fn reload(&mut self, new: Config) -> Result<Reload, AppError> {
        let old = self.config.clone();
        let mut report = Reload::default();
        // What will run: `new`, less what is kept as it was below.
        let mut running = new;

        if broker_changed_beyond_access(&old, &running) {
            report.needs_restart.push("broker".into());
            running.broker = old.broker.clone();
            keep_sections(&mut running, &old, &["broker"]);
        } else if let (Some(broker), Some(settings)) = (&self.broker, &running.broker) {
            // The password and ACL files as they are now (just read by the check), and
            // `allow_anonymous`: swapped in; connected clients stay.
            broker.set_access(settings.access());
            if settings.authenticator.is_some() || settings.authorizer.is_some() {
                report
                    .applied
                    .push("broker access (password and ACL files re-read)".into());
            } else if old.sections.get("broker") != running.sections.get("broker") {
                report.applied.push("broker.allow_anonymous".into());
            }
        }
        if old.gateway.log != running.gateway.log {
            report.applied.push("gateway.log_level".into());
            report.log = Some(running.gateway.log.clone());
        }
        let mut relink = links_changes(&old, &running);
        if old.gateway.state_dir != running.gateway.state_dir {
            report.needs_restart.push("gateway.state_dir".into());
            report.needs_restart.append(&mut relink);
            keep_links(&mut running, &old);
        }

        self.reload_metrics(&old, &mut running, &mut report).await;
        let changed_buses = self.reload_buses(&running);
        if relink.is_empty() {
            self.reload_devices(&old, &running, &changed_buses, &mut report)
                .await?;
        } else {
            self.relink(&old, &mut running, relink, &mut report).await?;
        }
        self.forget_discovery(&old, &running).await;
        self.config = running;
        Ok(report)
    }

    /// Home Assistant forgets an entity whose discovery topic gets an empty retained
    /// message: sent for every point announced before and not any more (a device or
    /// point removed, a new discovery prefix or gateway id), through the clients that
    /// run now.
    async fn forget_discovery(&self, old: &Config, running: &Config) {
        let stale: Vec<String> = {
            let now = discovery_topics(running);
            discovery_topics(old)
                .into_iter()
                .filter(|t| !now.contains(t))
                .collect()
        };
        for name in stale {
            let Ok(topic) = super::topic(&name) else {
                continue;
            };
            for client in self.links.outputs.handles() {
                let empty =
                    super::message(topic.clone(), bytes::Bytes::new(), QoS::AtLeastOnce, true);
                let _ = client.enqueue(empty).await;
            }
        }
    }

    /// Moves, starts or stops the metrics listener; on failure the old one stays.
    async fn reload_metrics(&mut self, old: &Config, running: &mut Config, report: &mut Reload) {
        if old.metrics == running.metrics {
            return;
        }
        let Some(bind) = running.metrics else {
            if let Some((_, task)) = self.metrics_listener.take() {
                task.abort();
            }
            report.applied.push("metrics".into());
            return;
        };
        let mut bound = serve_metrics(bind, &self.metrics).await;
        if bound.is_err()
            && let Some((_, task)) = self.metrics_listener.take()
        {
            // The same port on another address, say: free it and try again.
            task.abort();
            let _ = task.await;
            bound = serve_metrics(bind, &self.metrics).await;
        }
        match bound {
            Ok(listener) => {
                if let Some((_, task)) = self.metrics_listener.replace(listener) {
                    task.abort();
                }
                report.applied.push("metrics".into());
            }
            Err(e) => {
                report.failed.push(format!("metrics: {e}"));
                if self.metrics_listener.is_none()
                    && let Some(bind) = old.metrics
                {
                    self.metrics_listener = serve_metrics(bind, &self.metrics).await.ok();
                }
                running.metrics = old.metrics;
                keep_sections(running, old, &["metrics"]);
            }
        }
    }

    /// Buses are kept when their settings are the same; a changed one is a new task.
    /// Returns the ids of the changed ones (their devices restart with them).
    fn reload_buses(&mut self, running: &Config) -> Vec<String> {
        let mut buses = HashMap::new();
        let mut changed = Vec::new();
        for b in super::modbus::used_buses(running) {
            match self.buses.remove(&b.id) {
                Some((link, handle)) if link == b.link => {
                    buses.insert(b.id.clone(), (link, handle));
                }
                _ => {
                    changed.push(b.id.clone());
                    buses.insert(b.id.clone(), (b.link.clone(), bus::spawn(b.link.clone())));
                }
            }
        }
        // Buses no device uses any more end with their last handle (dropped here).
        self.buses = buses;
        changed
    }

    /// The links as they are: restarts the devices that changed (or whose bus did),
    /// starts new ones and stops removed ones.
    async fn reload_devices(
        &mut self,
        old: &Config,
        running: &Config,
        changed_buses: &[String],
        report: &mut Reload,
    ) -> Result<(), AppError> {
        let handles = bus_handles(&self.buses);
        let before: HashMap<&str, &crate::config::Device> =
            old.devices.iter().map(|d| (d.id.as_str(), d)).collect();
        let links = &mut self.links;
        for device in &running.devices {
            let on_changed_bus =
                matches!(&device.source, Source::Modbus(m) if changed_buses.contains(&m.bus));
            let restart = match before.get(device.id.as_str()) {
                Some(was) if *was == device && !on_changed_bus => continue,
                Some(_) => true,
                None => false,
            };
            if let Some(task) = links.devices.remove(&device.id) {
                task.abort();
            }
            let (tx, rx) = mpsc::channel(64);
            let task = spawn_device(device, &links.prefix, &links.outputs, &handles, rx)?;
            links.devices.insert(device.id.clone(), task);
            links
                .routes
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(device.id.clone(), tx);
            if restart {
                report.restarted.push(device.id.clone());
            } else {
                report.started.push(device.id.clone());
            }
        }
        for gone in gone(old, running) {
            if let Some(task) = links.devices.remove(&gone) {
                task.abort();
            }
            links
                .routes
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&gone);
            report.stopped.push(gone);
        }
        self.say_gone_offline(&report.stopped).await;
        Ok(())
    }

    /// Stops the links and starts them on `running`'s settings; if that fails, on
    /// `old`'s link settings with `running`'s devices.
    async fn relink(
        &mut self,
        old: &Config,
        running: &mut Config,
        changed: Vec<String>,
        report: &mut Reload,
    ) -> Result<(), AppError> {
        let waiting = self.upstream_stats().map_or(0, |s| s.spool.pending);
        self.links.stop(false).await;
        let handles = bus_handles(&self.buses);
        match Links::start(running, &self.local, &self.metrics, &handles).await {
            Ok(links) => {
                self.links = links;
                report
                    .applied
                    .push(format!("links ({})", changed.join(", ")));
            }
            Err(e) => {
                report.failed.push(format!(
                    "{}: {e}; running on the previous settings",
                    changed.join(", ")
                ));
                keep_links(running, old);
                self.links = Links::start(running, &self.local, &self.metrics, &handles).await?;
            }
        }
        for device in &running.devices {
            if old.devices.iter().any(|d| d.id == device.id) {
                report.restarted.push(device.id.clone());
            } else {
                report.started.push(device.id.clone());
            }
        }
        if running.upstream.is_none() && waiting > 0 {
            report.notes.push(format!(
                "no upstream any more: {waiting} messages stay in the spool until one is configured again"
            ));
        }
        report.stopped = gone(old, running);
        // Under the prefix that runs now: a new prefix leaves the old topics' retained
        // availability as it was (the old prefix is not ours any more).
        self.say_gone_offline(&report.stopped).await;
        Ok(())
    }

    async fn say_gone_offline(&self, gone: &[String]) {
        for id in gone {
            let base = format!("{}/{id}", self.links.prefix);
            availability(&self.links.outputs, &base, "offline").await;
        }
    }
}

/// Every topic Home Assistant discovery announces under `config`.
fn discovery_topics(config: &Config) -> std::collections::BTreeSet<String> {
    let Some(discovery_prefix) = &config.discovery_prefix else {
        return std::collections::BTreeSet::new();
    };
    config
        .devices
        .iter()
        .flat_map(|d| {
            crate::bridge::discovery::messages(
                discovery_prefix,
                &config.gateway.id,
                &config.gateway.topic_prefix,
                d,
            )
        })
        .map(|m| m.topic)
        .collect()
}

/// The ids of `old`'s devices that `new` does not have.
fn gone(old: &Config, new: &Config) -> Vec<String> {
    old.devices
        .iter()
        .filter(|d| !new.devices.iter().any(|n| n.id == d.id))
        .map(|d| d.id.clone())
        .collect()
}
