//! The plugin runtime: a wasmtime engine configured so that a module does
//! the same on every node, the checks a module passes before it is
//! deployed, and the run of one event under fuel and a memory cap.
//!
//! The ABI (`docs/plugins.md`): a module exports `memory`, `alloc(len:
//! i32) -> i32` and `on_event(kind_ptr: i32, kind_len: i32, event_ptr: i32,
//! event_len: i32) -> i32`, and may import, from module `garrison`, only
//! [`HOST_API`]. For each event the host instantiates the module afresh,
//! asks `alloc` for room, writes the event's kind (its emitted kind, or
//! its type's name) and the event as JSON there, and calls `on_event`,
//! which returns 0 when it is content. The host calls a plugin makes are
//! collected, and count only if it returns 0 within its fuel.

use crate::state::fragment::Fragment;
use garrison_client::events::StreamEvent;
use garrison_client::{Op, Value};

use wasmtime::{
    Caller, Config, Engine, ExternType, Linker, Module, ResourceLimiter, Store, Trap, ValType,
};

/// The wasmtime release garrison is built with (a test keeps it equal to
/// `Cargo.lock`'s).
pub const WASMTIME_VERSION: &str = "48.0.8";
/// Most table elements an instance may have.
pub const MAX_PLUGIN_TABLE_ELEMENTS: usize = 10_000;

/// Largest memory a plugin's instance may have, in bytes (declared at
/// most that at deploy, and never grown past it).
pub const MAX_PLUGIN_MEMORY_BYTES: usize = 16 * 1024 * 1024;
/// Largest module source [`PluginRuntime::load`] reads, in bytes (WAT
/// text or a binary; a deploy carries at most
/// [`garrison_client::plugins::MAX_PLUGIN_MODULE_BYTES`] of binary).
pub const MAX_PLUGIN_SOURCE_BYTES: usize = 1024 * 1024;
/// Most transactions one call may propose.
pub const MAX_PROPOSALS_PER_EVENT: usize = 4;
/// Most derived events one call may emit.
pub const MAX_EMITS_PER_EVENT: usize = 16;
/// Most log lines one call may write; more are counted, not kept.
pub const MAX_LOG_LINES_PER_EVENT: usize = 8;
/// Longest log line kept, in bytes (a longer one is cut).
pub const MAX_LOG_LINE_BYTES: usize = 256;
/// Fuel a host call costs, besides one unit per byte it copies.
pub const HOST_CALL_FUEL: u64 = 100;
/// Most wasm stack a call may use, in bytes (deep recursion traps alike
/// everywhere).
pub const MAX_PLUGIN_STACK_BYTES: usize = 256 * 1024;

/// The functions a module may import from module `garrison`, with their
/// parameters (all `i32`) and whether they return an `i32`.
pub const HOST_API: [(&str, usize, bool); 4] = [
    // emit(kind_ptr, kind_len, fields_ptr, fields_len) -> 0 | error
    ("emit", 4, true),
    // log(ptr, len)
    ("log", 2, false),
    // read(key_ptr, key_len, out_ptr, out_cap) -> -1 absent | JSON length
    ("read", 4, true),
    // propose(location_ptr, location_len, ops_ptr, ops_len) -> 0 | error
    ("propose", 4, true),
];

/// The engine's settings that decide what a module computes, as text:
/// nodes whose fingerprints differ must not apply plugin entries.
pub fn engine_fingerprint() -> String {
    format!(
        "wasmtime {}; fuel; nan-canonicalization; no relaxed-simd, threads, shared memory, \
         memory64, multi-memory, gc; stack {MAX_PLUGIN_STACK_BYTES}",
        WASMTIME_VERSION
    )
}

