//! Which read requests fetch one device's points: the fewest per table, merging points
//! across small gaps, never splitting a point, within the protocol's per-request limits;
//! and what the device taught us (exception 0x02, illegal data address) about ranges it
//! will not serve. Pure state; no IO, no timing, no MQTT, no decoding (`value` does that
//! with the slices `Request::split` hands out).
//!
//! # Learned splits
//!
//! Each point has a level: *merged* (shares a request across gaps of up to `max_gap`
//! items), *contiguous* (shares one only with points whose items touch or overlap its
//! own, so no item outside a point is read), *alone* (its own request), *bad* (not
//! read; reported). Points start merged. When the device rejects a request, its range is
//! remembered and its points drop one level; the plan is then rebuilt, and any request
//! equal to a remembered range drops its points one more level, until none does. So:
//! - a merged request that read gaps splits into the contiguous runs of its points (the
//!   likely culprit, an unmapped address in a gap, is no longer read);
//! - one without gaps (or a run rejected again) splits into one request per point;
//! - a point whose own request is rejected is bad: its own registers are refused, and
//!   retrying it in any batch would only fail that batch.
//!
//! No rejected range is ever requested again. Each rejection of a current request
//! lowers at least one point a level, and there are three levels above bad, so a device
//! answers at most 3 × points rejections before the plan is stable. The state lives as
//! long as the `Planner`; `reset` forgets it (a device replaced, a new configuration).

use std::collections::HashSet;

use super::value::{DataRef, Encoding, plural, table_name};
use super::{Data, ReadRange, Table};

/// How many items that belong to no point a request may read to save a request.
///
/// The defaults weigh bytes on the wire against a round trip: over RTU at 9600 baud one
/// more request costs about 30 ms (8 bytes out, at least 5 back, two 3.5-character
/// silences and the device's turnaround), 10 unwanted registers 20 bytes, about 21 ms.
/// Bits travel 8 to a byte, so 160 bits cost the same 20 bytes. Larger gaps save more
/// requests on dense maps but are likelier to cross an unmapped address, which costs a
/// rejection and a learned split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxGap {
    /// Coils and discrete inputs.
    pub bits: u16,
    /// Holding and input registers.
    pub registers: u16,
}

impl MaxGap {
    /// Only points whose items touch or overlap share a request.
    pub const NONE: MaxGap = MaxGap {
        bits: 0,
        registers: 0,
    };

    pub fn for_table(self, table: Table) -> u16 {
        if table.is_bits() {
            self.bits
        } else {
            self.registers
        }
    }
}

impl Default for MaxGap {
    fn default() -> MaxGap {
        MaxGap {
            bits: 160,
            registers: 10,
        }
    }
}

/// One point's place in a request: `count` items from `offset` (0 = the request's first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The point's index in the encodings the planner was made with.
    pub point: usize,
    pub offset: u16,
    pub count: u16,
}

/// One read request and the points it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub range: ReadRange,
    /// In address order.
    pub points: Vec<Slot>,
}

/// A reply that does not fit its request (tokio-modbus checks this too; a gateway that
/// decoded misaligned registers would publish plausible wrong values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the reply to reading {asked} at address {address} holds {got}")]
pub struct ReplyError {
    pub asked: String,
    pub address: u16,
    pub got: String,
}

