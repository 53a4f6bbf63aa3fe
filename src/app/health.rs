//! How the running gateway is doing, for the service manager: healthy while every one of
//! its tasks (devices, the clients' event loops, the spool's pump) is still running, and
//! a one-line summary for `systemctl status`. It decides nothing; `fieldgate run` pets
//! the watchdog only while this says healthy.

use super::Gateway;

impl Gateway {
    /// True while none of the gateway's tasks has ended (each runs for the gateway's life:
    /// one that ended panicked or lost its channel, and systemd should restart us).
    pub fn healthy(&self) -> bool {
        self.tasks
            .iter()
            .chain(self.devices.values())
            .all(|task| !task.is_finished())
    }

    /// One line: the broker's addresses and how many tasks run.
    pub fn summary(&self) -> String {
        let broker = match self.broker_addrs() {
            [] => "no local broker".to_string(),
            addrs => format!(
                "broker on {}",
                addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let all = || self.tasks.iter().chain(self.devices.values());
        let running = all().filter(|t| !t.is_finished()).count();
        format!(
            "{broker}; {} devices; {running} of {} tasks running",
            self.devices.len(),
            all().count()
        )
    }
}
