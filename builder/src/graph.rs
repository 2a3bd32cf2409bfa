//! Graphs of specs: a spec's `[inputs]` name other specs, whose outputs are
//! mounted read-only at `/inputs/<name>` and whose output digests enter its
//! build key. [`load`] reads the closure of the specs given and orders it
//! (a cycle is refused before anything runs); [`run`] builds it, each node
//! through [`crate::pipeline::build`] once its inputs are built, independent
//! nodes at once.
//!
//! Failure: a node that fails stops its dependants (they are skipped, naming
//! the failed input); nodes that do not depend on it go on (`--keep-going`
//! is the default; `--fail-fast` starts nothing new after the first
//! failure). Every node's log is kept in the store; the tail of a failed
//! node's log is printed.

use std::collections::BTreeMap;
use std::fs;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hermit_store::Store;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::exit::{self, Exit};
use crate::net::NetArgs;
use crate::pipeline::resolve::{read_spec, spec_dir};
use crate::pipeline::{self, BuildOptions, Built, Echo, InputOutput};
use crate::record::InputRecord;
use crate::spec::Spec;

/// One spec of the closure.
#[derive(Debug, Clone)]
pub struct Node {
    /// The package name.
    pub name: String,
    /// The spec's path as reached (the user's for a top spec, else joined
    /// from the dependant's directory).
    pub spec: PathBuf,
    /// `(input name, spec as written, node index)`, sorted by input name.
    pub inputs: Vec<(String, String, usize)>,
    /// The spec as read once, when the graph was loaded, with its exact
    /// bytes: the build resolves this, not the file read again.
    pub loaded: Arc<(Spec, String)>,
}

/// The closure of some specs, dependencies before dependants.
#[derive(Debug)]
pub struct Graph {
    pub nodes: Vec<Node>,
    /// Indices of the specs asked for, in the order given.
    pub tops: Vec<usize>,
}

/// Reads the closure of `specs`: every spec named by an `[inputs]` entry,
/// transitively, in dependency order. A missing input spec or a cycle is
/// refused here, before anything is fetched or run.
pub fn load(specs: &[PathBuf]) -> anyhow::Result<Graph> {
    let mut g = Loader::default();
    let mut tops = Vec::new();
    for s in specs {
        let i = g.visit(s, &mut Vec::new())?;
        if !tops.contains(&i) {
            tops.push(i);
        }
    }
    // Renumbered in post-order, so that inputs come first.
    let mut renumber = vec![0; g.nodes.len()];
    for (new, &old) in g.order.iter().enumerate() {
        renumber[old] = new;
    }
    let mut nodes = Vec::new();
    for &old in &g.order {
        let Some(mut n) = g.nodes[old].take() else {
            anyhow::bail!("internal error: spec graph node {old} was never finished");
        };
        for input in &mut n.inputs {
            input.2 = renumber[input.2];
        }
        nodes.push(n);
    }
    Ok(Graph {
        nodes,
        tops: tops.iter().map(|&t| renumber[t]).collect(),
    })
}

#[derive(Default)]
struct Loader {
    /// Indexed by discovery; `None` while its inputs are being visited.
    nodes: Vec<Option<Node>>,
    index: BTreeMap<PathBuf, usize>,
    /// Post-order: a node after all its inputs.
    order: Vec<usize>,
}

impl Loader {
    /// Visits the spec at `path`; `stack` holds the specs on the way here.
    fn visit(&mut self, path: &Path, stack: &mut Vec<PathBuf>) -> anyhow::Result<usize> {
        let real = fs::canonicalize(path)
            .map_err(|e| Exit::user(format!("{}: cannot read the spec: {e}", path.display())))?;
        self.visit_at(path, real, stack)
    }

