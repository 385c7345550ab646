//! The configuration reference (`docs/configuration.md`) matches `skylaunch serve --help`: its
//! `serve` table has a row for every setting, with the flag and its env var, names no setting
//! that does not exist, and shows each default clap knows.

use std::collections::BTreeMap;

use clap::CommandFactory;

#[derive(clap::Parser)]
struct Wrapper {
    #[command(flatten)]
    config: skylaunch::config::ServeConfig,
}

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");

/// The section of the page that documents `serve`: from its heading to the next one.
fn serve_section(page: &str) -> &str {
    let start = page
        .find("\n## `skylaunch serve`\n")
        .expect("docs/configuration.md has a \"## `skylaunch serve`\" section");
    let rest = &page[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// The rows of the section's table that document a flag: flag → the row's cells.
fn documented_flags(section: &str) -> BTreeMap<String, Vec<String>> {
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<String> = line
            .trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_string())
            .collect();
        let flag = cells[0].trim_matches('`').to_string();
        assert!(
            rows.insert(flag.clone(), cells).is_none(),
            "docs/configuration.md lists {flag} twice"
        );
    }
    rows
}

#[test]
fn configuration_reference_lists_every_serve_setting() {
    let page = std::fs::read_to_string(DOC).expect("docs/configuration.md");
    let section = serve_section(&page);
    let mut documented = documented_flags(section);
    let command = Wrapper::command();
    let mut checked = 0;
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let env = arg
            .get_env()
            .expect("every serve flag has an env var")
            .to_string_lossy()
            .to_string();
        let row = format!("| `--{long}` | `{env}` |");
        assert!(
            section.contains(&row),
            "docs/configuration.md's serve table lacks the row starting {row}"
        );
        let cells = documented
            .remove(&format!("--{long}"))
            .expect("the row above was found");
        let default_cell = cells.get(2).map_or("", String::as_str);
        for default in arg.get_default_values() {
            let shown = format!("`{}`", default.to_string_lossy());
            assert!(
                default_cell.contains(&shown),
                "docs/configuration.md gives --{long} the default {default_cell:?}, but serve's is {shown}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 14, "found only {checked} settings");
    assert!(
        documented.is_empty(),
        "docs/configuration.md's serve table names settings `serve` does not have: {:?}",
        documented.keys().collect::<Vec<_>>()
    );
}