/// Why a module was refused, or a run failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The module is not one garrison runs; the text says why.
    #[error("refused: {0}")]
    Refused(String),
    /// The call ran out of fuel.
    #[error("out of fuel after {0} units")]
    OutOfFuel(u64),
    /// The call trapped (the text is wasmtime's).
    #[error("trapped: {0}")]
    Trap(String),
    /// The call tried to grow its memory past the cap.
    #[error("memory cap of {MAX_PLUGIN_MEMORY_BYTES} bytes reached")]
    MemoryCap,
    /// The call asked for something malformed, or returned non-zero.
    #[error("bad output: {0}")]
    BadOutput(String),
}

/// What a call asked for, when it returned normally.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Derived events: kind and fields, in the order emitted.
    pub emitted: Vec<(String, Vec<(String, Value)>)>,
    /// Transactions: the location (`None`: the event's) and the
    /// operations, in the order proposed.
    pub proposals: Vec<(Option<String>, Vec<Op>)>,
    /// Fuel used.
    pub fuel_used: u64,
}

/// What a call's host functions collect, and the entities they read.
struct Host {
    world: Fragment,
    emitted: Vec<(String, Vec<(String, Value)>)>,
    logs: Vec<String>,
    proposals: Vec<(Option<String>, Vec<Op>)>,
    /// The first malformed request, which fails the call.
    bad: Option<String>,
    /// The memory cap was hit.
    capped: bool,
}

impl ResourceLimiter for Host {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_PLUGIN_MEMORY_BYTES {
            // A failure of the call, the same everywhere (not a -1 from
            // memory.grow, which a plugin could read and then differ by).
            self.capped = true;
            return Err(wasmtime::Error::msg("memory cap reached"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_PLUGIN_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }
}

/// The runtime: one engine for every plugin of the node, and the host
/// API linked once.
#[derive(Clone)]
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<Host>,
}

/// A validated, compiled module.
#[derive(Clone)]
pub struct Plugin {
    module: Module,
}

/// Parses `name=value,name=value` (as `garrison tx --emit` takes): an
/// integer value is an `Int`, anything else a `Str`.
fn parse_fields(text: &str) -> Result<Vec<(String, Value)>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("field {pair:?} is not name=value"))?;
            let value = value
                .parse::<i64>()
                .map_or_else(|_| Value::Str(value.to_string()), Value::Int);
            Ok((name.to_string(), value))
        })
        .collect()
}

/// The bytes `[ptr, ptr + len)` of the caller's memory.
fn read_bytes(caller: &mut Caller<'_, Host>, ptr: i32, len: i32) -> Result<Vec<u8>, String> {
    let memory = caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or("the module exports no memory")?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    memory
        .data(&caller)
        .get(ptr..ptr.saturating_add(len))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| format!("[{ptr}, +{len}) is outside the memory"))
}

/// Charges a host call's fuel: fixed, plus one per byte.
fn charge(caller: &mut Caller<'_, Host>, bytes: usize) -> wasmtime::Result<()> {
    let cost = HOST_CALL_FUEL + bytes as u64;
    let left = caller.get_fuel()?;
    if left < cost {
        caller.set_fuel(0)?;
        return Err(Trap::OutOfFuel.into());
    }
    caller.set_fuel(left - cost)?;
    Ok(())
}

fn string(bytes: Vec<u8>, what: &str) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8"))
}