    /// Visits the spec at `path`, whose canonical path is `real`.
    fn visit_at(
        &mut self,
        path: &Path,
        real: PathBuf,
        stack: &mut Vec<PathBuf>,
    ) -> anyhow::Result<usize> {
        if let Some(pos) = stack.iter().position(|p| *p == real) {
            let mut chain: Vec<String> = stack[pos..]
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            chain.push(real.display().to_string());
            return Err(Exit::user(format!(
                "the specs' [inputs] form a cycle, so none of them can be built first:\n  {}\n\
                 remove one of these inputs",
                chain.join("\n  → ")
            ))
            .into());
        }
        if let Some(&i) = self.index.get(&real) {
            return Ok(i);
        }
        let (spec, text) = read_spec(path)?;
        let i = self.nodes.len();
        self.nodes.push(None);
        self.index.insert(real.clone(), i);
        stack.push(real.clone());
        let dir = spec_dir(path);
        let mut inputs = Vec::new();
        for (name, input) in &spec.inputs {
            let dep = dir.join(&input.spec);
            let Ok(real_dep) = fs::canonicalize(&dep) else {
                return Err(Exit::user(
                    spec.error_at(
                        input.at,
                        format!("input {name:?}: the spec {} does not exist", dep.display()),
                        Some("`spec` is a path relative to this spec's directory; correct it, or create that spec".into()),
                    )
                    .to_string(),
                )
                .into());
            };
            let j = self.visit_at(&dep, real_dep, stack)?;
            inputs.push((name.clone(), input.spec.clone(), j));
        }
        stack.pop();
        self.nodes[i] = Some(Node {
            name: spec.package.name.clone(),
            spec: path.to_path_buf(),
            inputs,
            loaded: Arc::new((spec, text)),
        });
        self.order.push(i);
        Ok(i)
    }
}

/// How a node ended.
#[derive(Debug, Clone)]
pub enum State {
    Waiting,
    Running,
    Built(Box<Built>),
    Failed {
        message: String,
        code: u8,
        /// The stored log of a build that ran and failed.
        log: Option<PathBuf>,
    },
    /// Not built because this input (transitively) failed — or, with
    /// `--fail-fast`, because that node failed first.
    Skipped {
        because: usize,
    },
}

/// Options of a graph run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub build: BuildOptions,
    /// How many builds may run at once.
    pub parallel: usize,
    /// Start nothing new after the first failure.
    pub fail_fast: bool,
    /// No progress bars (plain lines instead).
    pub no_progress: bool,
}

/// Builds every node of `graph`, inputs first, independent nodes at once.
/// Returns each node's end state (in the graph's order).
///
/// `opts.parallel` workers (no more than there are nodes) each take the
/// next node whose inputs are built, build it, and take the next: no thread
/// per node, and no hand-off through a scheduler thread between one node
/// and the next. The calling thread only refreshes the live progress lines.
pub fn run(store: &Arc<Store>, graph: &Graph, net: &NetArgs, opts: &RunOptions) -> Vec<State> {
    let n = graph.nodes.len();
    let sched = Sched {
        states: Mutex::new(vec![State::Waiting; n]),
        changed: Condvar::new(),
        live: Mutex::new(BTreeMap::new()),
    };
    let gate = Arc::new(Mutex::new(()));
    let progress = Progress::new(n, opts);
    let workers = opts.parallel.clamp(1, n.max(1));
    if n > 1 {
        // Many sandboxes in one process: one zygote clones their helpers
        // instead of one execution of hermit each (started with the first
        // build that runs; a fully cached graph starts none).
        hermit_sandbox::prefer_zygote();
    }
    if workers == 1 && !matches!(progress.mode, Mode::Bars { .. }) {
        // One worker and no live lines to refresh: no thread to start.
        work(store, graph, net, opts, &sched, &progress, &gate);
        progress.finish();
        return sched.states.into_inner().unwrap_or_else(|e| e.into_inner());
    }
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| work(store, graph, net, opts, &sched, &progress, &gate));
        }
        if !matches!(progress.mode, Mode::Bars { .. }) {
            return;
        }
        // Refresh the live lines until every node has ended.
        let Ok(mut states) = sched.states.lock() else {
            return;
        };
        while states
            .iter()
            .any(|s| matches!(s, State::Waiting | State::Running))
        {
            states = match sched
                .changed
                .wait_timeout(states, Duration::from_millis(200))
            {
                Ok((s, _)) => s,
                Err(_) => return,
            };
            if let Ok(live) = sched.live.lock() {
                for (bar, last, _) in live.values() {
                    if let Ok(l) = last.lock() {
                        bar.set_message(l.clone());
                    }
                }
            }
        }
    });
    progress.finish();
    sched.states.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// What the workers of [`run`] share.
