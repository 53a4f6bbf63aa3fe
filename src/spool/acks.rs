//! Which sequence numbers are done: acknowledged upstream, dropped by the bound, lost to
//! corruption, or never stored. Everything below `below` (the ack cursor), plus ranges
//! above it for acknowledgements that came out of order (QoS 2 flows, several messages
//! in flight). Ranges, not single numbers, so a dropped segment costs one entry.

use std::collections::BTreeMap;
use std::ops::Range;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct AckSet {
    below: u64,
    /// start → end (exclusive): disjoint, never touching each other or `below`, all
    /// above `below`.
    above: BTreeMap<u64, u64>,
}

impl AckSet {
    pub(super) fn new(below: u64) -> Self {
        AckSet {
            below,
            above: BTreeMap::new(),
        }
    }

    /// Every sequence number below this is done.
    pub(super) fn below(&self) -> u64 {
        self.below
    }

    pub(super) fn is_done(&self, seq: u64) -> bool {
        seq < self.below
            || self
                .above
                .range(..=seq)
                .next_back()
                .is_some_and(|(_, &end)| seq < end)
    }

    /// The first sequence number at or after `from` that is not done.
    pub(super) fn next_not_done(&self, from: u64) -> u64 {
        let from = from.max(self.below);
        match self.above.range(..=from).next_back() {
            // Ranges never touch, so the one after `end` is not done.
            Some((_, &end)) if from < end => end,
            _ => from,
        }
    }

    /// Marks `range` done; returns how many of its numbers were not done before.
    pub(super) fn mark(&mut self, range: Range<u64>) -> u64 {
        let start = range.start.max(self.below);
        let end = range.end;
        if start >= end {
            return 0;
        }
        let mut newly = end - start;
        let (mut merged_start, mut merged_end) = (start, end);
        // Ranges that overlap or touch [start, end): sorted by start and disjoint, so
        // their ends fall too, and the first one ending before `start` ends the search.
        let touching: Vec<(u64, u64)> = self
            .above
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.above.remove(&s);
            newly = newly.saturating_sub(e.min(end).saturating_sub(s.max(start)));
            merged_start = merged_start.min(s);
            merged_end = merged_end.max(e);
        }
        if merged_start <= self.below {
            self.below = merged_end;
        } else {
            self.above.insert(merged_start, merged_end);
        }
        newly
    }

    /// How many out-of-order ranges are held (memory stays bounded by the window).
    #[cfg(test)]
    pub(super) fn ranges(&self) -> usize {
        self.above.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_acks_move_the_cursor_and_keep_no_ranges() {
        let mut acks = AckSet::new(1);
        for seq in 1..100 {
            assert_eq!(acks.mark(seq..seq + 1), 1);
        }
        assert_eq!(acks.below(), 100);
        assert_eq!(acks.ranges(), 0);
    }

    #[test]
    fn out_of_order_acks_wait_above_the_cursor_until_the_gap_closes() {
        let mut acks = AckSet::new(10);
        assert_eq!(acks.mark(12..13), 1);
        assert_eq!(acks.mark(14..15), 1);
        assert_eq!(acks.mark(13..14), 1, "joins 12 and 14 into one range");
        assert_eq!(acks.ranges(), 1);
        assert_eq!(acks.below(), 10);
        assert!(acks.is_done(13) && !acks.is_done(11) && !acks.is_done(15));
        assert_eq!(acks.next_not_done(12), 15);
        assert_eq!(acks.next_not_done(0), 10);
        assert_eq!(acks.mark(11..12), 1);
        assert_eq!(acks.mark(10..11), 1);
        assert_eq!(acks.below(), 15);
        assert_eq!(acks.ranges(), 0);
    }

    #[test]
    fn marking_counts_only_what_was_not_done_before() {
        let mut acks = AckSet::new(5);
        acks.mark(8..10);
        acks.mark(12..13);
        assert_eq!(acks.mark(0..20), 15 - 3, "5..20 minus 8, 9 and 12");
        assert_eq!(acks.below(), 20);
        assert_eq!(acks.mark(3..20), 0, "a repeated ack counts nothing");
    }

    #[test]
    fn any_sequence_of_marks_matches_a_plain_set() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let mut acks = AckSet::new(0);
            let mut done = std::collections::BTreeSet::new();
            for _ in 0..30 {
                let start = rng.u64(0..60);
                let end = start + rng.u64(0..5);
                let expected = (start..end).filter(|s| !done.contains(s)).count() as u64;
                assert_eq!(acks.mark(start..end), expected);
                done.extend(start..end);
                for seq in 0..70 {
                    assert_eq!(acks.is_done(seq), done.contains(&seq), "seq {seq}");
                    let next = (seq..).find(|s| !done.contains(s));
                    assert_eq!(Some(acks.next_not_done(seq)), next);
                }
            }
        }
    }
}