/// The host API, for every call of the engine.
fn linker(engine: &Engine) -> Linker<Host> {
    let mut linker = Linker::new(engine);
    linker
        .func_wrap(
            "garrison",
            "emit",
            |mut caller: Caller<'_, Host>,
             kp: i32,
             kl: i32,
             fp: i32,
             fl: i32|
             -> wasmtime::Result<i32> {
                charge(
                    &mut caller,
                    (kl as u32 as usize).saturating_add(fl as u32 as usize),
                )?;
                let request = read_bytes(&mut caller, kp, kl)
                    .and_then(|k| string(k, "the kind"))
                    .and_then(|kind| {
                        let fields = read_bytes(&mut caller, fp, fl)
                            .and_then(|f| string(f, "the fields"))
                            .and_then(|f| parse_fields(&f))?;
                        Ok((kind, fields))
                    })
                    .and_then(|(kind, fields)| {
                        garrison_client::tx::check_emit(&kind, &fields)?;
                        Ok((kind, fields))
                    });
                let host = caller.data_mut();
                let limit = (MAX_EMITS_PER_EVENT, "events emitted");
                Ok(collect(
                    &mut host.bad,
                    &mut host.emitted,
                    request,
                    limit,
                    "emit",
                ))
            },
        )
        .expect("garrison.emit is defined once");
    linker
        .func_wrap(
            "garrison",
            "log",
            |mut caller: Caller<'_, Host>, ptr: i32, len: i32| -> wasmtime::Result<()> {
                let len = (len as u32 as usize).min(MAX_LOG_LINE_BYTES);
                charge(&mut caller, len)?;
                let line = read_bytes(&mut caller, ptr, len as i32)
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
                let host = caller.data_mut();
                if let Ok(line) = line {
                    if host.logs.len() < MAX_LOG_LINES_PER_EVENT {
                        host.logs.push(line);
                    }
                }
                Ok(())
            },
        )
        .expect("garrison.log is defined once");
    linker
        .func_wrap(
            "garrison",
            "read",
            |mut caller: Caller<'_, Host>,
             kp: i32,
             kl: i32,
             out: i32,
             cap: i32|
             -> wasmtime::Result<i32> {
                charge(&mut caller, kl as u32 as usize)?;
                let key = match read_bytes(&mut caller, kp, kl).and_then(|k| string(k, "the key")) {
                    Ok(key) => key,
                    Err(why) => {
                        caller.data_mut().bad.get_or_insert(format!("read: {why}"));
                        return Ok(-1);
                    }
                };
                let json = caller
                    .data()
                    .world
                    .entities
                    .get(&key)
                    .map(|e| crate::events::json::entity_json(&key, e).to_string());
                let Some(json) = json else {
                    return Ok(-1);
                };
                // Copying costs what it copies; a too-small buffer learns
                // the length for the price of the call alone.
                let fits = json.len() <= cap as u32 as usize;
                if fits {
                    charge(&mut caller, json.len())?;
                    if let Err(why) = write_bytes(&mut caller, out, json.as_bytes()) {
                        caller.data_mut().bad.get_or_insert(format!("read: {why}"));
                        return Ok(-1);
                    }
                }
                Ok(json.len() as i32)
            },
        )
        .expect("garrison.read is defined once");
    linker
        .func_wrap(
            "garrison",
            "propose",
            |mut caller: Caller<'_, Host>,
             lp: i32,
             ll: i32,
             op: i32,
             ol: i32|
             -> wasmtime::Result<i32> {
                charge(
                    &mut caller,
                    (ll as u32 as usize).saturating_add(ol as u32 as usize),
                )?;
                let request = read_bytes(&mut caller, lp, ll)
                    .and_then(|l| string(l, "the location"))
                    .and_then(|location| {
                        let ops = read_bytes(&mut caller, op, ol)
                            .and_then(|o| string(o, "the operations"))
                            .and_then(|o| garrison_client::tx::parse_ops(&o))?;
                        Ok(((!location.is_empty()).then_some(location), ops))
                    });
                let host = caller.data_mut();
                let limit = (MAX_PROPOSALS_PER_EVENT, "transactions proposed");
                Ok(collect(
                    &mut host.bad,
                    &mut host.proposals,
                    request,
                    limit,
                    "propose",
                ))
            },
        )
        .expect("garrison.propose is defined once");
    linker
}

/// Keeps a host call's request in `kept`, within `limit` (a count and
/// what it counts); a malformed or excess request is the call's first
/// failure in `bad`. Returns what the plugin sees: 0 kept, 1 not.
fn collect<T>(
    bad: &mut Option<String>,
    kept: &mut Vec<T>,
    request: Result<T, String>,
    (max, what): (usize, &str),
    call: &str,
) -> i32 {
    match request {
        Ok(_) if kept.len() >= max => {
            bad.get_or_insert(format!("more than {max} {what}"));
            1
        }
        Ok(request) => {
            kept.push(request);
            0
        }
        Err(why) => {
            bad.get_or_insert(format!("{call}: {why}"));
            1
        }
    }
}

