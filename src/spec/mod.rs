//! Pipeline files: YAML in, a typed and validated [`Pipeline`] out.
//!
//! ```yaml
//! name: fortune                 # required
//! description: ...              # optional
//! defaults:                     # optional: `device`, and values for any parameter of that name
//!   device: cpu
//!   seed: 42
//! nodes:
//!   fix:
//!     kind: fix-json
//!     inputs: { records: data/fortune.jsonl }   # files relative to this file, or `node.output`
//!     params: { on_error: skip }
//!     device: cpu                               # cpu | cuda | auto
//!   train:
//!     kind: lora-train
//!     gpus: 2                                   # data-parallel kinds only: N | all (implies cuda)
//!     executor: slurm                           # local | slurm (default: `defaults:`, `--executor`, local)
//!     resources: { time: "2:00:00", mem: 64G }  # sbatch options over `defaults: resources:`
//! ```
//!
//! Loading never stops at the first problem: [`load`] collects every located diagnostic (syntax,
//! unknown keys with "did you mean", wrong types, unknown kinds, duplicate names, dangling
//! references, missing files, cycles) and returns them together; nothing runs unless the file is
//! entirely valid. Parameter precedence, lowest first: the kind's default, `defaults:`, the node's
//! `params:`, `--set node.param=value`.

pub mod validate;
pub mod values;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::device::{DeviceReq, GpuCount};
use crate::graph::{Cycle, Graph};
use crate::nodes::{self, NodeKind};
use crate::params::{did_you_mean, Default as ParamDefault, Params};
use crate::slurm::{self, Executor, Resources};
use validate::{suggest, Diagnostics, SpecError};
use values::{convert, convert_scalar, BadValue};
use yaml::{Span, Yaml, YamlValue};

/// A validated pipeline.
pub struct Pipeline {
    /// The pipeline's `name:`.
    pub name: String,
    /// The pipeline's `description:`, if any.
    pub description: Option<String>,
    /// The file as given on the command line.
    pub file: PathBuf,
    /// The folder that relative input paths are resolved against.
    pub root: PathBuf,
    /// Nodes in file order.
    pub nodes: Vec<NodeSpec>,
}

impl Pipeline {
    /// Sets the executor of every node whose file says none (`pipe run --executor`).
    pub fn with_default_executor(mut self, executor: Option<Executor>) -> Pipeline {
        if let Some(e) = executor {
            for n in &mut self.nodes {
                n.executor.get_or_insert(e);
            }
        }
        self
    }

    /// The DAG of the nodes (indices into [`Self::nodes`]); a validated pipeline has no cycle.
    pub fn graph(&self) -> Result<Graph, Cycle> {
        Graph::build(&upstream_indices(&self.nodes))
    }
}

/// One node of a pipeline.
pub struct NodeSpec {
    /// Its name (the key under `nodes:`).
    pub name: String,
    /// Its kind.
    pub kind: &'static dyn NodeKind,
    /// Connected inputs by slot.
    pub inputs: BTreeMap<String, InputRef>,
    /// Effective parameters.
    pub params: Params,
    /// Where it runs.
    pub device: DeviceReq,
    /// How many GPUs it runs on when it runs on CUDA (`gpus:`; one unless given).
    pub gpus: GpuCount,
    /// Where its `gpus:` value is in the file, when given (for errors found against the pool).
    pub gpus_span: Option<Span>,
    /// Where it runs (`executor:`, else `defaults: executor:`, else `--executor`); `None` when
    /// nothing says, which is local.
    pub executor: Option<Executor>,
    /// What it asks Slurm for (`resources:` over `defaults: resources:`); never part of its key.
    pub resources: Resources,
    /// Where its name is in the file.
    pub span: Span,
}

impl NodeSpec {
    /// Where it runs.
    pub fn executor(&self) -> Executor {
        self.executor.unwrap_or_default()
    }

    /// The GPUs its Slurm job asks for: `resources: gpus`, else its `gpus:` count when it runs on
    /// CUDA (`device: cuda` or `gpus:`), else none. `gpus: all` without `resources: gpus` asks
    /// for one.
    pub fn slurm_gpus(&self) -> u32 {
        match (self.resources.gpus, self.device, self.gpus) {
            (Some(n), _, _) => n,
            (None, DeviceReq::Cuda, GpuCount::Count(n)) => n as u32,
            (None, DeviceReq::Cuda, GpuCount::All) => 1,
            _ => 0,
        }
    }

