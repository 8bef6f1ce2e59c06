//! The node's plugin host: the runtime, the compiled modules (by hash),
//! the node-local log lines, and the run of a location's plugins over one
//! applied entry.
//!
//! [`PluginHost::run_entry`] is called by location apply after the rules
//! saw the entry: each event of the entry (its own and the rules' matches,
//! not what plugins add) is offered to each plugin in name order that
//! subscribes to its kind, was bound before the entry and is not
//! suspended. A call that returns normally has its transaction applied to
//! the location's entities at once, in the same entry, under the plugin's
//! identity and role, atomically with its derived events; a call that
//! fails, or whose transaction is refused, leaves only a
//! [`EventBody::PluginFailed`] and its record.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use garrison_client::api::Outcome;
use garrison_client::events::{EventBody, EventId, StreamEvent};
use garrison_client::plugins::{plugin_identity, PluginFailure, PluginLogLine, PluginSpec};
use garrison_client::Op;

use super::runtime::{engine_fingerprint, Plugin, PluginError, PluginRuntime, MAX_LOG_LINE_BYTES};
use super::state::{Delivery, OutboxItem, PluginRun, PluginState, MAX_OUTBOX_ITEMS};
use crate::security::access::Policy;
use crate::state::fragment::Fragment;

/// Most plugin calls one entry makes; the calls past it are not made and
/// are counted as skipped in each plugin's record.
pub const MAX_PLUGIN_CALLS_PER_ENTRY: usize = 256;
/// Most events plugins add to one entry; a call that would pass it fails.
pub const MAX_PLUGIN_EVENTS_PER_ENTRY: usize = 1_024;
/// Compiled modules a node keeps.
pub const MAX_COMPILED_MODULES: usize = 64;
/// Log lines a node keeps, of all plugins.
pub const MAX_KEPT_LOG_LINES: usize = 4_096;
/// Log lines a node keeps of one plugin per second; more are counted.
pub const MAX_LOG_LINES_PER_SECOND: u32 = 50;

/// Where an entry is: what a plugin's event id and transaction need.
pub struct EntryAt<'a> {
    /// The location.
    pub location: &'a str,
    /// The entry's log index.
    pub index: u64,
    /// Its log time.
    pub log_time_ms: u64,
    /// Its player.
    pub player: Option<garrison_client::tx::PlayerKey>,
}

/// What plugins did in one entry, besides the events they added.
#[derive(Debug, Default)]
pub struct EntryEffects {
    /// Entities their transactions changed.
    pub changed: Vec<String>,
}

/// Node-local log lines, rate-limited per plugin.
#[derive(Default)]
struct LogBook {
    next_seq: u64,
    lines: VecDeque<PluginLogLine>,
    /// Per plugin: the second's start and the lines kept in it.
    rate: HashMap<String, (Instant, u32)>,
    /// Lines not kept because of the rate limit.
    dropped: u64,
}

/// The node's plugin host.
pub struct PluginHost {
    runtime: PluginRuntime,
    fingerprint: String,
    modules: Mutex<HashMap<[u8; 32], Plugin>>,
    logs: Mutex<LogBook>,
}

