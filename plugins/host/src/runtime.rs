//! The wasmtime side: one engine with epoch interruption, components compiled once, and
//! one fresh `Store` per call with its own memory cap, deadline and WASI context (no
//! environment, no network, only the directories the stage grants).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::output::{Output, Stream};
use crate::{HookLimits, Stage};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.0",
        world: "paastech:hooks/hook@0.1.0",
    });
}

pub(crate) use bindings::paastech::hooks::types::{BuildInfo, Context, DeployInfo};
use bindings::{Hook, HookPre};

/// How often the epoch advances: the resolution of hook timeouts.
const TICK: Duration = Duration::from_millis(5);
/// Where the source tree and the output directory appear inside the guest.
pub(crate) const SOURCE_GUEST_DIR: &str = "/source";
pub(crate) const OUT_GUEST_DIR: &str = "/out";

/// The engine, the linker with WASI and the host interface, and the thread that ticks
/// the epoch (stopped when the `Runtime` is dropped).
pub(crate) struct Runtime {
    pub(crate) engine: Engine,
    linker: Linker<State>,
    ticker: Arc<Ticker>,
}

/// Advances the epoch while calls run, and sleeps otherwise: an idle server must not
/// wake up every tick.
#[derive(Default)]
struct Ticker {
    state: Mutex<TickerState>,
    wake: Condvar,
}

#[derive(Default)]
struct TickerState {
    /// Calls running now.
    running: usize,
    stop: bool,
}

impl Ticker {
    // A poisoned lock only means a panic while holding it; the counts stay consistent.
    fn lock(&self) -> MutexGuard<'_, TickerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, engine: &Engine) {
        loop {
            {
                let mut state = self.lock();
                while state.running == 0 && !state.stop {
                    state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                if state.stop {
                    return;
                }
            }
            std::thread::sleep(TICK);
            engine.increment_epoch();
        }
    }

    /// Keeps the epoch advancing until the returned guard is dropped.
    fn start(self: &Arc<Self>) -> Ticking {
        self.lock().running += 1;
        self.wake.notify_one();
        Ticking(Arc::clone(self))
    }
}

/// One running call, for the [`Ticker`].
struct Ticking(Arc<Ticker>);

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker.lock().stop = true;
        self.ticker.wake.notify_one();
    }
}

impl Runtime {
    pub(crate) fn new() -> Result<Runtime, String> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Hooks are small; a smaller reservation keeps many parallel calls cheap.
        config.memory_reservation(1 << 30);
        let engine = Engine::new(&config).map_err(|err| format!("starting wasmtime: {err}"))?;
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|err| format!("linking WASI: {err}"))?;
        Hook::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state)
            .map_err(|err| format!("linking the hook interface: {err}"))?;
        let ticker = Arc::new(Ticker::default());
        let (ticker_engine, thread_ticker) = (engine.clone(), Arc::clone(&ticker));
        std::thread::Builder::new()
            .name("hook-epoch".into())
            .spawn(move || thread_ticker.run(&ticker_engine))
            .map_err(|err| format!("starting the hook timer thread: {err}"))?;
        Ok(Runtime { engine, linker, ticker })
    }

    /// Compiles a component and checks it is a hook this host can run (its imports are
    /// all provided, its exports are the four stages).
    pub(crate) fn compile(&self, bytes: &[u8]) -> Result<Compiled, String> {
        let component = Component::new(&self.engine, bytes).map_err(|err| format!("not a valid component: {err:#}"))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|err| format!("not a PaaSTech hook (paastech:hooks@0.1.0): {err:#}"))?;
        let pre = HookPre::new(pre).map_err(|err| format!("not a PaaSTech hook (paastech:hooks@0.1.0): {err:#}"))?;
        Ok(Compiled { pre })
    }
}

/// A compiled hook, ready to instantiate.
#[derive(Clone)]
pub(crate) struct Compiled {
    pre: HookPre<State>,
}

