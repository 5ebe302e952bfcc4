//! The settings are written down in three places that must agree: the README's table (what a
//! user reads), `local.settings.json.example` (what a `func start` user copies) and
//! `src/config.rs` (what the code reads), as `openapi.rs` keeps `openapi.yaml` in step with the
//! code.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::host::app_root;

/// Read by `config.rs` but set by the Functions host, never by a user: in neither list.
const SET_BY_THE_HOST: [&str; 2] = ["FUNCTIONS_APP_ROOT_PATH", "FUNCTIONS_HTTPWORKER_PORT"];
/// In the README (users meet it in logs and errors) but never in `local.settings.json`: the host
/// sets it for the handler it starts.
const HOST_GIVES_IT: &str = "FUNCTIONS_CUSTOMHANDLER_PORT";
/// In the example for the Functions host itself; the handler does not read them.
const FOR_THE_HOST: [&str; 2] = ["FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage"];
/// Where the example holds a local value instead of the README's default: required settings,
/// and the key of the local receiver (`make run`, `make services`) — a placeholder, no secret.
const LOCAL_VALUES: [(&str, &str); 3] = [
    ("MONGODB_URI", "mongodb://127.0.0.1:7073/?replicaSet=rs0"),
    (
        "EVENTGRID_TOPIC_ENDPOINT",
        "http://127.0.0.1:7072/api/events",
    ),
    ("EVENTGRID_TOPIC_KEY", "local-dev-key"),
];

#[test]
fn the_readme_table_lists_every_setting_config_rs_reads() {
    let documented: BTreeSet<String> = readme_table().into_keys().collect();
    let mut read = config_names();
    for name in SET_BY_THE_HOST {
        assert!(
            read.remove(name),
            "config.rs no longer reads {name}: update this test"
        );
    }
    assert_same(
        "the README's settings table",
        &documented,
        "config.rs",
        &read,
    );
}

#[test]
fn the_example_lists_every_setting_of_the_readme_table() {
    let mut documented: BTreeSet<String> = readme_table().into_keys().collect();
    assert!(documented.remove(HOST_GIVES_IT));
    let mut listed: BTreeSet<String> = example_values().into_keys().collect();
    for name in FOR_THE_HOST {
        assert!(
            listed.remove(name),
            "{name} is in local.settings.json.example"
        );
    }
    assert_same(
        "local.settings.json.example",
        &listed,
        "the README's settings table",
        &documented,
    );
}

#[test]
fn the_example_holds_the_readme_defaults() {
    let example = example_values();
    for (name, default) in readme_table() {
        let Some(value) = example.get(&name) else {
            continue; // the test above names it
        };
        let expected = match LOCAL_VALUES.iter().find(|(local, _)| *local == name) {
            Some((_, local)) => (*local).to_owned(),
            // `1000` is a default to copy; "—" (none) and a default that comes from elsewhere
            // (`schedule` of `OutboxTimer/function.json`) are left empty, which counts as unset.
            None => literal(&default).unwrap_or_default(),
        };
        assert_eq!(
            value, &expected,
            "{name}: the example has {value:?}, the README's default is {default}"
        );
    }
}

/// Fails naming the settings only one side has.
fn assert_same(a: &str, a_names: &BTreeSet<String>, b: &str, b_names: &BTreeSet<String>) {
    let only_a: Vec<&String> = a_names.difference(b_names).collect();
    let only_b: Vec<&String> = b_names.difference(a_names).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "only in {a}: {only_a:?}; only in {b}: {only_b:?}"
    );
}

/// `x` when the cell is exactly one code span `` `x` ``.
fn literal(cell: &str) -> Option<String> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then(|| inner.to_owned())
}

/// The README's settings table: name → its default cell.
fn readme_table() -> BTreeMap<String, String> {
    let readme = std::fs::read_to_string(app_root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Settings\n")
        .nth(1)
        .expect("README.md has a Settings section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let rows: BTreeMap<String, String> = section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .strip_prefix('|')?
                .split('|')
                .map(str::trim)
                .collect();
            let name = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_owned(), (*cells.get(1)?).to_owned()))
        })
        .collect();
    assert!(rows.len() > 20, "the README's settings table: {rows:?}");
    rows
}

/// The example's `Values`.
fn example_values() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(app_root().join("local.settings.json.example")).unwrap();
    let example: serde_json::Value = serde_json::from_str(&text).expect("the example is JSON");
    example["Values"]
        .as_object()
        .expect("the example has Values")
        .iter()
        .map(|(name, value)| {
            let value = value
                .as_str()
                .unwrap_or_else(|| panic!("{name} is a string"));
            (name.clone(), value.to_owned())
        })
        .collect()
}

/// Every setting name `config.rs` (or a `config/` module, should it grow into one) holds as a
/// string literal outside its tests.
fn config_names() -> BTreeSet<String> {
    let src = app_root().join("src");
    let mut files = vec![src.join("config.rs")];
    if let Ok(entries) = std::fs::read_dir(src.join("config")) {
        files.extend(entries.filter_map(|e| Some(e.ok()?.path())));
    }
    let mut names = BTreeSet::new();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rs"))
    {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let code = text.split("#[cfg(test)]").next().unwrap_or(&text);
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            names.extend(
                string_literals(line)
                    .into_iter()
                    .filter(|s| is_setting_name(s)),
            );
        }
    }
    assert!(names.len() > 20, "setting names in config.rs: {names:?}");
    names
}

fn string_literals(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut chars = line.chars();
    while chars.by_ref().any(|c| c == '"') {
        let mut literal = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                c => literal.push(c),
            }
        }
        found.push(literal);
    }
    found
}

fn is_setting_name(s: &str) -> bool {
    let has_area = [
        "FUNCTIONS_",
        "STANDALONE_",
        "MONGODB_",
        "OUTBOX_",
        "EVENTGRID_",
        // The ecosystem's own names win over the area-prefix rule (README, settings table).
        "OTEL_",
        "APPLICATIONINSIGHTS_",
    ]
    .iter()
    .any(|area| s.starts_with(area));
    (has_area || s == "RUST_LOG")
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}
