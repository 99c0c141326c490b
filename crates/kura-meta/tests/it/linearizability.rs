//! A linearizability checker for the metadata cluster's key-value surface.
//!
//! The integration tests drive a real cluster from many concurrent clients,
//! record every operation as a [`History`] of invocations and completions,
//! and ask [`check`] whether some single sequential order of those operations
//! (a *linearization*) both respects real time — an operation that returned
//! before another was invoked comes first — and reproduces every observed
//! outcome under the model below.
//!
//! # Model
//!
//! Each key is an independent register holding `Option<Record>`:
//! - [`Op::Put`] is put-if-absent-or-identical: it creates version 1 when the
//!   key is absent, is a no-op when the same value is present, and reports a
//!   conflict (changing nothing) when another value is present;
//! - [`Op::Cas`] replaces the value and bumps the version when the current
//!   version is the expected one;
//! - [`Op::Read`] returns the record.
//!
//! The model is deterministic: given a state and an operation there is exactly
//! one outcome and one next state ([`apply`]).
//!
//! # Algorithm
//!
//! Keys are independent registers, so a history is linearizable iff each
//! key's sub-history is (Herlihy and Wing's locality, which Lowe calls
//! P-compositionality); each key is checked on its own, which keeps the search
//! exponential only in the concurrency of one key rather than of the whole
//! run.
//!
//! Per key we run the Wing–Gong search as improved by Lowe ("Testing for
//! linearizability", 2017) — the same algorithm Porcupine and Knossos use:
//! - every operation contributes a *call* and a *return* entry to one
//!   doubly-linked list ordered by time;
//! - the operations that may take effect next are exactly those whose call
//!   precedes the first return in the list (anything invoked after some
//!   pending operation returned must wait for it);
//! - we walk the list from its head; at a call we apply the operation to the
//!   model and, if the outcome matches what was observed, push it on a stack,
//!   unlink its two entries and restart from the head; reaching a return entry
//!   means no candidate works in this state, so we pop the last choice, relink
//!   it and try the candidate after it;
//! - Lowe's memoization: a set of (linearized-operations bitset, model state)
//!   pairs already explored. Two search paths that linearized the same
//!   operations and reached the same state have identical futures, so the
//!   second is cut off. This is what turns the search from factorial into
//!   something practical for hundreds of operations.
//!
//! On top of that, one partial-order reduction: when a candidate cannot lose
//! a solution by going first — a read (or another op that changes nothing)
//! whose outcome matches the current state, or an unknown-outcome op that can
//! never take effect any more — it is linearized without trying the
//! alternatives ([`Searcher::forced_candidate`] argues why that is sound).
//! Without it the memo, which tells apart every subset of concurrent reads,
//! blows up on read-heavy histories long before it reaches a verdict. The
//! tests compare the checker against a brute-force enumeration of orders.
//!
//! Intervals that merely touch (one op returns at the tick the other is
//! invoked) count as concurrent, so equal ticks never cause a false alarm.
//!
//! Operations whose outcome is unknown (timeouts, crashed clients) may have
//! taken effect at any moment after their invocation, or never. They get a
//! return entry at +infinity, so they can be linearized anywhere after their
//! call, and they accept whatever outcome the model produces. "Never" needs no
//! special case: the search succeeds as soon as every operation with a known
//! outcome is linearized, which is the same as placing the remaining unknown
//! operations after everything observable. Unknown reads change nothing and
//! constrain nothing, so they are dropped up front, as are operations that
//! definitely failed ([`Outcome::Failed`]).
//!
//! The search is bounded by [`CheckConfig::steps_max_per_key`]; exceeding it
//! yields [`CheckResult::Timeout`] instead of a hung test.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// The value stored under a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Record {
    /// Content identity (e.g. a hash prefix); only equality matters.
    pub value: u64,
    /// 1 on creation, +1 on every successful compare-and-swap.
    pub version: u64,
}

/// An operation on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Put-if-absent-or-identical.
    Put { value: u64 },
    /// Compare-and-swap on the version.
    Cas { expected_version: u64, value: u64 },
    /// Read the current record, if any.
    Read,
}

/// What a client observed when an operation completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The key was absent; it now holds the value at version 1.
    PutCreated,
    /// The key already held this value; nothing changed.
    PutIdentical,
    /// The key holds another value; nothing changed.
    PutConflict { existing_value: u64 },
    /// The version matched; the key now holds the value at `new_version`.
    CasOk { new_version: u64 },
    /// The key is at another version; nothing changed.
    CasMismatch { current_version: u64 },
    /// The key is absent; nothing changed.
    CasNotFound,
    /// The record read.
    ReadValue(Option<Record>),
    /// Known not to have taken effect (e.g. rejected before it was proposed).
    /// Such operations are left out of the check.
    Failed,
}

/// One operation as a client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Who issued it; used only to make explanations readable.
    pub client: usize,
    pub key: String,
    pub op: Op,
    /// When the client sent it (any monotonic tick, e.g. nanoseconds).
    pub invoke: u128,
    /// When the client saw the outcome. `None` with a known outcome means
    /// "took effect, but we do not know when it returned": the operation must
    /// be linearized, at any point after `invoke`. Ignored when the outcome
    /// is unknown, since a timed-out request may still take effect later.
    pub complete: Option<u128>,
    /// `None` iff the outcome is unknown (timeout, crash): the operation may
    /// take effect at any moment after `invoke`, or never.
    pub outcome: Option<Outcome>,
}

/// Handle for an operation recorded with [`History::invoke`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId(usize);

/// A recorded run: every operation any client issued, on any key.
#[derive(Debug, Clone, Default)]
pub struct History {
    events: Vec<Event>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a finished (or abandoned) operation in one go.
    pub fn record(&mut self, event: Event) -> OpId {
        self.events.push(event);
        OpId(self.events.len() - 1)
    }