/// Writes `bytes` at `ptr` in the caller's memory.
fn write_bytes(caller: &mut Caller<'_, Host>, ptr: i32, bytes: &[u8]) -> Result<(), String> {
    let memory = caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or("the module exports no memory")?;
    memory
        .write(caller, ptr as u32 as usize, bytes)
        .map_err(|_| format!("[{ptr}, +{}) is outside the memory", bytes.len()))
}

impl PluginRuntime {
    /// The runtime with the deterministic configuration (threads and
    /// shared memory are not compiled in: wasmtime's `threads` feature is
    /// off).
    pub fn new() -> Result<Self, String> {
        let mut config = Config::new();
        config
            .consume_fuel(true)
            .cranelift_nan_canonicalization(true)
            .wasm_relaxed_simd(false)
            .wasm_memory64(false)
            .wasm_multi_memory(false)
            .wasm_gc(false)
            .max_wasm_stack(MAX_PLUGIN_STACK_BYTES);
        let engine =
            Engine::new(&config).map_err(|e| format!("the plugin engine does not start: {e}"))?;
        let linker = linker(&engine);
        Ok(Self { engine, linker })
    }

    /// Checks and compiles a module (WAT text or a binary): only the host
    /// API imported, one memory within the cap and not shared, and the
    /// exports the ABI needs with their types.
    pub fn load(&self, bytes: &[u8]) -> Result<Plugin, PluginError> {
        let refuse = |why: String| PluginError::Refused(why);
        if bytes.len() > MAX_PLUGIN_SOURCE_BYTES {
            return Err(refuse(format!(
                "the module is {} bytes; the limit is {MAX_PLUGIN_SOURCE_BYTES}",
                bytes.len()
            )));
        }
        let module = Module::new(&self.engine, bytes).map_err(|e| refuse(format!("{e:#}")))?;
        for import in module.imports() {
            let (m, name) = (import.module(), import.name());
            let Some((_, params, result)) = HOST_API
                .iter()
                .find(|(n, _, _)| m == "garrison" && *n == name)
            else {
                return Err(refuse(format!(
                    "imports {m}.{name}: a plugin may import only garrison.{}",
                    HOST_API.map(|(n, _, _)| n).join(", garrison.")
                )));
            };
            let ExternType::Func(ty) = import.ty() else {
                return Err(refuse(format!(
                    "imports {m}.{name} as something other than a function"
                )));
            };
            let i32s = |n: usize| vec!["i32"; n].join(", ");
            let ok = ty.params().len() == *params
                && ty.params().all(|p| matches!(p, ValType::I32))
                && ty.results().len() == usize::from(*result)
                && ty.results().all(|r| matches!(r, ValType::I32));
            if !ok {
                return Err(refuse(format!(
                    "imports {m}.{name} with the wrong type: it takes ({}){}",
                    i32s(*params),
                    if *result { " and returns i32" } else { "" }
                )));
            }
        }
        let mut memory = None;
        for export in module.exports() {
            if let ExternType::Memory(m) = export.ty() {
                memory = Some((export.name().to_string(), m));
            }
        }
        let Some((name, mem)) = memory else {
            return Err(refuse("the module exports no memory".into()));
        };
        if name != "memory" {
            return Err(refuse(format!(
                "its memory is exported as {name:?}, not \"memory\""
            )));
        }
        if mem.is_shared() {
            return Err(refuse("its memory is shared".into()));
        }
        let declared = mem.minimum().saturating_mul(65_536);
        if declared > MAX_PLUGIN_MEMORY_BYTES as u64 {
            return Err(refuse(format!(
                "it declares {declared} bytes of memory; the cap is {MAX_PLUGIN_MEMORY_BYTES}"
            )));
        }
        let func = |name: &str, params: usize| {
            module
                .get_export(name)
                .and_then(|e| e.func().cloned())
                .is_some_and(|f| {
                    f.params().len() == params
                        && f.params().all(|p| matches!(p, ValType::I32))
                        && f.results().len() == 1
                        && f.results().all(|r| matches!(r, ValType::I32))
                })
        };
        if !func("alloc", 1) {
            return Err(refuse("it exports no alloc(i32) -> i32".into()));
        }
        if !func("on_event", 4) {
            return Err(refuse(
                "it exports no on_event(i32, i32, i32, i32) -> i32".into(),
            ));
        }
        Ok(Plugin { module })
    }