    /// Names of the upstream nodes this node reads from.
    pub fn upstream(&self) -> impl Iterator<Item = &str> {
        self.inputs.values().filter_map(|r| match r {
            InputRef::Node { node, .. } => Some(node.as_str()),
            _ => None,
        })
    }
}

/// Each node's upstream nodes by index (names that name no node are left out).
fn upstream_indices(nodes: &[NodeSpec]) -> Vec<BTreeSet<usize>> {
    let by_name: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    nodes.iter().map(|n| n.upstream().filter_map(|u| by_name.get(u).copied()).collect()).collect()
}

/// Where an input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputRef {
    /// A file or folder, as written (relative to the pipeline's folder unless absolute).
    File(PathBuf),
    /// Another node's output.
    Node { node: String, output: String },
    /// A model source such as `pypi:pkg==1.0:path/in/wheel` or `hf:org/name`.
    Source(String),
}

impl std::fmt::Display for InputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputRef::File(p) => write!(f, "{}", p.display()),
            InputRef::Node { node, output } => write!(f, "{node}.{output}"),
            InputRef::Source(s) => write!(f, "{s}"),
        }
    }
}

/// A `--set node.param=value` override.
#[derive(Debug, Clone)]
pub struct Override {
    /// The argument as given.
    pub arg: String,
    /// Node name.
    pub node: String,
    /// Parameter name.
    pub param: String,
    /// Value text (YAML scalar syntax).
    pub value: String,
}

impl Override {
    /// Parses `node.param=value`.
    pub fn parse(arg: &str) -> Result<Override, SpecError> {
        let bad = |message: &str| SpecError::Override {
            arg: arg.to_string(),
            message: message.to_string(),
            help: Some("write it as NODE.PARAM=VALUE, e.g. --set tokenize.max_length=256".into()),
        };
        let (lhs, value) = arg.split_once('=').ok_or_else(|| bad("missing `=`"))?;
        let (node, param) = lhs.split_once('.').ok_or_else(|| bad("missing `.` between node and parameter"))?;
        if node.is_empty() || param.is_empty() {
            return Err(bad("empty node or parameter name"));
        }
        Ok(Override { arg: arg.into(), node: node.into(), param: param.into(), value: value.into() })
    }
}

const TOP_KEYS: &[&str] = &["name", "description", "defaults", "nodes"];
const NODE_KEYS: &[&str] = &["kind", "inputs", "params", "device", "gpus", "executor", "resources", "description"];
const DEVICES: &[&str] = &["cpu", "cuda", "auto"];

/// Reads, parses and validates a pipeline file, applying `--set` overrides.
pub fn load(file: &Path, overrides: &[Override]) -> Result<Pipeline, SpecError> {
    let src = std::fs::read_to_string(file).map_err(|source| SpecError::Read { path: file.to_path_buf(), source })?;
    let root = file
        .parent()
        .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
        .unwrap_or(Path::new("."))
        .canonicalize()
        .map_err(|source| SpecError::Read { path: file.to_path_buf(), source })?;
    load_str(&src, file, root, overrides)
}

/// Parses and validates the pipeline text `src` of `file`, whose relative paths are under
/// `root`, applying `--set` overrides: [`load`] once the file is read.
pub fn load_str(src: &str, file: &Path, root: PathBuf, overrides: &[Override]) -> Result<Pipeline, SpecError> {
    let mut diag = Diagnostics::new(file, src);
    let doc = match yaml::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            diag.error(e.span, format!("invalid YAML: {}", e.message), "here", None);
            diag.finish()?;
            unreachable!("a syntax error was recorded");
        }
    };
    let mut loader =
        Loader { diag, root, overrides, used_overrides: HashSet::new(), spans: HashMap::new(), declared: HashSet::new() };
    let pipeline = loader.pipeline(&doc, file);
    let Loader { diag, used_overrides, .. } = loader;
    diag.finish()?;
    let pipeline = pipeline.expect("no diagnostics means a pipeline was built");
    for (i, o) in overrides.iter().enumerate() {
        if !used_overrides.contains(&i) {
            return Err(match pipeline.nodes.iter().find(|n| n.name == o.node) {
                None => SpecError::Override {
                    arg: o.arg.clone(),
                    message: format!("no node named `{}`", o.node),
                    help: suggest(did_you_mean(&o.node, pipeline.nodes.iter().map(|n| n.name.as_str()))),
                },
                Some(n) => SpecError::Override {
                    arg: o.arg.clone(),
                    message: format!("node `{}` ({}) has no parameter `{}`", o.node, n.kind.name(), o.param),
                    help: suggest(did_you_mean(&o.param, n.kind.params().iter().map(|p| p.name))),
                },
            });
        }
    }
    Ok(pipeline)
}