struct Sched {
    states: Mutex<Vec<State>>,
    /// Signalled whenever a node ends.
    changed: Condvar,
    /// The running nodes' progress lines.
    live: Mutex<BTreeMap<usize, Live>>,
}

/// A running node's progress line: its bar, its log's last line, its start.
type Live = (ProgressBar, Arc<Mutex<String>>, Instant);

/// One worker of [`run`]: builds ready nodes until none is left to start.
fn work(
    store: &Arc<Store>,
    graph: &Graph,
    net: &NetArgs,
    opts: &RunOptions,
    sched: &Sched,
    progress: &Progress,
    gate: &Arc<Mutex<()>>,
) {
    let Ok(mut states) = sched.states.lock() else {
        return;
    };
    loop {
        skip_dependants(graph, &mut states, opts.fail_fast);
        for (i, s) in states.iter().enumerate() {
            if let State::Skipped { because } = s {
                progress.skipped_once(graph, i, *because);
            }
        }
        let ready = (0..graph.nodes.len()).find(|&i| {
            matches!(states[i], State::Waiting)
                && graph.nodes[i]
                    .inputs
                    .iter()
                    .all(|(_, _, j)| matches!(states[*j], State::Built(_)))
        });
        let Some(i) = ready else {
            if states.iter().any(|s| matches!(s, State::Running)) {
                // Wait for a running node to end: it may make one ready.
                states = match sched.changed.wait(states) {
                    Ok(s) => s,
                    Err(_) => return,
                };
                continue;
            }
            // Nothing runs and nothing can start: every node has ended.
            sched.changed.notify_all();
            return;
        };
        states[i] = State::Running;
        let node = &graph.nodes[i];
        let inputs: Vec<InputOutput> = node
            .inputs
            .iter()
            .filter_map(|(name, spec, j)| match &states[*j] {
                State::Built(b) => Some(InputOutput {
                    record: InputRecord {
                        name: name.clone(),
                        spec: spec.clone(),
                        output: b.record.output.digest,
                        build_key: b.record.build_key,
                    },
                    path: b.output.clone(),
                }),
                _ => None,
            })
            .collect();
        let last = Arc::new(Mutex::new(String::new()));
        let bar = progress.started(graph, i);
        let started = Instant::now();
        if let Ok(mut live) = sched.live.lock() {
            live.insert(i, (bar.clone(), last.clone(), started));
        }
        drop(states);

        let mut bopts = opts.build.clone();
        bopts.echo = progress.echo(last);
        bopts.resolve_gate = Some(gate.clone());
        // The build's share of `-j N`, from its start: taken later, the
        // makes of builds already running would have taken every token, and
        // independent builds would run one after the other. With remote
        // execution, none: a node takes its slot only if it falls back to
        // a local sandbox (the service failed), so at most N of those run
        // here at once while every ready node is sent away.
        let local_js = bopts
            .jobserver
            .as_ref()
            .filter(|_| bopts.remote_exec.is_none());
        let slot = match local_js.map(|js| js.acquire()).transpose() {
            Ok(slot) => slot,
            Err(e) => {
                states = match sched.states.lock() {
                    Ok(s) => s,
                    Err(_) => return,
                };
                states[i] = State::Failed {
                    message: format!("the jobserver: {e}"),
                    code: exit::INTERNAL,
                    log: None,
                };
                sched.changed.notify_all();
                continue;
            }
        };
        bopts.holds_slot = slot.is_some();
        let loaded = (node.loaded.0.clone(), node.loaded.1.clone());
        let state = match pipeline::build(store, &node.spec, loaded, &inputs, net, &bopts) {
            Ok(b) => State::Built(Box::new(b)),
            Err(e) => failed(e, store),
        };
        drop(slot);

        states = match sched.states.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        if let Ok(mut live) = sched.live.lock() {
            live.remove(&i);
        }
        progress.ended(graph, i, &state, bar, started.elapsed());
        states[i] = state;
        sched.changed.notify_all();
    }
}