    /// Runs `plugin` on `event` with `fuel`, reading entities from
    /// `world`: a fresh instance, the event's kind and JSON in its memory,
    /// `on_event` called. The same inputs give the same result on every
    /// node. The call's log lines (node-local, kept whether it failed or
    /// not) and `world` are handed back (a store holds only what it owns).
    pub fn run(
        &self,
        plugin: &Plugin,
        event: &StreamEvent,
        fuel: u64,
        world: Fragment,
    ) -> (Result<Output, PluginError>, Vec<String>, Fragment) {
        let host = Host {
            world,
            emitted: Vec::new(),
            logs: Vec::new(),
            proposals: Vec::new(),
            bad: None,
            capped: false,
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| h);
        let result = match store.set_fuel(fuel) {
            Ok(()) => self.call(&mut store, plugin, event),
            Err(e) => Err(e),
        };
        let left = store.get_fuel().unwrap_or(0);
        let fuel_used = fuel.saturating_sub(left);
        let mut host = store.into_data();
        let world = std::mem::take(&mut host.world);
        let logs = std::mem::take(&mut host.logs);
        (Self::outcome(result, host, fuel_used), logs, world)
    }

    /// What a call's result and its host's collection come to.
    fn outcome(
        result: wasmtime::Result<i32>,
        host: Host,
        fuel_used: u64,
    ) -> Result<Output, PluginError> {
        match result {
            Err(_) if host.capped => Err(PluginError::MemoryCap),
            Err(e) => match e.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel) => Err(PluginError::OutOfFuel(fuel_used)),
                Some(trap) => Err(PluginError::Trap(trap.to_string())),
                None => Err(PluginError::Trap(format!("{e:#}"))),
            },
            Ok(code) => {
                if let Some(why) = host.bad {
                    return Err(PluginError::BadOutput(why));
                }
                if code != 0 {
                    return Err(PluginError::BadOutput(format!("on_event returned {code}")));
                }
                Ok(Output {
                    emitted: host.emitted,
                    proposals: host.proposals,
                    fuel_used,
                })
            }
        }
    }

    fn call(
        &self,
        store: &mut Store<Host>,
        plugin: &Plugin,
        event: &StreamEvent,
    ) -> wasmtime::Result<i32> {
        let instance = self.linker.instantiate(&mut *store, &plugin.module)?;
        let kind = event.body.kind();
        let json = crate::events::json::event_json(event).to_string();
        let alloc = instance.get_typed_func::<i32, i32>(&mut *store, "alloc")?;
        let on_event =
            instance.get_typed_func::<(i32, i32, i32, i32), i32>(&mut *store, "on_event")?;
        let total = kind.len() + json.len();
        let ptr = alloc.call(&mut *store, total as i32)?;
        let memory = instance
            .get_memory(&mut *store, "memory")
            .ok_or_else(|| wasmtime::Error::msg("the module exports no memory"))?;
        let start = ptr as u32 as usize;
        let mut bytes = kind.as_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        memory.write(&mut *store, start, &bytes).map_err(|_| {
            wasmtime::Error::msg(format!("alloc returned {ptr}, outside the memory"))
        })?;
        let event_ptr = (start + kind.len()) as i32;
        on_event.call(
            &mut *store,
            (ptr, kind.len() as i32, event_ptr, json.len() as i32),
        )
    }
}