struct Loader<'a> {
    diag: Diagnostics,
    root: PathBuf,
    overrides: &'a [Override],
    used_overrides: HashSet<usize>,
    /// Where each `(node, input slot)` value is, for reference errors.
    spans: HashMap<(String, String), Span>,
    /// Every node name declared, including nodes dropped for their own errors.
    declared: HashSet<String>,
}

fn map_entries(y: &Yaml) -> Option<&[(Yaml, Yaml)]> {
    match &y.value {
        YamlValue::Map(e) => Some(e),
        _ => None,
    }
}

impl Loader<'_> {
    /// Checks a mapping's keys against `allowed`, reporting unknown and duplicate keys.
    fn keys<'y>(&mut self, y: &'y Yaml, what: &str, allowed: &[&str]) -> HashMap<&'y str, &'y (Yaml, Yaml)> {
        let mut seen: HashMap<&str, &(Yaml, Yaml)> = HashMap::new();
        let Some(entries) = map_entries(y) else {
            self.diag.error(y.span, format!("{what} must be a mapping, found {}", y.type_name()), "expected a mapping", None);
            return seen;
        };
        for entry in entries {
            let key = entry.0.as_scalar().unwrap_or("");
            if let Some(first) = seen.get(key) {
                let msg = format!("duplicate key `{key}` in {what} (first at line {})", first.0.span.line);
                self.diag.error(entry.0.span, msg, "duplicate", None);
                continue;
            }
            if !allowed.is_empty() && !allowed.contains(&key) {
                let help = suggest(did_you_mean(key, allowed.iter().copied()))
                    .or_else(|| Some(format!("allowed keys: {}", allowed.join(", "))));
                self.diag.error(entry.0.span, format!("unknown key `{key}` in {what}"), "unknown key", help);
                continue;
            }
            seen.insert(key, entry);
        }
        seen
    }

    fn string(&mut self, y: &Yaml, what: &str) -> Option<String> {
        match &y.value {
            YamlValue::Scalar { text, .. } if !y.is_null() => Some(text.clone()),
            _ => {
                self.diag.error(y.span, format!("`{what}` must be a string, found {}", y.type_name()), "expected a string", None);
                None
            }
        }
    }

    fn pipeline(&mut self, doc: &Yaml, file: &Path) -> Option<Pipeline> {
        let top = self.keys(doc, "the pipeline", TOP_KEYS);
        map_entries(doc)?;
        let name = match top.get("name") {
            Some((_, v)) => self.string(v, "name"),
            None => {
                self.diag.error(
                    doc.span,
                    "missing key `name` at the top of the pipeline",
                    "the pipeline starts here",
                    Some("add `name: my-pipeline`".into()),
                );
                None
            }
        };
        let description = top.get("description").and_then(|(_, v)| self.string(v, "description"));
        let defaults = top.get("defaults").map(|(_, v)| self.defaults(v)).unwrap_or_default();
        let mut nodes = match top.get("nodes") {
            Some((_, v)) => self.nodes(v, &defaults),
            None => {
                self.diag.error(
                    doc.span,
                    "missing key `nodes`",
                    "the pipeline starts here",
                    Some("a pipeline needs at least one node under `nodes:`".into()),
                );
                Vec::new()
            }
        };
        self.references(&mut nodes);
        if self.diag.items.is_empty() {
            if let Err(Cycle(cycle)) = Graph::build(&upstream_indices(&nodes)) {
                let names: Vec<&str> = cycle.iter().map(|&i| nodes[i].name.as_str()).collect();
                let first = &nodes[cycle[0]];
                let msg = format!("the pipeline has a cycle: {} -> {}", names.join(" -> "), names[0]);
                self.diag.error(first.span, msg, "part of the cycle", Some("remove one of these inputs".into()));
            }
        }
        Some(Pipeline { name: name?, description, file: file.to_path_buf(), root: self.root.clone(), nodes })
    }

    /// `defaults:` is a map of parameter name (or `device`) to value.
    fn defaults<'y>(&mut self, y: &'y Yaml) -> HashMap<String, &'y Yaml> {
        let mut out = HashMap::new();
        let known: Vec<&str> = ["device", "executor", "resources"]
            .into_iter()
            .chain(nodes::registry().iter().flat_map(|k| k.params().iter().map(|p| p.name)))
            .collect();
        for (k, entry) in self.keys(y, "defaults", &known) {
            out.insert(k.to_string(), &entry.1);
        }
        out
    }

    fn nodes(&mut self, y: &Yaml, defaults: &HashMap<String, &Yaml>) -> Vec<NodeSpec> {
        let mut out = Vec::new();
        let entries = self.keys(y, "nodes", &[]);
        let mut entries: Vec<_> = entries.into_values().collect();
        entries.sort_by_key(|(k, _)| k.span.offset);
        // `defaults: executor` and `defaults: resources`, checked once.
        let run_defaults = (
            defaults.get("executor").and_then(|v| self.executor(v)),
            defaults.get("resources").map(|v| self.resources("defaults", v)).unwrap_or_default(),
        );
        for (key, body) in entries {
            let Some(name) = self.string(key, "node name") else {
                continue;
            };
            if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-') {
                let msg = format!("node name `{name}` may only use letters, digits, `-` and `_`");
                self.diag.error(key.span, msg, "invalid name", None);
                continue;
            }
            self.declared.insert(name.clone());
            if let Some(node) = self.node(name, key.span, body, defaults, &run_defaults) {
                out.push(node);
            }
        }
        out
    }

    fn node(
        &mut self,
        name: String,
        span: Span,
        body: &Yaml,
        defaults: &HashMap<String, &Yaml>,
        run_defaults: &(Option<Executor>, Resources),
    ) -> Option<NodeSpec> {
        let what = format!("node `{name}`");
        let keys = self.keys(body, &what, NODE_KEYS);
        map_entries(body)?;
        let kind = match keys.get("kind") {
            None => {
                self.diag.error(span, format!("node `{name}` has no `kind`"), "here", Some(format!("kinds: {}", kind_names())));
                return None;
            }
            Some((_, v)) => {
                let text = self.string(v, "kind")?;
                match nodes::find(&text) {
                    Some(k) => k,
                    None => {
                        let help = suggest(did_you_mean(&text, nodes::registry().iter().map(|k| k.name())))
                            .or_else(|| Some(format!("known kinds: {}", kind_names())));
                        self.diag.error(v.span, format!("unknown node kind `{text}`"), "unknown kind", help);
                        return None;
                    }
                }
            }
        };
        let gpus_key = keys.get("gpus").map(|(k, v)| (k, v));
        let gpus = gpus_key.and_then(|(k, v)| self.gpus(&name, kind, k, v)).unwrap_or(GpuCount::Count(1));
        let gpus_span = gpus_key.map(|(_, v)| v.span);
        // `gpus:` asks for GPUs, so without a `device:` of its own the node runs on CUDA.
        let device_yaml = match keys.get("device") {
            Some((_, v)) => Some(v),
            None if gpus_key.is_some() => None,
            None => defaults.get("device").copied(),
        };
        let device = match device_yaml {
            None if gpus_key.is_some() => DeviceReq::Cuda,
            None => kind.default_device(),
            Some(v) => match v.as_scalar() {
                Some("cpu") => DeviceReq::Cpu,
                Some("cuda") => DeviceReq::Cuda,
                Some("auto") => DeviceReq::Auto,
                other => {
                    let help = suggest(other.and_then(|t| did_you_mean(t, DEVICES.iter().copied())));
                    self.diag.error(v.span, "`device` must be one of cpu, cuda, auto", "unknown device", help);
                    kind.default_device()
                }
            },
        };
        if device == DeviceReq::Cpu && gpus != GpuCount::Count(1) {
            if let (Some((_, g)), Some((_, d))) = (gpus_key, keys.get("device")) {
                let msg = format!("node `{name}` has `device: cpu` and `gpus: {gpus}`; data-parallel training runs on GPUs only");
                let help = Some(format!("remove `device: cpu` (line {}) to run on CUDA, or remove `gpus`", d.span.line));
                self.diag.error(g.span, msg, "needs CUDA", help);
            }
        }
        let executor = match keys.get("executor") {
            Some((_, v)) => self.executor(v),
            None => run_defaults.0,
        };
        let resources = match keys.get("resources") {
            Some((_, v)) => self.resources(&format!("node `{name}`"), v),
            None => Resources::default(),
        }
        .over(&run_defaults.1);
        let params = self.params(&name, kind, keys.get("params").map(|(_, v)| v), defaults);
        let inputs = self.inputs(&name, span, kind, keys.get("inputs").map(|(_, v)| v));
        if let Err((param, message)) = kind.check_params(&params) {
            let at = keys.get("params").map(|(_, v)| v.span).unwrap_or(span);
            self.diag.error(at, format!("node `{name}`: parameter `{param}`: {message}"), "here", None);
        }
        Some(NodeSpec { name, kind, inputs, params, device, gpus, gpus_span, executor, resources, span })
    }

    /// `executor: local | slurm`.
    fn executor(&mut self, v: &Yaml) -> Option<Executor> {
        let e = v.as_scalar().filter(|_| !v.is_null()).and_then(Executor::parse);
        if e.is_none() {
            let help = suggest(v.as_scalar().and_then(|t| did_you_mean(t, Executor::NAMES.iter().copied())))
                .or_else(|| Some("`local` runs the node in this process, `slurm` submits it as a Slurm job".into()));
            self.diag.error(v.span, "`executor` must be one of local, slurm", "unknown executor", help);
        }
        e
    }

    /// `resources:` (of a node, or under `defaults:`): Slurm options, each checked.
    fn resources(&mut self, owner: &str, y: &Yaml) -> Resources {
        let mut out = Resources::default();
        let what = format!("resources of {owner}");
        let keys = self.keys(y, &what, slurm::RESOURCE_KEYS);
        let mut keys: Vec<_> = keys.into_iter().collect();
        keys.sort_by_key(|(_, (k, _))| k.span.offset);
        for (key, (_, v)) in keys {
            let text = v.as_scalar().filter(|_| !v.is_null() && !matches!(v.value, YamlValue::Seq(_)));
            let bad = |diag: &mut Diagnostics, message: String, help: &str| {
                diag.error(v.span, format!("{what}: `{key}`: {message}"), "invalid value", Some(help.to_string()));
            };
            let number = |t: &str| t.parse::<u32>().ok();
            match key {
                "partition" | "account" => match text {
                    Some(t) if !t.is_empty() && !t.contains(char::is_whitespace) => {
                        let slot = if key == "partition" { &mut out.partition } else { &mut out.account };
                        *slot = Some(t.to_string());
                    }
                    _ => bad(&mut self.diag, format!("must be a name, found {}", v.type_name()), "e.g. `partition: gpu`"),
                },
                "time" => match text.map(slurm::check_time) {
                    Some(Ok(t)) => out.time = Some(t),
                    Some(Err(e)) => {
                        bad(&mut self.diag, e, "minutes (`time: 30`), `HH:MM:SS` or `D-HH:MM:SS`, as sbatch --time reads it")
                    }
                    None => bad(
                        &mut self.diag,
                        format!("must be a time limit, found {}", v.type_name()),
                        "e.g. `time: 30` (minutes) or `time: \"2:00:00\"`",
                    ),
                },
                "mem" => match text.map(slurm::check_mem) {
                    Some(Ok(m)) => out.mem = Some(m),
                    Some(Err(e)) => {
                        bad(&mut self.diag, e, "megabytes (`mem: 4000`) or with a unit (`mem: 16G`), as sbatch --mem reads it")
                    }
                    None => bad(&mut self.diag, format!("must be a memory size, found {}", v.type_name()), "e.g. `mem: 16G`"),
                },
                "cpus" => match text.and_then(number).filter(|&n| n >= 1) {
                    Some(n) => out.cpus = Some(n),
                    None => {
                        bad(&mut self.diag, format!("must be a number of CPUs (1 or more), found {}", found(v)), "e.g. `cpus: 4`")
                    }
                },
                "gpus" => match text.and_then(number) {
                    Some(n) => out.gpus = Some(n),
                    None => {
                        bad(&mut self.diag, format!("must be a number of GPUs (0 or more), found {}", found(v)), "e.g. `gpus: 1`")
                    }
                },
                "extra" => match &v.value {
                    YamlValue::Seq(items) => {
                        for item in items {
                            match item.as_scalar().filter(|_| !item.is_null()) {
                                Some(arg) => match slurm::check_extra(arg) {
                                    Ok(()) => out.extra.push(arg.to_string()),
                                    Err(e) => self.diag.error(
                                        item.span,
                                        format!("{what}: `extra`: {e}"),
                                        "invalid sbatch argument",
                                        Some("e.g. `extra: [\"--qos=high\", \"--constraint=a100\"]`".into()),
                                    ),
                                },
                                None => self.diag.error(
                                    item.span,
                                    format!("{what}: `extra`: each item must be a string, found {}", item.type_name()),
                                    "expected a string",
                                    None,
                                ),
                            }
                        }
                    }
                    _ => bad(
                        &mut self.diag,
                        format!("must be a list of sbatch arguments, found {}", v.type_name()),
                        "e.g. `extra: [\"--qos=high\"]`",
                    ),
                },
                _ => unreachable!("keys() admits only RESOURCE_KEYS"),
            }
        }
        out
    }

    /// `gpus: N | all` on a data-parallel kind.
    fn gpus(&mut self, node: &str, kind: &dyn NodeKind, key: &Yaml, v: &Yaml) -> Option<GpuCount> {
        if !kind.data_parallel() {
            let data_parallel: Vec<&str> = nodes::registry().iter().filter(|k| k.data_parallel()).map(|k| k.name()).collect();
            let msg = format!("node `{node}` ({}) runs on one device; it takes no `gpus`", kind.name());
            let help = Some(format!("`gpus` is for data-parallel kinds: {}", data_parallel.join(", ")));
            self.diag.error(key.span, msg, "not data-parallel", help);
            return None;
        }
        let count = match v.as_scalar() {
            Some("all") => Some(GpuCount::All),
            Some(t) if !v.is_null() => t.parse::<usize>().ok().filter(|&n| n >= 1).map(GpuCount::Count),
            _ => None,
        };
        if count.is_none() {
            let found =
                v.as_scalar().filter(|_| !v.is_null()).map(|t| format!("`{t}`")).unwrap_or_else(|| v.type_name().to_string());
            let msg = format!("node `{node}`: `gpus` must be a number of GPUs (1 or more) or `all`, found {found}");
            self.diag.error(v.span, msg, "invalid value", Some("e.g. `gpus: 2`, or `gpus: all` for every GPU of the run".into()));
        }
        count
    }

    fn params(&mut self, node: &str, kind: &dyn NodeKind, y: Option<&Yaml>, defaults: &HashMap<String, &Yaml>) -> Params {
        let schema = kind.params();
        let mut given: HashMap<&str, &Yaml> = HashMap::new();
        if let Some(y) = y {
            let allowed: Vec<&str> = schema.iter().map(|p| p.name).collect();
            let what = format!("params of `{node}` ({})", kind.name());
            if allowed.is_empty() && !y.is_null() {
                self.diag.error(y.span, format!("{} takes no parameters", kind.name()), "unexpected", None);
            } else if !y.is_null() {
                for (k, entry) in self.keys(y, &what, &allowed) {
                    given.insert(k, &entry.1);
                }
            }
        }
        let mut out = Params::default();
        for spec in schema {
            let over = self.overrides.iter().enumerate().rfind(|(_, o)| o.node == node && o.param == spec.name);
            let value = if let Some((i, o)) = over {
                self.used_overrides.insert(i);
                let quoted = o.value.starts_with('"') || o.value.starts_with('\'');
                let text = if quoted && o.value.len() >= 2 { &o.value[1..o.value.len() - 1] } else { o.value.as_str() };
                match convert_scalar(spec, text, quoted) {
                    Some(Ok(v)) => Some(v),
                    Some(Err(e)) => {
                        self.override_error(o, e.to_string());
                        None
                    }
                    None => {
                        let e = BadValue::Mismatch {
                            param: spec.name,
                            expected: spec.ty.describe(),
                            found: format!("`{}`", o.value),
                        };
                        self.override_error(o, e.to_string());
                        None
                    }
                }
            } else if let Some(y) = given.get(spec.name).copied().or_else(|| defaults.get(spec.name).copied()) {
                match convert(spec, y) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.diag.error(y.span, format!("node `{node}`: {e}"), "invalid value", None);
                        None
                    }
                }
            } else {
                spec.default.value()
            };
            match value {
                Some(v) => {
                    out.0.insert(spec.name.to_string(), v);
                }
                None if matches!(spec.default, ParamDefault::Required) && over.is_none() && !given.contains_key(spec.name) => {
                    let at = y.map(|y| y.span).unwrap_or_default();
                    let msg = format!("node `{node}` ({}) needs parameter `{}` ({})", kind.name(), spec.name, spec.ty.describe());
                    self.diag.error(at, msg, "missing parameter", Some(spec.doc.to_string()));
                }
                None => {}
            }
        }
        out
    }

    fn override_error(&mut self, o: &Override, message: String) {
        // Overrides have no place in the file; report them as errors of the file's first line so
        // nothing runs, naming the argument.
        self.diag.error(
            Span { offset: 0, len: 1, line: 1, col: 1 },
            format!("--set {}: {message}", o.arg),
            "in this pipeline",
            None,
        );
    }

    fn inputs(&mut self, node: &str, span: Span, kind: &dyn NodeKind, y: Option<&Yaml>) -> BTreeMap<String, InputRef> {
        let slots = kind.inputs();
        let allowed: Vec<&str> = slots.iter().map(|s| s.name).collect();
        let mut out = BTreeMap::new();
        if let Some(y) = y {
            let what = format!("inputs of `{node}` ({})", kind.name());
            let given = self.keys(y, &what, &allowed);
            let mut given: Vec<_> = given.into_iter().collect();
            given.sort_by_key(|(_, (k, _))| k.span.offset);
            for (slot, (_, v)) in given {
                let Some(text) = self.string(v, slot) else {
                    continue;
                };
                out.insert(slot.to_string(), (parse_ref(&text), v.span));
            }
        }
        for slot in slots.iter().filter(|s| s.required) {
            if !out.contains_key(slot.name) {
                let msg = format!("node `{node}` ({}) needs input `{}`", kind.name(), slot.name);
                self.diag.error(y.map(|y| y.span).unwrap_or(span), msg, "missing input", Some(slot.doc.to_string()));
            }
        }
        self.spans.extend(out.iter().map(|(slot, (_, sp))| ((node.to_string(), slot.clone()), *sp)));
        out.into_iter().map(|(k, (r, _))| (k, r)).collect()
    }
}