impl Request {
    /// Each point's items in the reply to this request, for `value::decode`. Bits may
    /// come with padding past the request's count (they travel 8 to a byte); registers
    /// must be exactly the count.
    pub fn split<'a>(
        &'a self,
        data: &'a Data,
    ) -> Result<impl Iterator<Item = (usize, DataRef<'a>)> + 'a, ReplyError> {
        let count = usize::from(self.range.count);
        let fits = match data {
            Data::Bits(bits) => self.range.table.is_bits() && bits.len() >= count,
            Data::Registers(r) => !self.range.table.is_bits() && r.len() == count,
        };
        if !fits {
            return Err(ReplyError {
                asked: plural(count, table_name(self.range.table)),
                address: self.range.address,
                got: match data {
                    Data::Bits(b) => plural(b.len(), "bit"),
                    Data::Registers(r) => plural(r.len(), "register"),
                },
            });
        }
        Ok(self.points.iter().map(move |slot| {
            let items =
                usize::from(slot.offset)..usize::from(slot.offset) + usize::from(slot.count);
            // Every slot lies within the range (built so, and the reply holds at least
            // the range, checked above); an empty slice would only make decode refuse.
            let part = match data {
                Data::Bits(b) => DataRef::Bits(b.get(items).unwrap_or_default()),
                Data::Registers(r) => DataRef::Registers(r.get(items).unwrap_or_default()),
            };
            (slot.point, part)
        }))
    }
}

/// Why a point is not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum BadReason {
    #[error("the device refuses its address (exception 0x02, illegal data address)")]
    Rejected,
    #[error("it spans more items than one request may read")]
    TooLarge,
    #[error("it runs past the last address, 65535")]
    PastLastAddress,
}

/// A point the plan does not read, and why (the caller publishes it as bad).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPoint {
    pub point: usize,
    pub reason: BadReason,
}

/// The requests that read a device's points, in table and address order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    requests: Vec<Request>,
    bad: Vec<BadPoint>,
}

impl Plan {
    pub fn requests(&self) -> &[Request] {
        &self.requests
    }

    /// The points of the request(s) reading `range` (several only if points that
    /// overlap were each given their own request).
    pub fn points_of(&self, range: ReadRange) -> impl Iterator<Item = &Slot> {
        self.requests
            .iter()
            .filter(move |r| r.range == range)
            .flat_map(|r| &r.points)
    }

    /// Points not read, in point order.
    pub fn bad(&self) -> &[BadPoint] {
        &self.bad
    }
}

/// Where a point stands; see the module documentation. Ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Merged,
    Contiguous,
    Alone,
    Bad(BadReason),
}

impl Level {
    fn lowered(self) -> Level {
        match self {
            Level::Merged => Level::Contiguous,
            Level::Contiguous => Level::Alone,
            Level::Alone | Level::Bad(_) => Level::Bad(BadReason::Rejected),
        }
    }
}

/// A point's items: `start..end` in `table`, in u32 so `end` may be 65536.
#[derive(Debug, Clone, Copy)]
struct Span {
    table: Table,
    start: u32,
    end: u32,
}

/// The read plan of one device, and what its rejections taught.
#[derive(Debug, Clone)]
pub struct Planner {
    spans: Vec<Span>,
    initial: Vec<Level>,
    levels: Vec<Level>,
    /// Ranges the device rejected; only ranges of the plan at the time, so at most one
    /// per lowering (bounded by 3 × points).
    rejected: HashSet<ReadRange>,
    max_gap: MaxGap,
    plan: Plan,
}