#[cfg(test)]
mod tests {
    use garrison_client::events::{EventBody, EventId};

    use super::*;

    fn event() -> StreamEvent {
        StreamEvent {
            id: EventId {
                location: "hill".into(),
                index: 7,
                position: 0,
            },
            log_time_ms: 1_000,
            player: Some([1; 32]),
            body: EventBody::Emitted {
                kind: "resupply".into(),
                fields: vec![("depot".into(), Value::Str("depot/1".into()))],
            },
        }
    }

    /// A module with the ABI's exports around `body` (the text of
    /// `on_event`, whose parameters are $kp $kl $ep $el) and `extra`
    /// definitions.
    fn module(extra: &str, body: &str) -> String {
        format!(
            r#"(module
                 (import "garrison" "emit" (func $emit (param i32 i32 i32 i32) (result i32)))
                 (import "garrison" "log" (func $log (param i32 i32)))
                 (import "garrison" "read" (func $read (param i32 i32 i32 i32) (result i32)))
                 (import "garrison" "propose" (func $propose (param i32 i32 i32 i32) (result i32)))
                 (memory (export "memory") 1)
                 (data (i32.const 16) "refilled")
                 (data (i32.const 32) "depot=depot/1,amount=5")
                 {extra}
                 (func (export "alloc") (param i32) (result i32) (i32.const 1024))
                 (func (export "on_event") (param $kp i32) (param $kl i32) (param $ep i32) (param $el i32) (result i32)
                   {body}))"#
        )
    }

    const EMIT: &str =
        "(drop (call $emit (i32.const 16) (i32.const 8) (i32.const 32) (i32.const 22)))";

    fn load(text: &str) -> Result<Plugin, PluginError> {
        PluginRuntime::new().unwrap().load(text.as_bytes())
    }

    fn run(text: &str) -> Result<Output, PluginError> {
        let rt = PluginRuntime::new().unwrap();
        let plugin = rt.load(text.as_bytes()).unwrap();
        rt.run(&plugin, &event(), 1_000_000, Fragment::default()).0
    }

    fn run_logs(text: &str) -> (Result<Output, PluginError>, Vec<String>) {
        let rt = PluginRuntime::new().unwrap();
        let plugin = rt.load(text.as_bytes()).unwrap();
        let (result, logs, _) = rt.run(&plugin, &event(), 1_000_000, Fragment::default());
        (result, logs)
    }

    #[test]
    fn a_plugin_emits_and_logs_and_sees_the_event() {
        // Logs the kind it was given, emits one event.
        let body = format!("(call $log (local.get $kp) (local.get $kl)) {EMIT} (i32.const 0)");
        let (out, logs) = run_logs(&module("", &body));
        let out = out.unwrap();
        assert_eq!(
            out.emitted,
            [(
                "refilled".to_string(),
                vec![
                    ("depot".to_string(), Value::Str("depot/1".into())),
                    ("amount".to_string(), Value::Int(5)),
                ]
            )]
        );
        assert_eq!(logs, ["resupply"]);
        assert!(
            out.fuel_used > 2 * HOST_CALL_FUEL,
            "host calls cost fuel: {}",
            out.fuel_used
        );
    }

    #[test]
    fn an_infinite_loop_stops_by_fuel_at_the_same_point_every_time() {
        let spin = module("", "(loop (br 0)) (i32.const 0)");
        let a = run(&spin).unwrap_err();
        let b = run(&spin).unwrap_err();
        assert!(matches!(a, PluginError::OutOfFuel(_)), "{a:?}");
        assert_eq!(a, b);
        // A fresh instance for the next event: it runs normally.
        assert!(run(&module("", &format!("{EMIT} (i32.const 0)"))).is_ok());
    }

    #[test]
    fn a_trap_after_an_emit_leaves_nothing_but_the_failure() {
        let err = run(&module("", &format!("{EMIT} unreachable"))).unwrap_err();
        assert!(
            matches!(err, PluginError::Trap(ref t) if t.contains("unreachable")),
            "{err:?}"
        );
        let err = run(&module("", "(i32.const 3)")).unwrap_err();
        assert_eq!(err, PluginError::BadOutput("on_event returned 3".into()));
        // A malformed request fails the call, though it returned 0.
        let bad = "(drop (call $emit (i32.const 16) (i32.const 0) (i32.const 32) (i32.const 22))) (i32.const 0)";
        let err = run(&module("", bad)).unwrap_err();
        assert!(
            matches!(err, PluginError::BadOutput(ref w) if w.contains("event kind")),
            "{err:?}"
        );
    }

    #[test]
    fn memory_is_capped_at_deploy_and_at_run() {
        let huge = module("", "(i32.const 0)").replace(
            "(memory (export \"memory\") 1)",
            "(memory (export \"memory\") 16384)",
        );
        let err = load(&huge).err().unwrap();
        assert!(
            matches!(err, PluginError::Refused(ref w) if w.contains("the cap is")),
            "{err:?}"
        );
        // 300 more pages pass the 16 MiB cap: the call fails, alike everywhere.
        let grow = module("", "(drop (memory.grow (i32.const 300))) (i32.const 0)");
        assert_eq!(run(&grow).unwrap_err(), PluginError::MemoryCap);
        let small = module("", "(drop (memory.grow (i32.const 10))) (i32.const 0)");
        assert!(run(&small).is_ok());
    }

    #[test]
    fn imports_beyond_the_host_api_and_missing_exports_are_refused() {
        let wasi = module("", "(i32.const 0)").replace(
            "(import \"garrison\" \"log\" (func $log (param i32 i32)))",
            "(import \"wasi_snapshot_preview1\" \"fd_write\" (func $log (param i32 i32)))",
        );
        let err = load(&wasi).err().unwrap();
        assert!(
            matches!(err, PluginError::Refused(ref w) if w.contains("may import only garrison.emit")),
            "{err:?}"
        );
        let typed = module("", "(i32.const 0)")
            .replace("(func $log (param i32 i32))", "(func $log (param i64))");
        assert!(
            matches!(load(&typed), Err(PluginError::Refused(ref w)) if w.contains("wrong type"))
        );
        let shared = module("", "(i32.const 0)").replace(
            "(memory (export \"memory\") 1)",
            "(memory (export \"memory\") 1 1 shared)",
        );
        assert!(matches!(load(&shared), Err(PluginError::Refused(_))));
        let no_alloc = module("", "(i32.const 0)").replace("(export \"alloc\")", "");
        assert!(matches!(load(&no_alloc), Err(PluginError::Refused(ref w)) if w.contains("alloc")));
        assert!(matches!(load("(module"), Err(PluginError::Refused(_))));
    }

    #[test]
    fn nans_are_canonical() {
        // 0/0 is a NaN whose sign bit x86 would set; canonicalized, it is
        // 0x7fc00000 on every node.
        let nan = module(
            "",
            "(i32.reinterpret_f32 (f32.div (f32.const 0) (f32.const 0)))",
        );
        assert_eq!(
            run(&nan).unwrap_err(),
            PluginError::BadOutput(format!("on_event returned {}", 0x7fc0_0000))
        );
    }

    #[test]
    fn the_recorded_wasmtime_version_is_the_locked_one() {
        let lock = include_str!("../../Cargo.lock");
        let at = lock
            .find("name = \"wasmtime\"\n")
            .expect("wasmtime is locked");
        let version = lock[at..].lines().nth(1).unwrap();
        assert_eq!(version, format!("version = \"{WASMTIME_VERSION}\""));
        assert!(engine_fingerprint().contains(WASMTIME_VERSION));
    }
}
