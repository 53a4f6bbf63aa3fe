//! What the broker's journal and the spool share about files that must survive a crash:
//! CRC-checked frames (`frame`), the fsync policy and when it calls for a sync
//! (`SyncSchedule`), and replacing a small file atomically. It knows nothing of what the
//! frames hold and starts no threads: each log owns its writer.

pub mod frame;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// When appended data is synced to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before the writer reports the data as stored. Writers batch what arrives while
    /// they sync, so concurrent callers share one sync (group commit).
    Always,
    /// At most this long after a write (a power cut loses at most this much).
    Interval(Duration),
    /// Left to the operating system.
    Never,
}

impl Fsync {
    /// Whether a file replaced or created under this policy is synced (with its
    /// directory) before the writer goes on.
    pub fn syncs(self) -> bool {
        self != Fsync::Never
    }
}

/// When a log writer next syncs its file under an [`Fsync`] policy. Time comes in as
/// `now`, so the policy is testable without a clock.
#[derive(Debug)]
pub(crate) struct SyncSchedule {
    policy: Fsync,
    /// Written since the last sync.
    dirty: bool,
    last_sync: Instant,
}

impl SyncSchedule {
    pub(crate) fn new(policy: Fsync, now: Instant) -> Self {
        SyncSchedule {
            policy,
            dirty: false,
            last_sync: now,
        }
    }

    pub(crate) fn policy(&self) -> Fsync {
        self.policy
    }

    /// Data was written and is not synced yet.
    pub(crate) fn wrote(&mut self) {
        self.dirty = true;
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Whether the writer should sync now.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.dirty
            && match self.policy {
                Fsync::Always => true,
                Fsync::Interval(every) => now.saturating_duration_since(self.last_sync) >= every,
                Fsync::Never => false,
            }
    }

    /// When a sync falls due if nothing else happens (`None`: never by itself).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.policy {
            Fsync::Interval(every) if self.dirty => Some(self.last_sync + every),
            _ => None,
        }
    }

    pub(crate) fn synced(&mut self, now: Instant) {
        self.dirty = false;
        self.last_sync = now;
    }
}

/// Replaces `dir/name` with `contents` so that a crash leaves either the old or the new
/// file, never a mix: write `dir/temp`, sync it, rename it over `name`, sync the
/// directory (the rename itself must reach the disk, or a crash could bring the old file
/// back). With `durable` false the syncs are skipped (`Fsync::Never`): the rename is
/// still atomic for a crash of the process, not for a power cut.
pub fn replace_file(
    dir: &Path,
    name: &str,
    temp: &str,
    contents: &[u8],
    durable: bool,
) -> io::Result<()> {
    let temp_path = dir.join(temp);
    {
        let mut file = File::create(&temp_path)?;
        file.write_all(contents)?;
        if durable {
            file.sync_all()?;
        }
    }
    fs::rename(&temp_path, dir.join(name))?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes the creation, renaming or removal of `dir`'s entries durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_syncs_whatever_was_written_and_nothing_else() {
        let t0 = Instant::now();
        let mut s = SyncSchedule::new(Fsync::Always, t0);
        assert!(!s.due(t0));
        s.wrote();
        assert!(s.due(t0));
        assert_eq!(s.deadline(), None);
        s.synced(t0);
        assert!(!s.due(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn interval_syncs_at_most_once_per_interval_and_only_when_dirty() {
        let every = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut s = SyncSchedule::new(Fsync::Interval(every), t0);
        assert_eq!(s.deadline(), None, "nothing written: no timer");
        s.wrote();
        assert!(!s.due(t0 + Duration::from_millis(999)));
        assert_eq!(s.deadline(), Some(t0 + every));
        assert!(s.due(t0 + every));
        s.synced(t0 + every);
        s.wrote();
        assert!(!s.due(t0 + every + Duration::from_millis(500)));
        assert!(s.due(t0 + every * 2));
    }

    #[test]
    fn never_leaves_syncing_to_the_system() {
        let t0 = Instant::now();
        let mut s = SyncSchedule::new(Fsync::Never, t0);
        s.wrote();
        assert!(!s.due(t0 + Duration::from_secs(3600)));
        assert_eq!(s.deadline(), None);
        assert!(!Fsync::Never.syncs());
    }
}
