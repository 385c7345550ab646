//! "Is my cloud set up?": `skylaunch doctor` (the real binary, with only the environment each
//! test gives it) and `GET /admin/providers`. SkyPilot is the stand-in `sky`, which prints
//! `sky --version` and `sky check` as SkyPilot 0.14.1 does; AWS against moto is in
//! launch_aws.rs, Azure against its stand-in in launch_azure.rs.

mod common;
mod standins;

use common::{Backend, TestApp, ADMIN_TOKEN};
use serde_json::Value;
use standins::doctor::run as doctor;

#[tokio::test]
async fn without_sky_only_local_can_launch_and_each_other_provider_says_why() {
    let out = doctor(&["--sky-bin", "/nonexistent/bin/sky"], &[], true).await;
    assert_eq!(out.code, 1, "nothing but local is ready: {}", out.stderr);
    let local = out.of("local");
    assert_eq!(local["ready"], true, "{local}");
    let sky = out.of("skypilot");
    assert_eq!(sky["ready"], false);
    assert_eq!(sky["error"]["code"], "provider_unavailable", "{sky}");
    assert_eq!(sky["error"]["title"], "SkyPilot is not installed");
    let fixes = sky["error"]["suggestions"].to_string();
    assert!(fixes.contains("pip install"), "{fixes}");
    assert!(fixes.contains("SKYLAUNCH_SKY_BIN"), "{fixes}");
    assert_eq!(sky["checks"][0]["name"], "sky_found");
    // No credentials in this environment: the chain finds none, and nothing is asked of AWS.
    let aws = out.of("aws");
    assert_eq!(aws["error"]["code"], "credentials_invalid", "{aws}");
    assert_eq!(aws["checks"][0]["name"], "credentials");
    assert_eq!(aws["checks"].as_array().unwrap().len(), 1);
    let azure = out.of("azure");
    assert_eq!(azure["ready"], false);
    assert_eq!(azure["error"]["code"], "provider_unavailable");
    assert!(
        azure["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SKYLAUNCH_AZURE_SUBSCRIPTION_ID"),
        "{azure}"
    );
    let ssh = out.of("ssh");
    assert_eq!(ssh["error"]["title"], "No SSH host is registered", "{ssh}");
    assert_eq!(ssh["details"]["hosts_available"], 0);

    // The text report says the same in words, with the fixes.
    let text = doctor(&["--sky-bin", "/nonexistent/bin/sky"], &[], false).await;
    assert_eq!(text.code, 1);
    let report = text.verdicts.as_str().unwrap();
    assert!(
        report.contains("NOT READY  skypilot  SkyPilot is not installed"),
        "{report}"
    );
    assert!(report.contains("[provider_unavailable]"), "{report}");
    assert!(report.contains("-> Install SkyPilot 0.14"), "{report}");
    assert!(report.contains("ready      local"), "{report}");
    assert!(report.contains("only local"), "{report}");
}

#[tokio::test]
async fn a_cloud_sky_check_leaves_disabled_is_named_with_skypilots_own_fix() {
    let Some(python) = common::sky_python() else {
        return;
    };
    let sky = standins::fake_sky(&python, "14-sim-sky-launch-y-L4-spot.txt", &[]);
    let bin = sky.bin.to_str().unwrap();
    let out = doctor(&["--sky-bin", bin], &[], true).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let verdict = out.of("skypilot");
    assert_eq!(verdict["ready"], false, "{verdict}");
    assert_eq!(verdict["details"]["version"], "0.14.1");
    assert_eq!(verdict["error"]["code"], "no_cloud_access", "{verdict}");
    assert_eq!(verdict["error"]["title"], "SkyPilot has no cloud enabled");
    let message = verdict["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("aws: AWS dependencies are not installed"),
        "{message}"
    );
    let fixes = verdict["error"]["suggestions"].to_string();
    assert!(fixes.contains("`aws configure`"), "{fixes}");
    assert!(fixes.contains("`az login`"), "{fixes}");
    // It asked about the clouds skylaunch launches on.
    assert!(sky.calls().iter().any(|c| c[0] == "check" && c.len() > 1));

    // Enabled, the same machine can launch through SkyPilot: exit 0.
    let enabled = standins::fake_sky(
        &python,
        "14-sim-sky-launch-y-L4-spot.txt",
        &[("FAKE_SKY_ENABLED_CLOUDS", "aws")],
    );
    let out = doctor(&["--sky-bin", enabled.bin.to_str().unwrap()], &[], true).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let verdict = out.of("skypilot");
    assert_eq!(verdict["ready"], true, "{verdict}");
    assert_eq!(
        verdict["details"]["enabled_clouds"],
        serde_json::json!(["aws"])
    );
    assert_eq!(verdict["error"], Value::Null);
}

async fn providers(app: &TestApp, query: &str) -> Value {
    let r = app
        .get(&format!("/admin/providers{query}"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

fn verdict<'a>(all: &'a Value, provider: &str) -> &'a Value {
    all["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == provider)
        .unwrap()
}

#[tokio::test]
async fn the_admin_api_answers_at_once_and_checks_the_clouds_in_the_background() {
    let Some(python) = common::sky_python() else {
        return;
    };
    let sky = standins::fake_sky(
        &python,
        "14-sim-sky-launch-y-L4-spot.txt",
        &[("FAKE_SKY_ENABLED_CLOUDS", "gcp")],
    );
    let Some(db) = common::TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let mut config = common::test_config(&db);
    config.sky_bin = sky.bin.to_string_lossy().to_string();
    let (skylaunch, agent) = standins::binaries();
    config.skylaunch_bin = Some(skylaunch);
    config.agent_bin = Some(agent);
    let app = TestApp::start(db, config).await;
    let r = app.get("/admin/providers", None).await;
    assert_eq!(r.status, 401);
    let r = app
        .get("/admin/providers?refresh=soon", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["field"], "refresh");
    let all = providers(&app, "").await;
    assert_eq!(
        all["providers"].as_array().unwrap().len(),
        5,
        "one verdict per provider: {all}"
    );
    assert_eq!(verdict(&all, "local")["ready"], true);
    assert_eq!(verdict(&all, "ssh")["ready"], false);
    // SkyPilot's verdict arrives once `sky check` has run; no request waits for it.
    let sky_verdict = app.provider_verdict("skypilot", false).await;
    assert_eq!(sky_verdict["ready"], true, "{sky_verdict}");
    assert_eq!(
        sky_verdict["details"]["enabled_clouds"],
        serde_json::json!(["gcp"])
    );
    let checks = sky.calls().iter().filter(|c| c[0] == "check").count();
    assert_eq!(checks, 1, "kept, not checked again on every request");
    // A refresh checks again.
    let refreshed = providers(&app, "?refresh=true").await;
    assert_eq!(verdict(&refreshed, "skypilot")["checking"], true);
    app.provider_verdict("skypilot", false).await;
    let checks = sky.calls().iter().filter(|c| c[0] == "check").count();
    assert_eq!(checks, 2);
}