    /// Records that `client` sent `op` at tick `at`. Until [`Self::complete`]
    /// is called for the returned id, the outcome counts as unknown.
    pub fn invoke(&mut self, client: usize, key: impl Into<String>, op: Op, at: u128) -> OpId {
        self.record(Event {
            client,
            key: key.into(),
            op,
            invoke: at,
            complete: None,
            outcome: None,
        })
    }

    /// Records the outcome the client saw at tick `at`.
    ///
    /// # Panics
    /// If the operation was already completed: that is a bug in the test
    /// harness, not something the cluster can cause.
    pub fn complete(&mut self, id: OpId, at: u128, outcome: Outcome) {
        let event = &mut self.events[id.0];
        assert!(
            event.outcome.is_none(),
            "operation {id:?} completed twice: {event:?}, then {outcome:?} at {at}",
        );
        event.complete = Some(at);
        event.outcome = Some(outcome);
    }

    /// Every recorded operation, indexed by the numbers explanations use.
    pub fn events(&self) -> &[Event] {
        &self.events
    }
}

/// Bounds on the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckConfig {
    /// Search steps (list entries visited) allowed per key before giving up.
    /// Memory grows with it too: at most one memo entry per step, each a few
    /// dozen bytes plus the bitset.
    pub steps_max_per_key: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        // A few hundred operations per key with ~16 clients normally needs
        // well under 100k steps; this leaves two orders of magnitude of room
        // while staying within seconds and a few hundred MB in debug builds.
        Self {
            steps_max_per_key: 2_000_000,
        }
    }
}

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    Linearizable,
    NotLinearizable {
        key: String,
        /// Which operations could not be ordered, and why; multi-line.
        explanation: String,
    },
    /// The search budget ran out on this key before reaching a verdict.
    Timeout {
        key: String,
    },
}

impl CheckResult {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Linearizable => write!(f, "linearizable"),
            CheckResult::NotLinearizable { key, explanation } => {
                write!(f, "not linearizable on key {key:?}:\n{explanation}")
            }
            CheckResult::Timeout { key } => {
                write!(f, "linearizability search budget exceeded on key {key:?}")
            }
        }
    }
}

/// Checks `history` with the default search budget.
pub fn check(history: &History) -> CheckResult {
    check_with(history, &CheckConfig::default())
}

/// Checks `history` key by key. A definite violation on any key wins over a
/// timeout on another, since it is the more useful thing to report.
pub fn check_with(history: &History, config: &CheckConfig) -> CheckResult {
    // BTreeMap: keys are checked, and the first failure reported, in a
    // deterministic order.
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, event) in history.events.iter().enumerate() {
        by_key.entry(event.key.as_str()).or_default().push(index);
    }
    let mut timed_out = None;
    for (key, indices) in by_key {
        match check_key(&history.events, &indices, config) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::NotLinearizable(explanation) => {
                return CheckResult::NotLinearizable {
                    key: key.to_owned(),
                    explanation,
                };
            }
            KeyVerdict::Timeout => {
                timed_out.get_or_insert_with(|| key.to_owned());
            }
        }
    }
    match timed_out {
        Some(key) => CheckResult::Timeout { key },
        None => CheckResult::Linearizable,
    }
}

/// The model: the outcome of `op` in `state`, and the state after it.
pub fn apply(state: Option<Record>, op: &Op) -> (Option<Record>, Outcome) {
    match (*op, state) {
        (Op::Put { value }, None) => (Some(Record { value, version: 1 }), Outcome::PutCreated),
        (Op::Put { value }, Some(record)) if record.value == value => {
            (state, Outcome::PutIdentical)
        }
        (Op::Put { .. }, Some(record)) => (
            state,
            Outcome::PutConflict {
                existing_value: record.value,
            },
        ),
        (Op::Cas { .. }, None) => (None, Outcome::CasNotFound),
        (
            Op::Cas {
                expected_version,
                value,
            },
            Some(record),
        ) if record.version == expected_version => {
            // Saturating only so a hostile history cannot overflow; 2^64
            // writes to one key do not happen.
            let new_version = record.version.saturating_add(1);
            (
                Some(Record {
                    value,
                    version: new_version,
                }),
                Outcome::CasOk { new_version },
            )
        }
        (Op::Cas { .. }, Some(record)) => (
            state,
            Outcome::CasMismatch {
                current_version: record.version,
            },
        ),
        (Op::Read, _) => (state, Outcome::ReadValue(state)),
    }
}

enum KeyVerdict {
    Linearizable,
    NotLinearizable(String),
    Timeout,
}

/// One operation of the key being checked, in search form.
struct KeyOp {
    /// Index into [`History::events`], for explanations.
    event: usize,
    op: Op,
    /// `None`: unknown, so optional and accepting any outcome.
    outcome: Option<Outcome>,
    invoke: u128,
    /// `u128::MAX` stands for +infinity (unknown outcome or return time).
    ret: u128,
}

impl KeyOp {
    fn required(&self) -> bool {
        self.outcome.is_some()
    }
}

fn check_key(events: &[Event], indices: &[usize], config: &CheckConfig) -> KeyVerdict {
    let mut ops = Vec::with_capacity(indices.len());
    for &index in indices {
        let event = &events[index];
        let ret = match event.outcome {
            Some(Outcome::Failed) => continue,
            // Neither effect nor observation: nothing to check.
            None if event.op == Op::Read => continue,
            None => u128::MAX,
            Some(_) => match event.complete {
                Some(complete) if complete < event.invoke => {
                    return KeyVerdict::NotLinearizable(format!(
                        "malformed history: op #{index} completes at {complete}, before it was \
                         invoked at {}: {event:?}",
                        event.invoke,
                    ));
                }
                Some(complete) => complete,
                None => u128::MAX,
            },
        };
        ops.push(KeyOp {
            event: index,
            op: event.op,
            outcome: event.outcome,
            invoke: event.invoke,
            ret,
        });
    }
    match search(&ops, config.steps_max_per_key) {
        Search::Linearizable => KeyVerdict::Linearizable,
        Search::Timeout => KeyVerdict::Timeout,
        Search::Stuck { prefix, state } => {
            KeyVerdict::NotLinearizable(explain(events, &ops, &prefix, state))
        }
    }
}

