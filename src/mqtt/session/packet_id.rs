//! Packet identifiers in use on one side of a session, and handing out free ones.
//!
//! An id is taken when a QoS 1/2 PUBLISH, SUBSCRIBE or UNSUBSCRIBE is sent and given back
//! when its flow completes. Handing out an id that is still in flight would let a late
//! acknowledgement complete the wrong message, so ids come from the free set only and are
//! never wrapped onto a live one. Sans-IO: no clocks, no sockets.

use std::collections::BTreeSet;

use crate::mqtt::packet::PacketId;

/// The ids in flight. Allocation walks forward from the last id handed out, so a freshly
/// released id is not reused at once (a duplicate acknowledgement for it, say after a
/// resend, then finds nothing rather than a new message).
#[derive(Debug, Clone, Default)]
pub struct PacketIdPool {
    in_use: BTreeSet<u16>,
    last: u16,
}

impl PacketIdPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// A free id, now marked in use; `None` when all 65,535 are in flight.
    pub fn allocate(&mut self) -> Option<PacketId> {
        if self.in_use.len() == usize::from(u16::MAX) {
            return None;
        }
        // Terminates: fewer than 65,535 ids are in use, so a free one is at most 65,535
        // steps away.
        let mut candidate = self.last;
        loop {
            candidate = candidate.wrapping_add(1);
            if candidate == 0 {
                continue;
            }
            if !self.in_use.contains(&candidate) {
                self.in_use.insert(candidate);
                self.last = candidate;
                return PacketId::new(candidate);
            }
        }
    }

    /// Marks `id` in use (restoring session state); false if it already was.
    pub fn mark_used(&mut self, id: PacketId) -> bool {
        self.in_use.insert(id.get())
    }

    /// Gives `id` back; false if it was not in use (a late or duplicate acknowledgement).
    pub fn release(&mut self, id: PacketId) -> bool {
        self.in_use.remove(&id.get())
    }

    /// Is `id` in flight?
    pub fn is_used(&self, id: PacketId) -> bool {
        self.in_use.contains(&id.get())
    }

    /// How many ids are in flight.
    pub fn len(&self) -> usize {
        self.in_use.len()
    }

    /// True when no id is in flight.
    pub fn is_empty(&self) -> bool {
        self.in_use.is_empty()
    }

    /// Forgets every id (the session state was discarded).
    pub fn clear(&mut self) {
        self.in_use.clear();
    }
}
