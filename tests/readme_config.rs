//! The README's configuration table names every `serve` setting: its flag and its env var.

use clap::CommandFactory;

#[derive(clap::Parser)]
struct Wrapper {
    #[command(flatten)]
    config: skylaunch::config::ServeConfig,
}

#[test]
fn readme_configuration_table_lists_every_serve_setting() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
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
            readme.contains(&row),
            "README configuration table lacks the row starting {row}"
        );
        checked += 1;
    }
    assert!(checked >= 14, "found only {checked} settings");
}