enum Search {
    Linearizable,
    Timeout,
    /// The longest linearizable prefix found (indices into the key's ops) and
    /// the state after it: the most useful hint about where things broke.
    Stuck {
        prefix: Vec<usize>,
        state: Option<Record>,
    },
}

/// The Wing–Gong–Lowe search over one key's operations.
fn search(ops: &[KeyOp], steps_max: u64) -> Search {
    let mut searcher = Searcher::new(ops);
    let mut steps = 0_u64;
    let mut entry = searcher.list.first();
    // Whether `entry` is the head of a configuration not visited before, so
    // its forced candidate (if any) has not been looked for yet.
    let mut fresh = true;

    loop {
        if searcher.required_left == 0 {
            return Search::Linearizable;
        }
        steps += 1;
        if steps > steps_max {
            return Search::Timeout;
        }
        if fresh {
            fresh = false;
            if let Some(index) = searcher.forced_candidate(&mut steps) {
                let state = searcher.state;
                if searcher.push(index, state, true) {
                    entry = searcher.list.first();
                    fresh = true;
                    continue;
                }
                // The only move worth making here leads somewhere already
                // explored, and exploration that returns has failed.
                match searcher.backtrack() {
                    Some(next) => entry = next,
                    None => return searcher.stuck(),
                }
                continue;
            }
        }
        let Some((index, kind)) = searcher.list.decode(entry) else {
            // Running off the end would need every remaining required
            // operation's return entry to be gone, which cannot happen while
            // one is left; treat it as a dead end rather than trust that.
            return searcher.stuck();
        };
        match kind {
            EntryKind::Call => {
                let op = &ops[index];
                let (next_state, outcome) = apply(searcher.state, &op.op);
                let fits = op.outcome.is_none_or(|observed| observed == outcome);
                if fits && searcher.push(index, next_state, false) {
                    entry = searcher.list.first();
                    fresh = true;
                    continue;
                }
                entry = searcher.list.next(entry);
            }
            EntryKind::Return => {
                // A pending operation's return comes before every remaining
                // call: all candidates in this configuration were tried.
                match searcher.backtrack() {
                    Some(next) => entry = next,
                    None => return searcher.stuck(),
                }
            }
        }
    }
}

/// A linearization decision on the search stack.
struct Choice {
    index: usize,
    state_before: Option<Record>,
    /// Taken because it could not lose a solution (see
    /// [`Searcher::forced_candidate`]), so no alternative needs trying.
    forced: bool,
}

/// The mutable state of one key's search.
struct Searcher<'a> {
    ops: &'a [KeyOp],
    list: EntryList,
    linearized: Bitset,
    /// Configurations (linearized set, state) already pushed. Any not on the
    /// stack has been fully explored without success.
    memo: HashSet<(Bitset, Option<Record>)>,
    stack: Vec<Choice>,
    state: Option<Record>,
    required_left: usize,
    best_prefix: Vec<usize>,
    best_state: Option<Record>,
}

impl<'a> Searcher<'a> {
    fn new(ops: &'a [KeyOp]) -> Self {
        Self {
            ops,
            list: EntryList::new(ops),
            linearized: Bitset::new(ops.len()),
            memo: HashSet::new(),
            stack: Vec::new(),
            state: None,
            required_left: ops.iter().filter(|op| op.required()).count(),
            best_prefix: Vec::new(),
            best_state: None,
        }
    }

    /// Linearizes op `index` next, moving to `next_state`. Returns false,
    /// changing nothing, if that configuration was explored before.
    fn push(&mut self, index: usize, next_state: Option<Record>, forced: bool) -> bool {
        self.linearized.set(index);
        if !self.memo.insert((self.linearized.clone(), next_state)) {
            self.linearized.clear(index);
            return false;
        }
        self.stack.push(Choice {
            index,
            state_before: self.state,
            forced,
        });
        self.state = next_state;
        if self.ops[index].required() {
            self.required_left -= 1;
        }
        self.list.lift(index);
        if self.stack.len() > self.best_prefix.len() {
            self.best_prefix = self.stack.iter().map(|choice| choice.index).collect();
            self.best_state = self.state;
        }
        true
    }

    /// Undoes choices up to and including the latest free one and returns
    /// the entry after its call, the next candidate to try; `None` when
    /// there is nothing left to undo.
    fn backtrack(&mut self) -> Option<usize> {
        while let Some(choice) = self.stack.pop() {
            self.linearized.clear(choice.index);
            self.state = choice.state_before;
            if self.ops[choice.index].required() {
                self.required_left += 1;
            }
            self.list.unlift(choice.index);
            if !choice.forced {
                return Some(self.list.next(EntryList::call(choice.index)));
            }
            // A forced choice was the only one tried in the configuration
            // before it, and it cannot lose a solution, so that
            // configuration has failed too: keep undoing.
        }
        None
    }