impl Planner {
    /// Plans reading `points` (a device's point encodings; `Slot::point` indexes this
    /// slice). Points that no request can read are reported in `Plan::bad` at once.
    pub fn new(points: &[Encoding], max_gap: MaxGap) -> Planner {
        let spans: Vec<Span> = points
            .iter()
            .map(|p| Span {
                table: p.table,
                start: u32::from(p.address),
                end: u32::from(p.address) + u32::from(p.data_type.registers()),
            })
            .collect();
        let initial: Vec<Level> = spans
            .iter()
            .map(|s| {
                if s.end - s.start > u32::from(s.table.max_read()) {
                    Level::Bad(BadReason::TooLarge)
                } else if s.end > 1 << 16 {
                    Level::Bad(BadReason::PastLastAddress)
                } else {
                    Level::Merged
                }
            })
            .collect();
        let mut planner = Planner {
            levels: initial.clone(),
            initial,
            spans,
            rejected: HashSet::new(),
            max_gap,
            plan: Plan::default(),
        };
        planner.replan();
        planner
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The device answered a read of `range` with exception 0x02 (illegal data
    /// address). Returns whether that changed the plan: `false` for a range the current
    /// plan does not read (a stale report), which is ignored.
    pub fn rejected(&mut self, range: ReadRange) -> bool {
        if !self.plan.requests.iter().any(|r| r.range == range) {
            return false;
        }
        self.rejected.insert(range);
        self.replan();
        true
    }

    /// Forgets every learned split and bad point.
    pub fn reset(&mut self) {
        self.levels.clone_from(&self.initial);
        self.rejected.clear();
        self.replan();
    }

    /// Plans, lowers the points of any request the device has rejected before, and
    /// plans again until no such request is left. Ends: every round either returns or
    /// lowers at least one point, and points have finitely many levels.
    fn replan(&mut self) {
        loop {
            let plan = assemble(&self.spans, &self.levels, self.max_gap);
            let mut lowered = false;
            for request in plan
                .requests
                .iter()
                .filter(|r| self.rejected.contains(&r.range))
            {
                for slot in &request.points {
                    self.levels[slot.point] = self.levels[slot.point].lowered();
                }
                lowered = true;
            }
            if !lowered {
                self.plan = plan;
                return;
            }
        }
    }
}

/// Requests for the points at each level, greedily in address order: a point joins the
/// open request of its table and level when the items between them number at most the
/// level's gap and the request stays within the table's limit; otherwise it opens the
/// next one. For points that do not overlap this is the fewest requests: a feasible
/// group's first or last point can leave it and the rest stays feasible, so taking the
/// longest feasible run each time never costs a request.
fn assemble(spans: &[Span], levels: &[Level], max_gap: MaxGap) -> Plan {
    let mut order: Vec<usize> = (0..spans.len())
        .filter(|&i| !matches!(levels[i], Level::Bad(_)))
        .collect();
    order.sort_by_key(|&i| (spans[i].table, levels[i], spans[i].start, spans[i].end, i));

    struct Open {
        table: Table,
        level: Level,
        start: u32,
        end: u32,
        points: Vec<usize>,
    }
    let mut requests = Vec::new();
    let close = |open: Open, requests: &mut Vec<Request>| {
        // Spans end at most at 65536 and requests at most max_read long (checked when
        // the points were taken in), so address and count fit in u16.
        let (Ok(address), Ok(count)) = (
            u16::try_from(open.start),
            u16::try_from(open.end - open.start),
        ) else {
            return;
        };
        requests.push(Request {
            range: ReadRange {
                table: open.table,
                address,
                count,
            },
            points: open
                .points
                .iter()
                .map(|&i| Slot {
                    point: i,
                    offset: u16::try_from(spans[i].start - open.start).unwrap_or(u16::MAX),
                    count: u16::try_from(spans[i].end - spans[i].start).unwrap_or(u16::MAX),
                })
                .collect(),
        });
    };
    let mut open: Option<Open> = None;
    for i in order {
        let span = spans[i];
        let level = levels[i];
        let gap = match level {
            Level::Merged => Some(u32::from(max_gap.for_table(span.table))),
            Level::Contiguous => Some(0),
            Level::Alone | Level::Bad(_) => None,
        };
        if let (Some(o), Some(gap)) = (open.as_mut(), gap)
            && o.table == span.table
            && o.level == level
            && span.start <= o.end + gap
            && o.end.max(span.end) - o.start <= u32::from(span.table.max_read())
        {
            o.end = o.end.max(span.end);
            o.points.push(i);
            continue;
        }
        if let Some(o) = open.take() {
            close(o, &mut requests);
        }
        open = Some(Open {
            table: span.table,
            level,
            start: span.start,
            end: span.end,
            points: vec![i],
        });
    }
    if let Some(o) = open {
        close(o, &mut requests);
    }
    requests.sort_by_key(|r| (r.range, r.points.first().map(|s| s.point)));
    let bad = (0..spans.len())
        .filter_map(|point| match levels[point] {
            Level::Bad(reason) => Some(BadPoint { point, reason }),
            _ => None,
        })
        .collect();
    Plan { requests, bad }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::value::{DataType, Order};
    use proptest::prelude::*;

    fn at(table: Table, address: u16, data_type: DataType) -> Encoding {
        Encoding {
            table,
            address,
            data_type,
            order: Order::ABCD,
            bit: None,
            scale: 1.0,
            offset: 0.0,
        }
    }

    fn reg(address: u16, data_type: DataType) -> Encoding {
        at(Table::Holding, address, data_type)
    }

    fn range(table: Table, address: u16, count: u16) -> ReadRange {
        ReadRange {
            table,
            address,
            count,
        }
    }

    fn ranges(planner: &Planner) -> Vec<ReadRange> {
        planner.plan().requests().iter().map(|r| r.range).collect()
    }

    #[test]
    fn points_within_max_gap_share_a_request_and_farther_ones_do_not() {
        // u16 at 0, u32 at 11 (gap 10), u16 at 24 (gap 11 after the u32's end at 13).
        let points = [
            reg(0, DataType::U16),
            reg(11, DataType::U32),
            reg(24, DataType::U16),
        ];
        let planner = Planner::new(&points, MaxGap::default());
        assert_eq!(
            ranges(&planner),
            [range(Table::Holding, 0, 13), range(Table::Holding, 24, 1)]
        );
        let first = &planner.plan().requests()[0];
        assert_eq!(
            first.points,
            [
                Slot {
                    point: 0,
                    offset: 0,
                    count: 1
                },
                Slot {
                    point: 1,
                    offset: 11,
                    count: 2
                },
            ]
        );
        assert_eq!(
            planner
                .plan()
                .points_of(range(Table::Holding, 24, 1))
                .map(|s| s.point)
                .collect::<Vec<_>>(),
            [2]
        );
    }

    #[test]
    fn requests_stay_within_the_table_limit_and_never_split_a_point() {
        // 124 u16 at 0..124, then a u32 at 124..126: one register over the limit.
        let mut points: Vec<Encoding> = (0..124).map(|a| reg(a, DataType::U16)).collect();
        points.push(reg(124, DataType::U32));
        let planner = Planner::new(&points, MaxGap::default());
        assert_eq!(
            ranges(&planner),
            [range(Table::Holding, 0, 124), range(Table::Holding, 124, 2)]
        );
        // Exactly 125 registers fit one request.
        let full: Vec<Encoding> = (0..125).map(|a| reg(a, DataType::U16)).collect();
        assert_eq!(
            ranges(&Planner::new(&full, MaxGap::default())),
            [range(Table::Holding, 0, 125)]
        );
        // 2000 coils fit one request, 2001 do not.
        let coils: Vec<Encoding> = (0..2001)
            .map(|a| at(Table::Coil, a, DataType::Bool))
            .collect();
        assert_eq!(
            ranges(&Planner::new(&coils, MaxGap::default())),
            [range(Table::Coil, 0, 2000), range(Table::Coil, 2000, 1)]
        );
    }

    #[test]
    fn tables_are_never_mixed_and_each_has_its_own_gap() {
        let points = [
            at(Table::Coil, 0, DataType::Bool),
            at(Table::Coil, 161, DataType::Bool), // 160 bits between: merged
            at(Table::Discrete, 0, DataType::Bool),
            at(Table::Input, 0, DataType::U16),
            reg(0, DataType::U16),
            reg(12, DataType::U16), // 11 registers between: not merged
        ];
        let planner = Planner::new(&points, MaxGap::default());
        assert_eq!(
            ranges(&planner),
            [
                range(Table::Coil, 0, 162),
                range(Table::Discrete, 0, 1),
                range(Table::Holding, 0, 1),
                range(Table::Holding, 12, 1),
                range(Table::Input, 0, 1),
            ]
        );
        let tight = Planner::new(&points, MaxGap::NONE);
        assert_eq!(tight.plan().requests().len(), 6);
    }

    #[test]
    fn points_sharing_a_register_share_its_request() {
        let mut a = reg(5, DataType::Bool);
        a.bit = Some(0);
        let mut b = reg(5, DataType::Bool);
        b.bit = Some(7);
        let planner = Planner::new(&[a, b, reg(5, DataType::Bits)], MaxGap::NONE);
        assert_eq!(ranges(&planner), [range(Table::Holding, 5, 1)]);
        assert_eq!(planner.plan().requests()[0].points.len(), 3);
    }

    #[test]
    fn points_no_request_can_read_are_bad_from_the_start() {
        let points = [
            reg(0, DataType::String { len: 252 }), // 126 registers
            reg(65535, DataType::U32),
            reg(65535, DataType::U16),
        ];
        let planner = Planner::new(&points, MaxGap::default());
        assert_eq!(
            planner.plan().bad(),
            [
                BadPoint {
                    point: 0,
                    reason: BadReason::TooLarge
                },
                BadPoint {
                    point: 1,
                    reason: BadReason::PastLastAddress
                },
            ]
        );
        assert_eq!(ranges(&planner), [range(Table::Holding, 65535, 1)]);
    }

    #[test]
    fn a_reply_splits_into_each_points_items() {
        let points = [reg(10, DataType::U16), reg(12, DataType::U32)];
        let planner = Planner::new(&points, MaxGap::default());
        let request = &planner.plan().requests()[0];
        let data = Data::Registers(vec![1, 2, 3, 4]);
        let parts: Vec<_> = request.split(&data).unwrap().collect();
        assert_eq!(
            parts,
            [
                (0, DataRef::Registers(&[1])),
                (1, DataRef::Registers(&[3, 4]))
            ]
        );
        let short = Data::Registers(vec![1, 2, 3]);
        assert_eq!(
            request.split(&short).err().unwrap().to_string(),
            "the reply to reading 4 holding registers at address 10 holds 3 registers"
        );
        assert!(request.split(&Data::Bits(vec![true; 4])).is_err());

        let coils = [
            at(Table::Coil, 0, DataType::Bool),
            at(Table::Coil, 2, DataType::Bool),
        ];
        let planner = Planner::new(&coils, MaxGap::default());
        let request = &planner.plan().requests()[0];
        // Padding bits past the count are how bits travel; they are ignored.
        let data = Data::Bits(vec![true, false, false, false, false, false, false, false]);
        let parts: Vec<_> = request.split(&data).unwrap().collect();
        assert_eq!(
            parts,
            [(0, DataRef::Bits(&[true])), (1, DataRef::Bits(&[false]))]
        );
    }

    #[test]
    fn a_rejected_merged_request_splits_and_a_rejected_range_is_never_read_again() {
        let points = [
            reg(0, DataType::U16),
            reg(1, DataType::U16),
            reg(5, DataType::U16),
        ];
        let mut planner = Planner::new(&points, MaxGap::default());
        let merged = range(Table::Holding, 0, 6);
        assert_eq!(ranges(&planner), [merged]);

        // First rejection: the gap (2..5) is no longer read.
        assert!(planner.rejected(merged));
        assert_eq!(
            ranges(&planner),
            [range(Table::Holding, 0, 2), range(Table::Holding, 5, 1)]
        );
        // The contiguous run rejected too: each point on its own.
        assert!(planner.rejected(range(Table::Holding, 0, 2)));
        assert_eq!(
            ranges(&planner),
            [
                range(Table::Holding, 0, 1),
                range(Table::Holding, 1, 1),
                range(Table::Holding, 5, 1)
            ]
        );
        // A point's own registers rejected: it is bad, the others are still read.
        assert!(planner.rejected(range(Table::Holding, 0, 1)));
        assert_eq!(
            ranges(&planner),
            [range(Table::Holding, 1, 1), range(Table::Holding, 5, 1)]
        );
        assert_eq!(
            planner.plan().bad(),
            [BadPoint {
                point: 0,
                reason: BadReason::Rejected
            }]
        );
        // A stale report of a range no longer read changes nothing.
        assert!(!planner.rejected(merged));
        assert_eq!(planner.plan().requests().len(), 2);

        planner.reset();
        assert_eq!(ranges(&planner), [merged]);
        assert!(planner.plan().bad().is_empty());
    }

    #[test]
    fn a_rejected_request_without_gaps_goes_straight_to_one_request_per_point() {
        // Splitting at gaps would ask for the same range again.
        let points = [reg(0, DataType::U16), reg(1, DataType::U32)];
        let mut planner = Planner::new(&points, MaxGap::default());
        assert!(planner.rejected(range(Table::Holding, 0, 3)));
        assert_eq!(
            ranges(&planner),
            [range(Table::Holding, 0, 1), range(Table::Holding, 1, 2)]
        );
        // Two points in one register, rejected: both bad at once, never re-asked.
        let mut a = reg(9, DataType::Bool);
        a.bit = Some(0);
        let mut b = a.clone();
        b.bit = Some(1);
        let mut planner = Planner::new(&[a, b], MaxGap::default());
        assert!(planner.rejected(range(Table::Holding, 9, 1)));
        assert!(planner.plan().requests().is_empty());
        assert_eq!(planner.plan().bad().len(), 2);
    }

    // The property tests: random point sets against naive models.

    fn encoding() -> impl Strategy<Value = Encoding> {
        let address = prop_oneof![8 => 0u16..300, 1 => 65_500u16..=65_535];
        let table = prop::sample::select(vec![
            Table::Coil,
            Table::Discrete,
            Table::Holding,
            Table::Input,
        ]);
        let register_type = prop_oneof![
            prop::sample::select(vec![
                DataType::Bool,
                DataType::U16,
                DataType::Bits,
                DataType::U32,
                DataType::F32,
                DataType::U64,
                DataType::F64,
            ]),
            (1u16..40).prop_map(|len| DataType::String { len }),
            (240u16..260).prop_map(|len| DataType::String { len }),
        ];
        (table, address, register_type).prop_map(|(table, address, register_type)| {
            let data_type = if table.is_bits() {
                DataType::Bool
            } else {
                register_type
            };
            at(table, address, data_type)
        })
    }

    fn max_gap() -> impl Strategy<Value = MaxGap> {
        (0u16..200, 0u16..20).prop_map(|(bits, registers)| MaxGap { bits, registers })
    }

    fn span(p: &Encoding) -> (u32, u32) {
        let start = u32::from(p.address);
        (start, start + u32::from(p.data_type.registers()))
    }

    fn readable(p: &Encoding) -> bool {
        let (start, end) = span(p);
        end - start <= u32::from(p.table.max_read()) && end <= 1 << 16
    }

    /// Maximal runs of points whose items touch or overlap, per table: (length).
    fn runs(points: &[Encoding]) -> Vec<u32> {
        let mut spans: Vec<(Table, u32, u32)> = points
            .iter()
            .filter(|p| readable(p))
            .map(|p| (p.table, span(p).0, span(p).1))
            .collect();
        spans.sort();
        let mut out: Vec<(Table, u32, u32)> = Vec::new();
        for (table, start, end) in spans {
            match out.last_mut() {
                Some(last) if last.0 == table && start <= last.2 => last.2 = last.2.max(end),
                _ => out.push((table, start, end)),
            }
        }
        out.into_iter().map(|(_, s, e)| e - s).collect()
    }

    /// Every property a plan of `points` must have, checked against the points alone.
    fn check_plan(points: &[Encoding], max_gap: MaxGap, plan: &Plan) -> Result<(), TestCaseError> {
        let mut seen = vec![0usize; points.len()];
        for request in plan.requests() {
            let ReadRange {
                table,
                address,
                count,
            } = request.range;
            prop_assert!(
                count >= 1 && count <= table.max_read(),
                "{:?}",
                request.range
            );
            prop_assert!(u32::from(address) + u32::from(count) <= 1 << 16);
            let (first, last) = (u32::from(address), u32::from(address) + u32::from(count));
            let mut covered = vec![false; usize::from(count)];
            for slot in &request.points {
                let p = &points[slot.point];
                seen[slot.point] += 1;
                prop_assert_eq!(p.table, table, "tables mixed");
                let (start, end) = span(p);
                prop_assert!(first <= start && end <= last, "point outside its request");
                prop_assert_eq!(u32::from(slot.offset), start - first);
                prop_assert_eq!(u32::from(slot.count), end - start);
                for c in &mut covered[(start - first) as usize..(end - first) as usize] {
                    *c = true;
                }
            }
            // Nothing read before the first point or after the last, and no gap wider
            // than the table's max_gap in between.
            prop_assert!(covered[0] && covered[covered.len() - 1]);
            let mut gap = 0u16;
            for c in covered {
                gap = if c { 0 } else { gap + 1 };
                prop_assert!(gap <= max_gap.for_table(table), "gap of {gap} items read");
            }
        }
        for (i, p) in points.iter().enumerate() {
            let bad = plan.bad().iter().any(|b| b.point == i);
            if readable(p) {
                prop_assert_eq!(seen[i], 1, "point {} covered {} times", i, seen[i]);
                prop_assert!(!bad);
            } else {
                prop_assert_eq!(seen[i], 0);
                prop_assert!(bad);
            }
        }
        let readable_points = points.iter().filter(|p| readable(p)).count();
        prop_assert!(
            plan.requests().len() <= readable_points,
            "more than one per point"
        );
        Ok(())
    }

    /// The fewest requests for points that do not overlap, by dynamic programming over
    /// address-ordered groups (the greedy planner's claim, checked the slow way).
    fn fewest(points: &[Encoding], max_gap: MaxGap) -> usize {
        let mut total = 0;
        for table in [Table::Coil, Table::Discrete, Table::Holding, Table::Input] {
            let mut spans: Vec<(u32, u32)> = points
                .iter()
                .filter(|p| p.table == table && readable(p))
                .map(span)
                .collect();
            spans.sort();
            let gap = u32::from(max_gap.for_table(table));
            let limit = u32::from(table.max_read());
            // best[i]: fewest requests for the first i points.
            let mut best = vec![0usize; spans.len() + 1];
            for i in 1..=spans.len() {
                best[i] = usize::MAX;
                // Group j..i (0-based j..i-1) is feasible if every gap fits and it spans
                // at most the limit.
                for j in (0..i).rev() {
                    if j + 1 < i && spans[j + 1].0 > spans[j].1 + gap {
                        break;
                    }
                    if spans[i - 1].1 - spans[j].0 > limit {
                        break;
                    }
                    best[i] = best[i].min(best[j] + 1);
                }
            }
            total += best[spans.len()];
        }
        total
    }

    /// Points laid end to end with random gaps, per table: no two overlap.
    fn disjoint_points() -> impl Strategy<Value = Vec<Encoding>> {
        prop::collection::vec((encoding(), 0u16..30), 0..60).prop_map(|raw| {
            let mut next = [0u32; 4];
            let mut out = Vec::new();
            for (p, gap) in raw {
                let t = p.table as usize;
                let start = next[t] + u32::from(gap);
                let width = u32::from(p.data_type.registers());
                let Ok(address) = u16::try_from(start) else {
                    continue;
                };
                next[t] = start + width;
                out.push(Encoding { address, ..p });
            }
            out
        })
    }

    proptest! {
        #[test]
        fn every_point_is_read_once_within_limits_and_gaps(
            points in prop::collection::vec(encoding(), 0..80),
            max_gap in max_gap(),
        ) {
            let planner = Planner::new(&points, max_gap);
            check_plan(&points, max_gap, planner.plan())?;
            let tight = Planner::new(&points, MaxGap::NONE);
            check_plan(&points, MaxGap::NONE, tight.plan())?;
            prop_assert!(planner.plan().requests().len() <= tight.plan().requests().len());
            // Without gaps, one request per run of touching points when runs fit.
            let runs = runs(&points);
            if runs.iter().all(|&len| len <= 125) {
                prop_assert_eq!(tight.plan().requests().len(), runs.len());
            } else {
                prop_assert!(tight.plan().requests().len() >= runs.len());
            }
        }

        #[test]
        fn points_that_do_not_overlap_get_the_fewest_requests(
            points in disjoint_points(),
            max_gap in max_gap(),
        ) {
            let planner = Planner::new(&points, max_gap);
            check_plan(&points, max_gap, planner.plan())?;
            prop_assert_eq!(planner.plan().requests().len(), fewest(&points, max_gap));
        }

        /// A device with unmapped addresses: the planner converges to reading every
        /// point whose own items are mapped, and only those, after at most 3 rejections
        /// per point, never asking for a rejected range again.
        #[test]
        fn learned_splits_converge_on_what_the_device_serves(
            points in prop::collection::vec(encoding(), 0..40),
            unmapped in prop::collection::hash_set((0usize..4, 0u32..320), 0..30),
            max_gap in max_gap(),
        ) {
            let tables = [Table::Coil, Table::Discrete, Table::Holding, Table::Input];
            let refused = |r: &ReadRange| {
                let table = tables.iter().position(|&t| t == r.table).unwrap_or(0);
                let start = u32::from(r.address);
                (start..start + u32::from(r.count)).any(|a| unmapped.contains(&(table, a)))
            };
            let mut planner = Planner::new(&points, max_gap);
            let mut rejected = HashSet::new();
            let mut rejections = 0;
            loop {
                let plan = planner.plan().clone();
                for request in plan.requests() {
                    prop_assert!(!rejected.contains(&request.range), "asked again");
                }
                let Some(bad) = plan.requests().iter().find(|r| refused(&r.range)) else {
                    break;
                };
                prop_assert!(planner.rejected(bad.range));
                rejected.insert(bad.range);
                rejections += 1;
                prop_assert!(rejections <= 3 * points.len());
            }
            // Still one request per point within limits, just not across refused items.
            for (i, p) in points.iter().enumerate() {
                let own = ReadRange {
                    table: p.table,
                    address: p.address,
                    count: p.data_type.registers(),
                };
                let is_bad = planner.plan().bad().iter().any(|b| b.point == i);
                prop_assert_eq!(is_bad, !readable(p) || refused(&own), "point {}", i);
                let reads = planner
                    .plan()
                    .requests()
                    .iter()
                    .filter(|r| r.points.iter().any(|s| s.point == i))
                    .count();
                prop_assert_eq!(reads, usize::from(!is_bad));
            }
        }

        #[test]
        fn a_device_that_refuses_everything_ends_with_every_point_bad(
            points in prop::collection::vec(encoding(), 1..40),
        ) {
            let mut planner = Planner::new(&points, MaxGap::default());
            let mut rejections = 0;
            while let Some(request) = planner.plan().requests().first() {
                let range = request.range;
                prop_assert!(planner.rejected(range));
                rejections += 1;
                prop_assert!(rejections <= 3 * points.len());
            }
            prop_assert_eq!(planner.plan().bad().len(), points.len());
        }
    }
}