/// A failed node's state from its error.
fn failed(e: anyhow::Error, store: &Store) -> State {
    let exit = e.chain().find_map(|c| c.downcast_ref::<Exit>());
    let code = exit.map(|x| x.code).unwrap_or(exit::USER_ERROR);
    let log = exit.and_then(|x| x.log).map(|d| store.blob_path(&d));
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        message.push_str(&format!("\n  caused by: {cause}"));
    }
    State::Failed { message, code, log }
}

/// Marks waiting nodes whose inputs failed or were skipped (naming the
/// failed node at the root of it); with `fail_fast`, every waiting node
/// once something failed.
fn skip_dependants(graph: &Graph, states: &mut [State], fail_fast: bool) {
    let first_failure = states
        .iter()
        .position(|s| matches!(s, State::Failed { .. }));
    for i in 0..graph.nodes.len() {
        if !matches!(states[i], State::Waiting) {
            continue;
        }
        let cause = graph.nodes[i]
            .inputs
            .iter()
            .find_map(|(_, _, j)| match &states[*j] {
                State::Failed { .. } => Some(*j),
                State::Skipped { because } => Some(*because),
                _ => None,
            });
        if let Some(because) = cause.or(if fail_fast { first_failure } else { None }) {
            states[i] = State::Skipped { because };
        }
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = crate::limits::read_text(path, 64 << 20) else {
        return String::new();
    };
    let all: Vec<&str> = bytes.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What the user sees while a graph builds: one live line per running
/// build and an overall count on a terminal; one line per event
/// otherwise; the build's own output streamed when only one node builds.
struct Progress {
    mode: Mode,
    total: usize,
    counts: Mutex<(usize, usize, usize, usize)>,
    announced: Mutex<Vec<usize>>,
}

enum Mode {
    Quiet,
    Single,
    Plain,
    Bars {
        multi: MultiProgress,
        overall: ProgressBar,
        style: ProgressStyle,
    },
}

impl Progress {
    fn new(total: usize, opts: &RunOptions) -> Progress {
        let mode = if opts.build.quiet {
            Mode::Quiet
        } else if total == 1 {
            Mode::Single
        } else if opts.no_progress || !std::io::stderr().is_terminal() {
            Mode::Plain
        } else {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(total as u64));
            let style =
                ProgressStyle::with_template("{spinner} {prefix:20!} {elapsed:>4} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
            if let Ok(s) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}") {
                overall.set_style(s.progress_chars("=> "));
            }
            overall.set_message("building");
            Mode::Bars {
                multi,
                overall,
                style,
            }
        };
        Progress {
            mode,
            total,
            counts: Mutex::new((0, 0, 0, 0)),
            announced: Mutex::new(Vec::new()),
        }
    }

    fn echo(&self, last: Arc<Mutex<String>>) -> Echo {
        match self.mode {
            Mode::Single => Echo::Stderr,
            Mode::Bars { .. } => Echo::LastLine(last),
            Mode::Quiet | Mode::Plain => Echo::Nowhere,
        }
    }

    fn line(&self, msg: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Single | Mode::Plain => eprintln!("{msg}"),
            Mode::Bars { multi, .. } => {
                let _ = multi.println(msg);
            }
        }
    }

    fn started(&self, graph: &Graph, i: usize) -> ProgressBar {
        let node = &graph.nodes[i];
        match &self.mode {
            Mode::Bars { multi, style, .. } => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(node.name.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            }
            Mode::Plain => {
                eprintln!("hermit: building {} ({})", node.name, node.spec.display());
                ProgressBar::hidden()
            }
            _ => ProgressBar::hidden(),
        }
    }

    fn ended(&self, graph: &Graph, i: usize, state: &State, bar: ProgressBar, took: Duration) {
        bar.finish_and_clear();
        let name = &graph.nodes[i].name;
        if let Ok(mut c) = self.counts.lock() {
            match state {
                State::Built(b) if b.cached => c.1 += 1,
                State::Built(_) => c.0 += 1,
                State::Failed { .. } => c.2 += 1,
                _ => {}
            }
            if let Mode::Bars { overall, .. } = &self.mode {
                overall.set_position((c.0 + c.1 + c.2 + c.3) as u64);
                overall.set_message(format!(
                    "built {}, cached {}, failed {}, skipped {}",
                    c.0, c.1, c.2, c.3
                ));
            }
        }
        match state {
            State::Built(b) if b.cached && !matches!(self.mode, Mode::Single) => {
                self.line(&format!("hermit: {name}: cached"));
            }
            State::Built(b) if !b.cached && !matches!(self.mode, Mode::Single) => {
                self.line(&format!(
                    "hermit: {name}: built in {:.1} s",
                    took.as_secs_f64()
                ));
            }
            State::Failed { message, log, .. } => {
                if matches!(self.mode, Mode::Single) {
                    // The error itself is reported once, by the caller.
                    return;
                }
                let mut text = format!("hermit: {name}: FAILED: {message}");
                if let Some(log) = log {
                    let tail = log_tail(log, 20);
                    if !tail.is_empty() {
                        text.push_str(&format!("\n  last lines of its log:\n{}", indent(&tail)));
                    }
                }
                self.line(&text);
            }
            _ => {}
        }
    }

    fn skipped_once(&self, graph: &Graph, i: usize, because: usize) {
        if let Ok(mut a) = self.announced.lock() {
            if a.contains(&i) {
                return;
            }
            a.push(i);
        }
        if let Ok(mut c) = self.counts.lock() {
            c.3 += 1;
            if let Mode::Bars { overall, .. } = &self.mode {
                overall.set_position((c.0 + c.1 + c.2 + c.3) as u64);
            }
        }
        self.line(&format!(
            "hermit: {}: skipped, because {} failed",
            graph.nodes[i].name, graph.nodes[because].name
        ));
    }

    fn finish(&self) {
        if let Mode::Bars { overall, .. } = &self.mode {
            overall.finish_and_clear();
        }
        let _ = self.total;
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The graph as Graphviz `dot`: one node per spec (labelled with its
/// package name and spec path), an edge from each input to its dependant,
/// labelled with the input's name.
pub fn to_dot(graph: &Graph) -> String {
    let mut out = String::from("digraph hermit {\n  rankdir=BT;\n  node [shape=box];\n");
    for (i, n) in graph.nodes.iter().enumerate() {
        out.push_str(&format!(
            "  n{i} [label={}];\n",
            dot_quote(&format!("{}\n{}", n.name, n.spec.display()))
        ));
    }
    for (i, n) in graph.nodes.iter().enumerate() {
        for (name, _, j) in &n.inputs {
            out.push_str(&format!("  n{j} -> n{i} [label={}];\n", dot_quote(name)));
        }
    }
    out.push_str("}\n");
    out
}

fn dot_quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// The graph as JSON: nodes in build order with their inputs.
pub fn to_json(graph: &Graph) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = graph
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "name": n.name,
                "spec": n.spec,
                "inputs": n.inputs.iter().map(|(name, spec, j)| serde_json::json!({
                    "name": name, "spec": spec, "node": graph.nodes[*j].spec,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "nodes": nodes,
        "top": graph.tops.iter().map(|&t| &graph.nodes[t].spec).collect::<Vec<_>>(),
    })
}