    /// A candidate that can be linearized right now without losing any
    /// solution, if there is one; the search then tries nothing else here.
    ///
    /// This partial-order reduction is what keeps heavily concurrent
    /// read-mostly histories tractable, since the plain search (and its memo,
    /// which keys on the set of linearized reads) branches on every order of
    /// concurrent reads. Two kinds of candidates qualify:
    /// - a known-outcome op that leaves the state unchanged (a read, an
    ///   identical or conflicting put, a failed CAS) and whose outcome
    ///   matches the current state. In any successful continuation it can be
    ///   moved to the front: it observes the same state there, the ops it
    ///   overtakes see the same states, and real time allows it because
    ///   being a candidate means no pending op returned before it was
    ///   invoked;
    /// - an unknown-outcome op that can never change the state again: a put
    ///   once the key exists, a CAS once the version has passed its expected
    ///   one (keys are never deleted and versions only grow). Linearizing it
    ///   as a no-op is then the same as any other placement, or none.
    fn forced_candidate(&self, steps: &mut u64) -> Option<usize> {
        let mut entry = self.list.first();
        while let Some((index, EntryKind::Call)) = self.list.decode(entry) {
            *steps += 1;
            let op = &self.ops[index];
            let inert = match op.outcome {
                Some(observed) => {
                    let (next_state, outcome) = apply(self.state, &op.op);
                    next_state == self.state && observed == outcome
                }
                None => never_takes_effect(self.state, &op.op),
            };
            if inert {
                return Some(index);
            }
            entry = self.list.next(entry);
        }
        None
    }

    fn stuck(self) -> Search {
        Search::Stuck {
            prefix: self.best_prefix,
            state: self.best_state,
        }
    }
}

/// Whether `op` leaves the register unchanged in `state` and in every state
/// reachable from it. Relies on the model's monotonicity: a key, once
/// created, stays, and its version only grows.
fn never_takes_effect(state: Option<Record>, op: &Op) -> bool {
    match (*op, state) {
        (Op::Read, _) => true,
        (Op::Put { .. }, present) => present.is_some(),
        (
            Op::Cas {
                expected_version, ..
            },
            Some(record),
        ) => record.version > expected_version,
        (Op::Cas { .. }, None) => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Call,
    Return,
}

/// The call/return entries of one key's operations as a doubly-linked list
/// in time order, over arrays. Entry 0 is the head sentinel, `1 + 2i` the call
/// of op `i`, `2 + 2i` its return, and the last index the tail sentinel.
/// Unlinking leaves an entry's own links intact, so relinking in reverse
/// order (dancing links) restores the list exactly.
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    tail: usize,
}

impl EntryList {
    const HEAD: usize = 0;

    fn new(ops: &[KeyOp]) -> Self {
        let tail = 2 * ops.len() + 1;
        let mut order: Vec<usize> = (1..tail).collect();
        // At equal ticks calls sort before returns, so touching intervals
        // count as concurrent: with coarse or per-task clocks we would rather
        // miss a violation at the exact boundary than report a false one.
        order.sort_by_key(|&entry| {
            let index = (entry - 1) / 2;
            let (time, kind) = if entry % 2 == 1 {
                (ops[index].invoke, 0_u8)
            } else {
                (ops[index].ret, 1_u8)
            };
            (time, kind, index)
        });
        let mut next = vec![tail; tail + 1];
        let mut prev = vec![Self::HEAD; tail + 1];
        let mut last = Self::HEAD;
        for entry in order {
            next[last] = entry;
            prev[entry] = last;
            last = entry;
        }
        next[last] = tail;
        prev[tail] = last;
        Self { next, prev, tail }
    }

    fn call(index: usize) -> usize {
        1 + 2 * index
    }

    fn first(&self) -> usize {
        self.next[Self::HEAD]
    }

    fn next(&self, entry: usize) -> usize {
        self.next[entry]
    }

    /// The operation and kind of `entry`, or `None` for the tail.
    fn decode(&self, entry: usize) -> Option<(usize, EntryKind)> {
        if entry == Self::HEAD || entry >= self.tail {
            return None;
        }
        let kind = if entry % 2 == 1 {
            EntryKind::Call
        } else {
            EntryKind::Return
        };
        Some(((entry - 1) / 2, kind))
    }

    fn lift(&mut self, index: usize) {
        let call = Self::call(index);
        self.unlink(call);
        self.unlink(call + 1);
    }

    fn unlift(&mut self, index: usize) {
        let call = Self::call(index);
        self.relink(call + 1);
        self.relink(call);
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        self.prev[next] = entry;
    }
}

/// Which of a key's operations are linearized; half of the memo key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, index: usize) {
        self.0[index / 64] |= 1 << (index % 64);
    }

    fn clear(&mut self, index: usize) {
        self.0[index / 64] &= !(1 << (index % 64));
    }
}

/// How many operations an explanation lists before summarizing the rest.
const EXPLAIN_OPS_MAX: usize = 12;