impl Loader<'_> {
    /// Checks every input: node references name an existing node and output, files exist.
    fn references(&mut self, nodes: &mut [NodeSpec]) {
        let outputs: HashMap<String, Vec<&'static str>> =
            nodes.iter().map(|n| (n.name.clone(), n.kind.outputs(&n.params).iter().map(|o| o.name).collect())).collect();
        for node in nodes.iter_mut() {
            for (slot, input) in node.inputs.iter_mut() {
                let span = self.spans.get(&(node.name.clone(), slot.clone())).copied().unwrap_or(node.span);
                match input.clone() {
                    InputRef::Node { node: up, output } => match outputs.get(&up) {
                        Some(outs) if outs.contains(&output.as_str()) => {}
                        Some(outs) => {
                            let help = suggest(did_you_mean(&output, outs.iter().copied()))
                                .or_else(|| Some(format!("`{up}` has outputs: {}", outs.join(", "))));
                            let msg = format!("node `{}`: input `{slot}`: node `{up}` has no output `{output}`", node.name);
                            self.diag.error(span, msg, "unknown output", help);
                        }
                        // A node that is declared but invalid has its own error already.
                        None if self.declared.contains(&up) => {}
                        None if self.root.join(format!("{up}.{output}")).exists() => {
                            *input = InputRef::File(PathBuf::from(format!("{up}.{output}")));
                        }
                        None if did_you_mean(&up, outputs.keys().map(String::as_str)).is_none() => {
                            let full = self.root.join(format!("{up}.{output}"));
                            let msg = format!("node `{}`: input `{slot}`: file not found: {}", node.name, full.display());
                            self.diag.error(span, msg, "no such file", None);
                        }
                        None => {
                            let help = did_you_mean(&up, outputs.keys().map(String::as_str))
                                .map(|c| format!("did you mean `{c}.{output}`?"));
                            let msg = format!(
                                "node `{}`: input `{slot}`: `{up}.{output}` is neither a node output (no node named `{up}`) nor a file in {}",
                                node.name,
                                self.root.display()
                            );
                            self.diag.error(span, msg, "dangling reference", help);
                        }
                    },
                    InputRef::File(path) => {
                        let full = self.root.join(&path);
                        if !full.exists() {
                            let msg = format!("node `{}`: input `{slot}`: file not found: {}", node.name, full.display());
                            self.diag.error(span, msg, "no such file", None);
                        }
                    }
                    InputRef::Source(text) => {
                        if let Err(message) = crate::source::Source::parse(&text) {
                            self.diag.error(
                                span,
                                format!("node `{}`: input `{slot}`: {message}", node.name),
                                "invalid source",
                                None,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// How a value reads in a "found ..." message: the scalar itself, or its shape.
fn found(v: &Yaml) -> String {
    v.as_scalar().filter(|_| !v.is_null()).map(|t| format!("`{t}`")).unwrap_or_else(|| v.type_name().to_string())
}

fn kind_names() -> String {
    nodes::registry().iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

/// Classifies an input string: `pypi:`/`hf:` sources, `node.output` references, or files.
/// A string is a node reference when it has no `/`, exactly one `.`, and no file of that name
/// exists; [`Loader::references`] then checks the node and output exist.
pub fn parse_ref(text: &str) -> InputRef {
    if text.starts_with("pypi:") || text.starts_with("hf:") {
        return InputRef::Source(text.to_string());
    }
    if !text.contains('/') && !text.contains('\\') {
        if let Some((node, output)) = text.split_once('.') {
            let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-');
            if ident(node) && ident(output) {
                return InputRef::Node { node: node.to_string(), output: output.to_string() };
            }
        }
    }
    InputRef::File(PathBuf::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_yaml(yaml: &str) -> Pipeline {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.jsonl"), "{}").unwrap();
        std::fs::write(dir.path().join("p.yaml"), yaml).unwrap();
        load(&dir.path().join("p.yaml"), &[]).unwrap()
    }

    #[test]
    fn executor_and_resources_come_from_the_node_over_the_defaults_and_the_command_line_fills_the_rest() {
        let p = load_yaml(
            "name: t\ndefaults:\n  resources: { partition: gpu, time: 30, extra: [--qos=low] }\nnodes:\n  a: { kind: fix-json, inputs: { records: r.jsonl }, executor: slurm, resources: { time: \"1-0\", cpus: 2 } }\n  b: { kind: fix-json, inputs: { records: r.jsonl } }\n  c: { kind: fix-json, inputs: { records: r.jsonl }, executor: local }\n",
        )
        .with_default_executor(Some(Executor::Slurm));
        let [a, b, c] = &p.nodes[..] else { panic!("three nodes") };
        assert_eq!((a.executor(), b.executor(), c.executor()), (Executor::Slurm, Executor::Slurm, Executor::Local));
        assert_eq!(a.resources.sbatch_args(0), ["--partition=gpu", "--time=1-0", "--cpus-per-task=2", "--qos=low"]);
        assert_eq!(b.resources.sbatch_args(0), ["--partition=gpu", "--time=30", "--qos=low"]);
        let d =
            load_yaml("name: t\ndefaults: { executor: slurm }\nnodes:\n  a: { kind: fix-json, inputs: { records: r.jsonl } }\n");
        assert_eq!(
            d.with_default_executor(Some(Executor::Local)).nodes[0].executor(),
            Executor::Slurm,
            "the file wins over --executor"
        );
    }
}