/// Per-call state of a store.
pub(crate) struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    config: Arc<BTreeMap<String, String>>,
    output: Output,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl bindings::paastech::hooks::host::Host for State {
    fn log(&mut self, line: String) {
        for line in line.lines() {
            self.output.line(line);
        }
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn config_entries(&mut self) -> Vec<(String, String)> {
        self.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl bindings::paastech::hooks::types::Host for State {}

/// `StoreLimits`, remembering whether the guest hit the memory cap so the error can say so.
struct Limiter {
    inner: StoreLimits,
    memory_exceeded: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let result = self.inner.memory_growing(current, desired, maximum);
        if !matches!(result, Ok(true)) {
            self.memory_exceeded = true;
        }
        result
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// What a stage is called with.
pub(crate) enum Call {
    PreBuild,
    PostBuild(BuildInfo),
    PreDeploy(DeployInfo),
    PostDeploy,
}

impl Call {
    pub(crate) fn stage(&self) -> Stage {
        match self {
            Call::PreBuild => Stage::PreBuild,
            Call::PostBuild(_) => Stage::PostBuild,
            Call::PreDeploy(_) => Stage::PreDeploy,
            Call::PostDeploy => Stage::PostDeploy,
        }
    }
}

/// What one invocation gets.
pub(crate) struct Invocation {
    pub(crate) hook: Compiled,
    pub(crate) config: Arc<BTreeMap<String, String>>,
    pub(crate) limits: HookLimits,
    pub(crate) ctx: Context,
    pub(crate) source: Option<PathBuf>,
    pub(crate) out: Option<PathBuf>,
    pub(crate) call: Call,
}

/// How an invocation ended, when it did not return normally.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The hook said no, with its message.
    Vetoed(String),
    TimedOut(Duration),
    MemoryExceeded(usize),
    /// A trap (a panic, `unreachable`, an out-of-bounds access) or a host error.
    Crashed {
        cause: String,
        stderr: Vec<String>,
    },
    /// The sandbox could not be set up (a directory to preopen is missing).
    Setup(String),
}

/// Runs one stage of one hook in a fresh store. Blocking: call it off the async threads.
pub(crate) fn invoke(
    runtime: &Runtime,
    invocation: Invocation,
    output: Output,
) -> Result<Vec<(String, String)>, Failure> {
    let Invocation { hook, config, limits, ctx, source, out, call } = invocation;
    let mut wasi = WasiCtxBuilder::new();
    wasi.allow_blocking_current_thread(true)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .stdout(output.pipe(Stream::Stdout))
        .stderr(output.pipe(Stream::Stderr));
    if let Some(source) = &source {
        preopen(&mut wasi, source, SOURCE_GUEST_DIR, FsPerms::ReadOnly)?;
    }
    if let Some(out) = &out {
        preopen(&mut wasi, out, OUT_GUEST_DIR, FsPerms::ReadWrite)?;
    }
    let limiter = Limiter {
        inner: StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .instances(16)
            .tables(64)
            .memories(16)
            .trap_on_grow_failure(true)
            .build(),
        memory_exceeded: false,
    };
    let state = State { wasi: wasi.build(), table: ResourceTable::new(), limiter, config, output: output.clone() };
    let mut store = Store::new(&runtime.engine, state);
    store.limiter(|state| &mut state.limiter);
    let ticks = (limits.timeout.as_millis() / TICK.as_millis()).max(1);
    // The deadline counts ticks from now; the epoch only advances while calls run.
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
    store.epoch_deadline_trap();
    let _ticking = runtime.ticker.start();

    let result = hook.pre.instantiate(&mut store).and_then(|instance: Hook| match &call {
        Call::PreBuild => instance.call_pre_build(&mut store, &ctx, OUT_GUEST_DIR).map(|r| r.map(|output| output.env)),
        Call::PostBuild(build) => instance.call_post_build(&mut store, &ctx, build).map(|r| r.map(|()| Vec::new())),
        Call::PreDeploy(deploy) => instance.call_pre_deploy(&mut store, &ctx, deploy),
        Call::PostDeploy => instance.call_post_deploy(&mut store, &ctx).map(|()| Ok(Vec::new())),
    });
    output.finish();
    match result {
        Ok(Ok(env)) => Ok(env),
        Ok(Err(message)) => Err(Failure::Vetoed(message)),
        Err(err) => {
            if store.data().limiter.memory_exceeded {
                Err(Failure::MemoryExceeded(limits.memory_bytes))
            } else if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                Err(Failure::TimedOut(limits.timeout))
            } else {
                let cause = match err.downcast_ref::<Trap>() {
                    Some(trap) => format!("trapped: {trap}"),
                    None => format!("failed: {err}"),
                };
                Err(Failure::Crashed { cause, stderr: output.stderr_tail() })
            }
        }
    }
}

fn preopen(wasi: &mut WasiCtxBuilder, host: &Path, guest: &str, perms: FsPerms) -> Result<(), Failure> {
    wasi.preopened_dir(host, guest, perms)
        .map(|_| ())
        .map_err(|err| Failure::Setup(format!("cannot open {} for the hook: {err}", host.display())))
}
