//! The systemd unit in deploy/systemd/ is one systemd accepts, and its sandboxing keeps the
//! exposure `systemd-analyze security` reports low. Checked offline with the real
//! `systemd-analyze` (Debian's systemd); under CI=true a missing one fails the test.

mod common;

use std::process::Command;

/// The unit, its `ExecStart` pointed at the built binary (the unit names the installed path).
fn unit_in(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/systemd/skylaunch.service"
    ))
    .unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/skylaunch serve"));
    let text = text.replace(
        "ExecStart=/usr/local/bin/skylaunch serve",
        &format!("ExecStart={} serve", env!("CARGO_BIN_EXE_skylaunch")),
    );
    let path = dir.join("skylaunch.service");
    std::fs::write(&path, text).unwrap();
    path
}

fn analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    if found {
        return Some("systemd-analyze");
    }
    assert!(
        !common::in_ci(),
        "systemd-analyze is missing (Debian: apt-get install systemd)"
    );
    eprintln!("!!! SKIPPED: systemd-analyze is missing (Debian: apt-get install systemd)");
    None
}

#[test]
fn systemd_accepts_the_unit_and_its_exposure_is_low() {
    let Some(analyze) = analyze() else { return };
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_in(dir.path());
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    // Overall exposure on systemd's 0 (locked down) to 10 scale: at most 4 ("OK").
    let out = Command::new(analyze)
        .args(["security", "--offline=true", "--threshold=40", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("Overall exposure level"), "{said}");
}