/// Describes the dead end the search could not get past: the longest prefix
/// that linearized, the state it left, and why each remaining required
/// operation cannot come next. The prefix is one of possibly several longest
/// ones, so this is a strong hint rather than the unique culprit.
fn explain(events: &[Event], ops: &[KeyOp], prefix: &[usize], state: Option<Record>) -> String {
    use fmt::Write as _;

    let describe = |index: usize| {
        let op = &ops[index];
        let client = events[op.event].client;
        let outcome = match op.outcome {
            Some(outcome) => format!("{outcome:?}"),
            None => "unknown".to_owned(),
        };
        let ret = if op.ret == u128::MAX {
            "∞".to_owned()
        } else {
            op.ret.to_string()
        };
        format!(
            "#{} client {client} {:?} -> {outcome} [{}, {ret}]",
            op.event, op.op, op.invoke,
        )
    };

    let required = ops.iter().filter(|op| op.required()).count();
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        text,
        "no order of the {} ops ({required} with known outcomes) fits the model.",
        ops.len(),
    );
    let _ = writeln!(text, "Longest linearizable prefix ({} ops):", prefix.len());
    let skipped = prefix.len().saturating_sub(EXPLAIN_OPS_MAX);
    if skipped > 0 {
        let _ = writeln!(text, "  ... {skipped} earlier ops");
    }
    for &index in &prefix[skipped..] {
        let _ = writeln!(text, "  {}", describe(index));
    }
    let _ = writeln!(text, "State after it: {state:?}");

    let mut in_prefix = vec![false; ops.len()];
    for &index in prefix {
        in_prefix[index] = true;
    }
    let remaining: Vec<usize> = (0..ops.len())
        .filter(|&index| !in_prefix[index] && ops[index].required())
        .collect();
    // The earliest return among the pending ops bounds which ops may go next.
    let first_return = (0..ops.len())
        .filter(|&index| !in_prefix[index])
        .min_by_key(|&index| (ops[index].ret, index));
    let _ = writeln!(
        text,
        "None of the {} remaining ops with known outcomes can take effect next:",
        remaining.len(),
    );
    for &index in remaining.iter().take(EXPLAIN_OPS_MAX) {
        let op = &ops[index];
        let reason = match first_return {
            Some(first) if ops[first].ret < op.invoke => format!(
                "invoked after #{} returned at {}, so must follow it",
                ops[first].event, ops[first].ret,
            ),
            _ => {
                let (_, expected) = apply(state, &op.op);
                if op.outcome == Some(expected) {
                    "fits this state, but no order of the remaining ops works after it".to_owned()
                } else {
                    format!("in this state the model gives {expected:?}")
                }
            }
        };
        let _ = writeln!(text, "  {}: {reason}", describe(index));
    }
    if remaining.len() > EXPLAIN_OPS_MAX {
        let _ = writeln!(text, "  ... and {} more", remaining.len() - EXPLAIN_OPS_MAX);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(value: u64, version: u64) -> Record {
        Record { value, version }
    }

    fn done(client: usize, key: &str, op: Op, invoke: u128, complete: u128, out: Outcome) -> Event {
        Event {
            client,
            key: key.to_owned(),
            op,
            invoke,
            complete: Some(complete),
            outcome: Some(out),
        }
    }

    fn unknown(client: usize, key: &str, op: Op, invoke: u128) -> Event {
        Event {
            client,
            key: key.to_owned(),
            op,
            invoke,
            complete: None,
            outcome: None,
        }
    }

    fn history(events: impl IntoIterator<Item = Event>) -> History {
        let mut history = History::new();
        for event in events {
            history.record(event);
        }
        history
    }

    #[track_caller]
    fn assert_linearizable(history: &History) {
        let result = check(history);
        assert!(result.is_linearizable(), "{result}\n{history:#?}");
    }

    #[track_caller]
    fn assert_violation(history: &History, key: &str) -> String {
        match check(history) {
            CheckResult::NotLinearizable {
                key: bad,
                explanation,
            } => {
                assert_eq!(bad, key, "{explanation}");
                explanation
            }
            other => panic!("expected a violation on {key:?}, got {other}\n{history:#?}"),
        }
    }

    const PUT1: Op = Op::Put { value: 1 };
    const PUT2: Op = Op::Put { value: 2 };

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&History::new());
    }

    #[test]
    fn sequential_ops_of_each_type_are_linearizable() {
        use Outcome::*;
        let cas = |expected_version, value| Op::Cas {
            expected_version,
            value,
        };
        let h = history([
            done(0, "k", Op::Read, 0, 1, ReadValue(None)),
            done(0, "k", cas(1, 5), 2, 3, CasNotFound),
            done(0, "k", PUT1, 4, 5, PutCreated),
            done(0, "k", PUT1, 6, 7, PutIdentical),
            done(0, "k", PUT2, 8, 9, PutConflict { existing_value: 1 }),
            done(0, "k", Op::Read, 10, 11, ReadValue(Some(rec(1, 1)))),
            done(0, "k", cas(1, 2), 12, 13, CasOk { new_version: 2 }),
            done(
                0,
                "k",
                cas(1, 3),
                14,
                15,
                CasMismatch { current_version: 2 },
            ),
            done(0, "k", Op::Read, 16, 17, ReadValue(Some(rec(2, 2)))),
            done(0, "k", PUT2, 18, 19, PutIdentical),
        ]);
        assert_linearizable(&h);
    }

    #[test]
    fn wrong_sequential_outcome_is_caught() {
        let h = history([
            done(0, "k", PUT1, 0, 1, Outcome::PutCreated),
            done(
                0,
                "k",
                PUT2,
                2,
                3,
                Outcome::PutConflict { existing_value: 3 },
            ),
        ]);
        let explanation = assert_violation(&h, "k");
        assert!(
            explanation.contains("PutConflict { existing_value: 1 }"),
            "{explanation}"
        );
    }

    #[test]
    fn read_seeing_a_put_not_yet_invoked_is_caught() {
        let h = history([
            done(0, "k", Op::Read, 0, 10, Outcome::ReadValue(Some(rec(1, 1)))),
            done(1, "k", PUT1, 20, 30, Outcome::PutCreated),
        ]);
        let explanation = assert_violation(&h, "k");
        // The explanation names the read and what the model expected of it.
        assert!(explanation.contains("#0 client 0 Read"), "{explanation}");
        assert!(explanation.contains("ReadValue(None)"), "{explanation}");
    }

    #[test]
    fn read_overlapping_its_put_may_see_it() {
        let h = history([
            done(0, "k", Op::Read, 0, 25, Outcome::ReadValue(Some(rec(1, 1)))),
            done(1, "k", PUT1, 20, 30, Outcome::PutCreated),
        ]);
        assert_linearizable(&h);
    }

    #[test]
    fn concurrent_puts_resolve_to_one_creator() {
        use Outcome::*;
        // Either order is fine as long as the loser names the winner's value.
        for (first, second) in [(1, 2), (2, 1)] {
            let h = history([
                done(0, "k", Op::Put { value: first }, 0, 10, PutCreated),
                done(
                    1,
                    "k",
                    Op::Put { value: second },
                    5,
                    15,
                    PutConflict {
                        existing_value: first,
                    },
                ),
                done(2, "k", Op::Read, 20, 30, ReadValue(Some(rec(first, 1)))),
            ]);
            assert_linearizable(&h);
        }
        // Equal values: one creates, the other finds it identical.
        let h = history([
            done(0, "k", PUT1, 0, 10, PutIdentical),
            done(1, "k", PUT1, 5, 15, PutCreated),
        ]);
        assert_linearizable(&h);
    }

    #[test]
    fn two_creators_are_caught() {
        use Outcome::*;
        let h = history([
            done(0, "k", PUT1, 0, 10, PutCreated),
            done(1, "k", PUT2, 5, 15, PutCreated),
        ]);
        assert_violation(&h, "k");
        // Even with equal values only one put can find the key absent.
        let h = history([
            done(0, "k", PUT1, 0, 10, PutCreated),
            done(1, "k", PUT1, 5, 15, PutCreated),
        ]);
        assert_violation(&h, "k");
        // A loser naming a value nobody wrote.
        let h = history([
            done(0, "k", PUT1, 0, 10, PutCreated),
            done(1, "k", PUT2, 5, 15, PutConflict { existing_value: 7 }),
        ]);
        assert_violation(&h, "k");
    }

    #[test]
    fn many_concurrent_puts_on_independent_keys() {
        // 16 clients race on each of 4 keys; the creator's value is what the
        // others report. Exercises per-key splitting and the memo.
        let mut h = History::new();
        for (k, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let winner = 5 + k as u128;
            for client in 0..16_u64 {
                let outcome = if u128::from(client) == winner {
                    Outcome::PutCreated
                } else {
                    Outcome::PutConflict {
                        existing_value: winner as u64,
                    }
                };
                let at = u128::from(client);
                h.record(done(
                    client as usize,
                    key,
                    Op::Put { value: client },
                    at,
                    100 + at,
                    outcome,
                ));
            }
        }
        assert_linearizable(&h);
    }

    #[test]
    fn cas_chain_is_linearizable() {
        use Outcome::*;
        let mut events = vec![done(0, "k", PUT1, 0, 10, PutCreated)];
        // Concurrent CAS from version v: exactly one wins each round.
        for round in 1..=5_u64 {
            let at = u128::from(round) * 100;
            events.push(done(
                1,
                "k",
                Op::Cas {
                    expected_version: round,
                    value: 10 + round,
                },
                at,
                at + 50,
                CasMismatch {
                    current_version: round + 1,
                },
            ));
            events.push(done(
                2,
                "k",
                Op::Cas {
                    expected_version: round,
                    value: 20 + round,
                },
                at + 10,
                at + 40,
                CasOk {
                    new_version: round + 1,
                },
            ));
        }
        events.push(done(
            3,
            "k",
            Op::Read,
            1000,
            1010,
            ReadValue(Some(rec(25, 6))),
        ));
        assert_linearizable(&history(events));
    }

    #[test]
    fn cas_outcome_contradicting_a_completed_read_is_caught() {
        use Outcome::*;
        let cas = Op::Cas {
            expected_version: 1,
            value: 2,
        };
        // A read completed at version 1, then a CAS invoked afterwards claims
        // the key had already moved on, with no other writer around.
        let h = history([
            done(0, "k", PUT1, 0, 10, PutCreated),
            done(1, "k", Op::Read, 20, 30, ReadValue(Some(rec(1, 1)))),
            done(2, "k", cas, 40, 50, CasMismatch { current_version: 2 }),
        ]);
        assert_violation(&h, "k");
        // A CAS that succeeded, then a later read reporting a version the
        // CAS never produced.
        let h = history([
            done(0, "k", PUT1, 0, 10, PutCreated),
            done(1, "k", cas, 20, 30, CasOk { new_version: 2 }),
            done(2, "k", Op::Read, 40, 50, ReadValue(Some(rec(2, 3)))),
        ]);
        assert_violation(&h, "k");
    }

    #[test]
    fn stale_read_after_completed_cas_is_caught() {
        use Outcome::*;
        let cas = Op::Cas {
            expected_version: 1,
            value: 2,
        };
        let mut h = History::new();
        let put = h.invoke(0, "k", PUT1, 0);
        h.complete(put, 10, PutCreated);
        let swap = h.invoke(1, "k", cas, 20);
        h.complete(swap, 30, CasOk { new_version: 2 });
        let read = h.invoke(2, "k", Op::Read, 40);
        h.complete(read, 50, ReadValue(Some(rec(1, 1))));
        let explanation = assert_violation(&h, "k");
        assert!(explanation.contains("#2 client 2 Read"), "{explanation}");

        // The same read overlapping the CAS is fine: it took effect first.
        let mut h = History::new();
        let put = h.invoke(0, "k", PUT1, 0);
        h.complete(put, 10, PutCreated);
        let swap = h.invoke(1, "k", cas, 20);
        h.complete(swap, 30, CasOk { new_version: 2 });
        let read = h.invoke(2, "k", Op::Read, 25);
        h.complete(read, 50, ReadValue(Some(rec(1, 1))));
        assert_linearizable(&h);
    }

    #[test]
    fn unknown_put_may_or_may_not_take_effect() {
        use Outcome::*;
        // Observed by a later read: it took effect.
        let observed = history([
            unknown(0, "k", PUT1, 0),
            done(1, "k", Op::Read, 20, 30, ReadValue(Some(rec(1, 1)))),
        ]);
        assert_linearizable(&observed);
        // Never observed: it may never have happened.
        let unobserved = history([
            unknown(0, "k", PUT1, 0),
            done(1, "k", Op::Read, 20, 30, ReadValue(None)),
            done(1, "k", Op::Read, 40, 50, ReadValue(None)),
        ]);
        assert_linearizable(&unobserved);
        // Absent, then present: it took effect late, after its client gave up.
        let late = history([
            unknown(0, "k", PUT1, 0),
            done(1, "k", Op::Read, 20, 30, ReadValue(None)),
            done(1, "k", Op::Read, 40, 50, ReadValue(Some(rec(1, 1)))),
        ]);
        assert_linearizable(&late);
        // Present, then absent: nothing deletes, so this is a violation.
        let flicker = history([
            unknown(0, "k", PUT1, 0),
            done(1, "k", Op::Read, 20, 30, ReadValue(Some(rec(1, 1)))),
            done(1, "k", Op::Read, 40, 50, ReadValue(None)),
        ]);
        assert_violation(&flicker, "k");
        // But it cannot take effect before it was invoked.
        let early = history([
            done(1, "k", Op::Read, 0, 10, ReadValue(Some(rec(1, 1)))),
            unknown(0, "k", PUT1, 20),
        ]);
        assert_violation(&early, "k");
    }

    #[test]
    fn invoked_but_never_completed_is_unknown() {
        let mut h = History::new();
        let _abandoned = h.invoke(0, "k", PUT1, 0);
        let read = h.invoke(1, "k", Op::Read, 20);
        h.complete(read, 30, Outcome::ReadValue(Some(rec(1, 1))));
        assert_eq!(h.events()[0].outcome, None);
        assert_linearizable(&h);
    }

    #[test]
    fn failed_ops_are_ignored() {
        let h = history([
            done(0, "k", PUT2, 0, 5, Outcome::Failed),
            done(1, "k", PUT1, 10, 20, Outcome::PutCreated),
            done(
                1,
                "k",
                Op::Read,
                30,
                40,
                Outcome::ReadValue(Some(rec(1, 1))),
            ),
        ]);
        assert_linearizable(&h);
    }

    #[test]
    fn known_outcome_without_return_time_must_still_take_effect() {
        let h = history([
            Event {
                complete: None,
                ..done(0, "k", PUT1, 0, 0, Outcome::PutCreated)
            },
            done(1, "k", Op::Read, 20, 30, Outcome::ReadValue(None)),
        ]);
        // The put may go after the read...
        assert_linearizable(&h);
        // ...but it must go somewhere, so a conflicting creator is caught.
        let mut h = h;
        h.record(done(2, "k", PUT2, 40, 50, Outcome::PutCreated));
        assert_violation(&h, "k");
    }

    #[test]
    fn completion_before_invocation_is_reported() {
        let h = history([done(0, "k", PUT1, 10, 5, Outcome::PutCreated)]);
        let explanation = assert_violation(&h, "k");
        assert!(explanation.contains("malformed"), "{explanation}");
    }

    #[test]
    fn violation_is_reported_for_the_bad_key_only() {
        let h = history([
            done(0, "good", PUT1, 0, 10, Outcome::PutCreated),
            done(
                0,
                "bad",
                Op::Read,
                0,
                10,
                Outcome::ReadValue(Some(rec(1, 1))),
            ),
            done(
                1,
                "good",
                Op::Read,
                20,
                30,
                Outcome::ReadValue(Some(rec(1, 1))),
            ),
        ]);
        assert_violation(&h, "bad");
    }

    #[test]
    fn exhausted_budget_is_a_timeout() {
        // Many mutually concurrent puts of the same value with a read at the
        // end: linearizable, but not within three steps.
        let mut h = History::new();
        for client in 0..8 {
            let outcome = if client == 0 {
                Outcome::PutCreated
            } else {
                Outcome::PutIdentical
            };
            h.record(done(client, "k", PUT1, 0, 10, outcome));
        }
        let config = CheckConfig {
            steps_max_per_key: 3,
        };
        assert_eq!(
            check_with(&h, &config),
            CheckResult::Timeout {
                key: "k".to_owned()
            },
        );
        assert_eq!(
            CheckResult::Timeout {
                key: "k".to_owned()
            }
            .to_string(),
            "linearizability search budget exceeded on key \"k\"",
        );
        assert_linearizable(&h);
    }

    /// SplitMix64: a seeded generator so randomized tests need no crates and
    /// a failure reproduces from the printed seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    /// Runs a random sequence of operations against the model, one after
    /// another at linearization points 100 ticks apart, and gives each a
    /// random interval reaching up to `overlap_ticks` either side of its
    /// point. Every interval contains its point, so the points are a valid
    /// linearization and the history is linearizable by construction;
    /// roughly `overlap_ticks / 100` ops overlap at any time. Some ops are
    /// recorded as unknown (taking effect or not) or as failed (not taking
    /// effect). Also returns each key's final state under the construction.
    fn random_history(
        rng: &mut Rng,
        keys: &[&str],
        ops: usize,
        overlap_ticks: u64,
    ) -> (History, Vec<Option<Record>>) {
        let mut states: Vec<Option<Record>> = vec![None; keys.len()];
        let mut history = History::new();
        for step in 0..ops {
            let k = rng.below(keys.len() as u64) as usize;
            let state = states[k];
            let version = state.map_or(1, |record| record.version);
            let value = rng.below(4);
            let op = match rng.below(10) {
                0..=3 => Op::Read,
                4..=5 => Op::Put { value },
                _ => Op::Cas {
                    // Mostly the current version so chains advance; sometimes
                    // a stale or future one.
                    expected_version: (version + rng.below(3)).saturating_sub(1).max(1),
                    value,
                },
            };
            let point = u128::from(overlap_ticks) + 100 * step as u128;
            let invoke = point - u128::from(rng.below(overlap_ticks));
            let complete = point + u128::from(rng.below(overlap_ticks));
            let client = rng.below(16) as usize;
            let (next, outcome) = apply(state, &op);
            let (applied, complete, outcome) = match rng.below(20) {
                // Unknown and took effect.
                0 => (true, None, None),
                // Unknown and never took effect.
                1 => (false, None, None),
                // Rejected before it could take effect.
                2 => (false, Some(complete), Some(Outcome::Failed)),
                _ => (true, Some(complete), Some(outcome)),
            };
            if applied {
                states[k] = next;
            }
            history.record(Event {
                client,
                key: keys[k].to_owned(),
                op,
                invoke,
                complete,
                outcome,
            });
        }
        (history, states)
    }

    #[test]
    fn random_linearizable_histories_pass_and_a_corrupted_read_fails() {
        let keys = ["a", "b", "c"];
        for seed in 0..40_u64 {
            let mut rng = Rng(seed);
            let (mut history, _) = random_history(&mut rng, &keys, 300, 800);
            let result = check(&history);
            assert!(result.is_linearizable(), "seed {seed}: {result}");

            // Corrupt one known read with a value no operation ever writes.
            let reads: Vec<usize> = (0..history.events.len())
                .filter(|&i| {
                    let event = &history.events[i];
                    event.op == Op::Read && matches!(event.outcome, Some(Outcome::ReadValue(_)))
                })
                .collect();
            let victim = reads[rng.below(reads.len() as u64) as usize];
            let version = rng.below(3) + 1;
            history.events[victim].outcome = Some(Outcome::ReadValue(Some(rec(99, version))));
            let key = history.events[victim].key.clone();
            match check(&history) {
                CheckResult::NotLinearizable { key: bad, .. } => {
                    assert_eq!(bad, key, "seed {seed}");
                }
                other => panic!("seed {seed}: corrupted read #{victim} not caught: {other}"),
            }
        }
    }

    #[test]
    fn random_stale_reads_are_caught() {
        // Append, after everything else, a read of the key's true final
        // state and then a read one version behind it. The first keeps the
        // history linearizable; the second must be caught, since versions
        // never go back.
        let mut checked = 0;
        for seed in 100..120_u64 {
            let mut rng = Rng(seed);
            let (mut history, states) = random_history(&mut rng, &["a"], 200, 800);
            let Some(latest) = states[0].filter(|record| record.version > 1) else {
                continue;
            };
            let end = 1_000_000;
            let fresh = Outcome::ReadValue(Some(latest));
            history.record(done(0, "a", Op::Read, end, end + 10, fresh));
            assert_linearizable(&history);
            let behind = Some(rec(latest.value, latest.version - 1));
            let stale = Outcome::ReadValue(behind);
            history.record(done(1, "a", Op::Read, end + 20, end + 30, stale));
            assert_violation(&history, "a");
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} seeds produced a CAS chain");
    }

    /// The definition, executed: try every order that respects real time,
    /// with each unknown op either taking effect somewhere or nowhere. Only
    /// for a handful of ops; the reference [`check`] is compared against.
    fn brute_force(events: &[Event]) -> bool {
        fn go(pending: &[&Event], state: Option<Record>) -> bool {
            if pending.iter().all(|event| event.outcome.is_none()) {
                return true;
            }
            // An op may go next unless some other pending op returned
            // before it was invoked.
            let first_return = pending
                .iter()
                .filter(|event| event.outcome.is_some())
                .filter_map(|event| event.complete)
                .min()
                .unwrap_or(u128::MAX);
            (0..pending.len()).any(|i| {
                let event = pending[i];
                if event.invoke > first_return {
                    return false;
                }
                let mut rest = pending.to_vec();
                rest.remove(i);
                let (next, outcome) = apply(state, &event.op);
                match event.outcome {
                    None => go(&rest, next) || go(&rest, state),
                    Some(observed) => observed == outcome && go(&rest, next),
                }
            })
        }
        let pending: Vec<&Event> = events
            .iter()
            .filter(|event| event.outcome != Some(Outcome::Failed))
            .collect();
        go(&pending, None)
    }

    fn random_outcome(rng: &mut Rng, op: &Op) -> Outcome {
        let small = |rng: &mut Rng| rng.below(3) + 1;
        match op {
            Op::Put { .. } => match rng.below(3) {
                0 => Outcome::PutCreated,
                1 => Outcome::PutIdentical,
                _ => Outcome::PutConflict {
                    existing_value: rng.below(4),
                },
            },
            Op::Cas { .. } => match rng.below(3) {
                0 => Outcome::CasOk {
                    new_version: small(rng),
                },
                1 => Outcome::CasMismatch {
                    current_version: small(rng),
                },
                _ => Outcome::CasNotFound,
            },
            Op::Read => Outcome::ReadValue(match rng.below(3) {
                0 => None,
                _ => Some(rec(rng.below(4), small(rng))),
            }),
        }
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let (mut linearizable, mut violations) = (0, 0);
        for seed in 1_000..3_000_u64 {
            let mut rng = Rng(seed);
            let ops = 2 + rng.below(5) as usize;
            let overlap_ticks = 1 + rng.below(400);
            let (mut history, _) = random_history(&mut rng, &["k"], ops, overlap_ticks);
            // Half the time, replace an outcome with a random one of the
            // right kind: sometimes still fine, often a violation.
            if rng.below(2) == 0 {
                let victim = rng.below(ops as u64) as usize;
                let event = &mut history.events[victim];
                event.outcome = Some(random_outcome(&mut rng, &event.op));
                event.complete.get_or_insert(event.invoke + 50);
            }
            let expected = brute_force(history.events());
            let result = check(&history);
            assert_eq!(
                result.is_linearizable(),
                expected,
                "seed {seed}: {result}\n{history:#?}"
            );
            if expected {
                linearizable += 1;
            } else {
                violations += 1;
            }
        }
        // Both verdicts must be well represented for the comparison to mean
        // anything.
        eprintln!("{linearizable} linearizable, {violations} not");
        assert!(
            linearizable > 500 && violations > 300,
            "{linearizable} / {violations}"
        );
    }
}
