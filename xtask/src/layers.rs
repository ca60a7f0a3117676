//! `cargo xtask lint`'s layer check of the controller: every module of `controller/src` sits in
//! one layer of [`LAYERS`], may import (`use crate::…` or a `crate::…` path, outside
//! `#[cfg(test)]`) only modules of its own layer or below, and no two modules import each
//! other, directly or round a circle. A submodule (`loader/retired.rs`) counts as its parent;
//! test code (`#[cfg(test)]` parts, `tests.rs` files, `tests/` folders) is not checked.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use anyhow::{Context as _, bail};

/// The controller's layers, lowest first (docs/architecture.md draws the same picture).
pub const LAYERS: &[(&str, &[&str])] = &[
    (
        "base: the rule model, pin paths, raw syscalls, embedded objects, small helpers",
        &["rules", "pins", "sys", "ebpf_object", "sdnotify", "tls"],
    ),
    (
        "the rule store and the lookup engines' layouts",
        &["store", "dir24", "v6hash"],
    ),
    ("the kernel maps", &["datapath"]),
    (
        "the kernel programs: load, attach, pin; egress; kernel features",
        &["loader", "egress", "kernel", "syn"],
    ),
    ("the rule-set owner", &["engine"]),
    (
        "rule sources and observers",
        &["feeds", "crowdsec", "events", "metrics"],
    ),
    ("the configuration file", &["config"]),
    ("the HTTP API", &["api"]),
    ("the daemon's wiring", &["daemon"]),
    (
        "the command line and its typed HTTP client",
        &["cli", "client"],
    ),
];

/// Modules of the library that are not layered: the crate root and the binary.
const ROOTS: &[&str] = &["lib", "main"];

/// Checks `src` (controller/src); the error lists every violation.
pub fn check(src: &Path) -> anyhow::Result<()> {
    let imports = imports(src)?;
    let layer_of = |module: &str| LAYERS.iter().position(|(_, mods)| mods.contains(&module));
    let mut problems = Vec::new();
    for (module, deps) in &imports {
        let Some(layer) = layer_of(module) else {
            problems.push(format!(
                "controller/src/{module}: not in any layer; add it to LAYERS in xtask/src/layers.rs"
            ));
            continue;
        };
        for dep in deps {
            if let Some(dep_layer) = layer_of(dep)
                && dep_layer > layer
            {
                problems.push(format!(
                    "{module} ({}) imports {dep} ({}), a layer above it",
                    LAYERS[layer].0, LAYERS[dep_layer].0
                ));
            }
        }
    }
    for cycle in cycles(&imports) {
        problems.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    if problems.is_empty() {
        println!(
            "layers: {} controller modules, imports only downward, no cycle",
            imports.len()
        );
        Ok(())
    } else {
        bail!("controller layering:\n  {}", problems.join("\n  "))
    }
}

/// Module -> the crate modules it imports (outside its tests).
fn imports(src: &Path) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let files = crate::file_sizes::non_test_sources(src)?;
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let first = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .context("a file name that is not UTF-8")?;
        let module = first.strip_suffix(".rs").unwrap_or(first).to_string();
        if ROOTS.contains(&module.as_str()) {
            continue;
        }
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let deps = imports.entry(module.clone()).or_default();
        deps.extend(crate_modules(code).into_iter().filter(|d| *d != module));
    }
    Ok(imports)
}

/// The first segment of every `crate::` path in `code`, including each top-level item of a
/// `use crate::{a::…, b, …}` group.
fn crate_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Top-level entries of the group: split on commas at brace depth 0.
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(group[start..i].trim_start()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(group[start..i].trim_start()));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(after));
        }
        rest = after;
    }
    found.remove("");
    found
}

/// Every import cycle, each once (as a strongly connected component of more than one module).
fn cycles(imports: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm over the module graph.
    struct State<'a> {
        imports: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.imports.get(v).into_iter().flatten() {
            let Some((w, _)) = s.imports.get_key_value(w.as_str()) else {
                continue;
            };
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        imports,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in imports.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_paths_and_groups() {
        let code = "use crate::{\n    api::{self, AppState},\n    config::{A, B},\n    kernel, loader,\n};\nfn f() { crate::store::unix_now(); }\n";
        let found: Vec<String> = crate_modules(code).into_iter().collect();
        assert_eq!(found, ["api", "config", "kernel", "loader", "store"]);
    }

    #[test]
    fn finds_a_cycle_and_no_false_one() {
        let graph = |edges: &[(&str, &str)]| {
            let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (a, b) in edges {
                g.entry(a.to_string()).or_default().insert(b.to_string());
                g.entry(b.to_string()).or_default();
            }
            g
        };
        let acyclic = graph(&[("api", "engine"), ("engine", "rules"), ("api", "rules")]);
        assert!(cycles(&acyclic).is_empty());
        let cyclic = graph(&[
            ("config", "feeds"),
            ("feeds", "engine"),
            ("engine", "config"),
        ]);
        assert_eq!(cycles(&cyclic), vec![vec!["config", "engine", "feeds"]]);
    }

    #[test]
    fn the_controller_is_layered() {
        check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../controller/src")).unwrap();
    }
}