impl PluginHost {
    /// A host with the deterministic engine.
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            runtime: PluginRuntime::new()?,
            fingerprint: engine_fingerprint(),
            modules: Mutex::default(),
            logs: Mutex::default(),
        })
    }

    /// The engine's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Validates a module as a deploy must (imports, memory, exports).
    pub fn validate(&self, module: &[u8]) -> Result<(), PluginError> {
        self.runtime.load(module).map(|_| ())
    }

    /// The compiled module of `spec`, compiled once per node.
    fn compiled(&self, spec: &PluginSpec) -> Result<Plugin, PluginError> {
        let mut modules = self.modules.lock().expect("plugin modules");
        if let Some(p) = modules.get(&spec.hash) {
            return Ok(p.clone());
        }
        let plugin = self.runtime.load(&spec.module)?;
        if modules.len() >= MAX_COMPILED_MODULES {
            modules.clear();
        }
        modules.insert(spec.hash, plugin.clone());
        Ok(plugin)
    }

    /// Keeps a call's log lines, within the rate limit.
    fn log(&self, plugin: &str, event: &EventId, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        let mut book = self.logs.lock().expect("plugin logs");
        let now = Instant::now();
        let (start, count) = book.rate.entry(plugin.to_string()).or_insert((now, 0));
        if now.duration_since(*start).as_secs() >= 1 {
            (*start, *count) = (now, 0);
        }
        let room = MAX_LOG_LINES_PER_SECOND.saturating_sub(*count) as usize;
        let kept = lines.len().min(room);
        *count += kept as u32;
        book.dropped += (lines.len() - kept) as u64;
        for mut line in lines.into_iter().take(kept) {
            if line.len() > MAX_LOG_LINE_BYTES {
                let mut cut = MAX_LOG_LINE_BYTES;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
            }
            book.next_seq += 1;
            let seq = book.next_seq;
            if book.lines.len() >= MAX_KEPT_LOG_LINES {
                book.lines.pop_front();
            }
            book.lines.push_back(PluginLogLine {
                seq,
                plugin: plugin.to_string(),
                event: event.clone(),
                line,
            });
        }
    }

    /// The kept log lines after `after`, of `plugin` if given, at most
    /// `max`, and how many lines the rate limit dropped so far.
    pub fn logs(&self, plugin: Option<&str>, after: u64, max: usize) -> (Vec<PluginLogLine>, u64) {
        let book = self.logs.lock().expect("plugin logs");
        let lines = book
            .lines
            .iter()
            .filter(|l| l.seq > after && plugin.is_none_or(|p| p == l.plugin))
            .take(max)
            .cloned()
            .collect();
        (lines, book.dropped)
    }

    /// Runs the location's plugins over the entry's `events`, appending
    /// what they add; `fragment` gets their transactions.
    pub fn run_entry(
        &self,
        at: &EntryAt<'_>,
        plugins: &mut PluginState,
        fragment: &mut Fragment,
        policy: &Policy,
        events: &mut Vec<EventBody>,
    ) -> EntryEffects {
        let mut effects = EntryEffects::default();
        let offered = events.len();
        let mut calls = 0;
        let mut added = 0;
        let PluginState {
            plugins: runs,
            outbox,
            next_seq,
            ..
        } = plugins;
        for position in 0..offered {
            for run in runs.values_mut() {
                let spec = &run.deployed.spec;
                if run.record.suspended_at.is_some()
                    || run.bound_at >= at.index
                    || !spec.subscribes(events[position].kind())
                {
                    continue;
                }
                if calls == MAX_PLUGIN_CALLS_PER_ENTRY {
                    run.record.skipped += 1;
                    continue;
                }
                calls += 1;
                let event = StreamEvent {
                    id: EventId {
                        location: at.location.to_string(),
                        index: at.index,
                        position: position as u32,
                    },
                    log_time_ms: at.log_time_ms,
                    player: at.player,
                    body: events[position].clone(),
                };
                let room = MAX_OUTBOX_ITEMS - outbox.len();
                let result = self.call(at, run, &event, fragment, policy, added, room);
                let (version, name) = (run.deployed.version, run.deployed.spec.name.clone());
                let cause = position as u32;
                run.record.runs += 1;
                match result {
                    Ok((mut new, changed, outbound, logs)) => {
                        run.record.failures_in_a_row = 0;
                        added += new.len();
                        effects.changed.extend(changed);
                        events.append(&mut new);
                        for (target, ops) in outbound {
                            *next_seq += 1;
                            outbox.push_back(OutboxItem {
                                target,
                                delivery: Delivery {
                                    source: at.location.to_string(),
                                    seq: *next_seq,
                                    plugin: name.clone(),
                                    version,
                                    role: run.deployed.spec.role.clone(),
                                    cause: event.id.clone(),
                                    ops,
                                },
                            });
                        }
                        self.log(&name, &event.id, logs);
                    }
                    Err((failure, logs)) => {
                        run.record.failures += 1;
                        run.record.failures_in_a_row += 1;
                        let suspended =
                            run.record.failures_in_a_row >= run.deployed.spec.suspend_after;
                        if suspended {
                            run.record.suspended_at = Some(at.index);
                        }
                        run.record.last_failure = Some((event.id.clone(), failure.clone()));
                        added += 1;
                        events.push(EventBody::PluginFailed {
                            plugin: name.clone(),
                            version,
                            cause,
                            failure: Box::new(failure),
                            suspended,
                        });
                        self.log(&name, &event.id, logs);
                    }
                }
            }
        }
        effects
    }

    /// One call: the events it adds, the entities it changed and its
    /// transactions for other locations (at most `room`), or why it
    /// failed; with its log lines either way.
    #[allow(
        clippy::type_complexity,
        clippy::result_large_err,
        clippy::too_many_arguments
    )] // once per call, not hot
    fn call(
        &self,
        at: &EntryAt<'_>,
        run: &mut PluginRun,
        event: &StreamEvent,
        fragment: &mut Fragment,
        policy: &Policy,
        added: usize,
        room: usize,
    ) -> Result<
        (
            Vec<EventBody>,
            Vec<String>,
            Vec<(String, Vec<Op>)>,
            Vec<String>,
        ),
        (PluginFailure, Vec<String>),
    > {
        let spec = &run.deployed.spec;
        let plugin = self
            .compiled(spec)
            .map_err(|e| (failure_of(e), Vec::new()))?;
        let (result, logs, world) =
            self.runtime
                .run(&plugin, event, spec.fuel, std::mem::take(fragment));
        *fragment = world;
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                if let PluginError::OutOfFuel(used) = e {
                    run.record.fuel_used += used;
                }
                return Err((failure_of(e), logs));
            }
        };
        run.record.fuel_used += out.fuel_used;
        let fail = |f: PluginFailure, logs: Vec<String>| Err((f, logs));
        let mut ops: Vec<Op> = Vec::new();
        let mut outbound = Vec::new();
        for (location, proposed) in out.proposals {
            match location {
                Some(l) if l != at.location => outbound.push((l, proposed)),
                _ => ops.extend(proposed),
            }
        }
        if outbound.len() > room {
            let why = format!(
                "the outbox holds {MAX_OUTBOX_ITEMS} transactions for other locations, the most"
            );
            return fail(PluginFailure::BadOutput(why), logs);
        }
        if ops.len() > garrison_client::tx::MAX_OPS_PER_TRANSACTION {
            let why = format!(
                "{} operations proposed; a transaction has at most {}",
                ops.len(),
                garrison_client::tx::MAX_OPS_PER_TRANSACTION
            );
            return fail(PluginFailure::BadOutput(why), logs);
        }
        // Each operation adds at most one event.
        if added + ops.len() + out.emitted.len() > MAX_PLUGIN_EVENTS_PER_ENTRY {
            let why =
                format!("plugins may add at most {MAX_PLUGIN_EVENTS_PER_ENTRY} events to an entry");
            return fail(PluginFailure::BadOutput(why), logs);
        }
        let mut new = Vec::new();
        let mut changed = Vec::new();
        if !ops.is_empty() {
            let me = plugin_identity(&spec.name);
            let role = [spec.role.as_str()];
            // All or nothing: a refusal changes no entity.
            let applied = fragment.apply(at.location, &me, &ops, at.index, &|op, owner| {
                policy.check_as(&role, &me, op.action(), op.subject(), owner)
            });
            match applied.outcome {
                Outcome::Committed { events, .. } => {
                    changed = events.into_iter().map(|e| e.entity).collect();
                    new = applied.events;
                }
                Outcome::Rejected { op, reason } => {
                    return fail(PluginFailure::Refused { op, reason }, logs)
                }
            }
        }
        new.extend(
            out.emitted
                .into_iter()
                .map(|(kind, fields)| EventBody::Derived {
                    plugin: spec.name.clone(),
                    version: run.deployed.version,
                    cause: event.id.position,
                    kind,
                    fields,
                }),
        );
        Ok((new, changed, outbound, logs))
    }
}

/// The replicated record of a run's error.
fn failure_of(e: PluginError) -> PluginFailure {
    match e {
        PluginError::OutOfFuel(used) => PluginFailure::OutOfFuel(used),
        PluginError::Trap(t) => PluginFailure::Trap(t),
        PluginError::MemoryCap => PluginFailure::MemoryCap,
        PluginError::BadOutput(w) | PluginError::Refused(w) => PluginFailure::BadOutput(w),
    }
}
