//! Applying a changed configuration to a running gateway (SIGHUP): devices and Modbus
//! buses that changed are restarted, new ones started, removed ones stopped (their
//! availability `offline`); everything else keeps running untouched: the local broker
//! and its clients, the upstream client, the spool and its backlog. Sections whose
//! change would need those restarted (`gateway`, `broker`, `upstream`, `forward`,
//! `homeassistant`) are reported and left as they were until the next start. Checking
//! the file is `config`'s job, done before this is called.

use std::collections::HashMap;
use std::fmt;

use tokio::sync::mpsc;

use super::{AppError, Gateway, availability, spawn_device};
use crate::config::{Config, Source};
use crate::modbus::bus::{self, BusHandle};

/// Top-level sections a reload does not apply (they take effect at the next start).
const NEEDS_RESTART: [&str; 5] = ["gateway", "broker", "upstream", "forward", "homeassistant"];

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reload {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
    /// Changed sections that were not applied.
    pub needs_restart: Vec<String>,
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
        if !self.needs_restart.is_empty() {
            write!(
                f,
                "; changed but applied only at the next start: {}",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

impl Gateway {
    /// Applies `new` (already checked) as far as it can without a restart.
    pub async fn reload(&mut self, new: Config) -> Result<Reload, AppError> {
        let mut report = Reload {
            needs_restart: NEEDS_RESTART
                .iter()
                .filter(|s| self.config.sections.get(**s) != new.sections.get(**s))
                .map(ToString::to_string)
                .collect(),
            ..Reload::default()
        };

        // Buses: kept when their settings are the same; a changed one is a new task, and
        // its devices restart with it.
        let mut buses = HashMap::new();
        let mut changed_buses = Vec::new();
        for b in super::modbus::used_buses(&new) {
            match self.buses.remove(&b.id) {
                Some((link, handle)) if link == b.link => {
                    buses.insert(b.id.clone(), (link, handle));
                }
                _ => {
                    changed_buses.push(b.id.clone());
                    buses.insert(b.id.clone(), (b.link.clone(), bus::spawn(b.link.clone())));
                }
            }
        }
        // Buses no device uses any more end with their last handle (dropped here).
        self.buses = buses;
        let handles: HashMap<String, BusHandle> = self
            .buses
            .iter()
            .map(|(id, (_, handle))| (id.clone(), handle.clone()))
            .collect();

        let old: HashMap<&str, &crate::config::Device> = self
            .config
            .devices
            .iter()
            .map(|d| (d.id.as_str(), d))
            .collect();
        for device in &new.devices {
            let on_changed_bus =
                matches!(&device.source, Source::Modbus(m) if changed_buses.contains(&m.bus));
            let restart = match old.get(device.id.as_str()) {
                Some(before) if *before == device && !on_changed_bus => continue,
                Some(_) => true,
                None => false,
            };
            if let Some(task) = self.devices.remove(&device.id) {
                task.abort();
            }
            let (tx, rx) = mpsc::channel(64);
            let task = spawn_device(device, &self.prefix, &self.outputs, &handles, rx)?;
            self.devices.insert(device.id.clone(), task);
            self.routes
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(device.id.clone(), tx);
            if restart {
                report.restarted.push(device.id.clone());
            } else {
                report.started.push(device.id.clone());
            }
        }
        for gone in self
            .config
            .devices
            .iter()
            .filter(|d| !new.devices.iter().any(|n| n.id == d.id))
        {
            if let Some(task) = self.devices.remove(&gone.id) {
                task.abort();
            }
            self.routes
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&gone.id);
            availability(
                &self.outputs,
                &format!("{}/{}", self.prefix, gone.id),
                "offline",
            )
            .await;
            report.stopped.push(gone.id.clone());
        }

        // What runs now: the new devices and buses; the sections not applied stay as
        // they were, so the next reload compares against what really runs.
        self.config.devices = new.devices;
        self.config.buses = new.buses;
        for section in ["devices", "buses"] {
            match new.sections.get(section) {
                Some(text) => self.config.sections.insert(section.into(), text.clone()),
                None => self.config.sections.remove(section),
            };
        }
        Ok(report)
    }
}
