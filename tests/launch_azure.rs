//! Launch jobs through the native Azure provider: the real Azure SDK for Rust (azure_identity,
//! azure_mgmt_compute, azure_core) against a local stand-in for Azure Resource Manager and Entra
//! ID on 127.0.0.1 (`arm_standin`), which answers as Azure documents: tokens, resource SKUs,
//! long-running VM creates and deletes, ARM error bodies. No VM can boot here, so where a test
//! needs the node to come up it plays the VM with the real agent and the custom data skylaunch
//! sent.
#![cfg(feature = "azure")]

mod arm_standin;
mod common;
mod played_vm;

use std::sync::Once;
use std::time::Duration;

use arm_standin::{
    any_create, creates_in_zone, creates_with_priority, ArmStandIn, Fault, CLIENT_ID,
    CLIENT_SECRET, RESOURCE_GROUP, SUBSCRIPTION, TENANT,
};
use common::{Backend, TestApp, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

const A10: &str = "Standard_NV36ads_A10_v5";
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHQk1vYxJ2Z0dGVzdGtleWZvcnNreWxhdW5jaA op@laptop";

fn subnet(region: &str) -> String {
    format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Network/virtualNetworks/skylaunch-{region}/subnets/nodes")
}

fn credentials_in_env() {
    static ENV: Once = Once::new();
    ENV.call_once(|| {
        // The service principal skylaunch uses, as an operator sets it; the stand-in's Entra ID
        // checks it. Nothing else in this test binary reads these.
        std::env::set_var("AZURE_TENANT_ID", TENANT);
        std::env::set_var("AZURE_CLIENT_ID", CLIENT_ID);
        std::env::set_var("AZURE_CLIENT_SECRET", CLIENT_SECRET);
    });
}

async fn app_with(
    arm: &ArmStandIn,
    registration_timeout: Duration,
    tweak: impl FnOnce(&mut skylaunch::config::ServeConfig),
) -> Option<TestApp> {
    credentials_in_env();
    let db = common::TestDb::new(Backend::Sqlite).await?;
    let mut config = common::test_config(&db);
    // The stand-in VMs run on this machine: their model servers are on loopback.
    config.allow_loopback_endpoints = true;
    config.azure_endpoint_url = Some(arm.url.clone());
    config.azure_authority_host = Some(arm.login_url.clone());
    config.azure_subscription_id = Some(SUBSCRIPTION.into());
    config.azure_resource_group = Some(RESOURCE_GROUP.into());
    config.azure_subnets = ["eastus", "westus2"]
        .iter()
        .map(|r| (r.to_string(), subnet(r)))
        .collect();
    config.azure_ssh_public_key = Some(SSH_KEY.into());
    config.azure_poll_interval = Duration::from_millis(50);
    config.registration_timeout = registration_timeout;
    tweak(&mut config);
    Some(TestApp::start(db, config).await)
}

async fn app_for(arm: &ArmStandIn, registration_timeout: Duration) -> Option<TestApp> {
    app_with(arm, registration_timeout, |_| {}).await
}

fn a10(spot: bool, fallback: bool, regions: &[&str]) -> Value {
    json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "provider": "azure", "gpu": "A10",
        "use_spot": spot, "spot_fallback": if fallback { "on_demand" } else { "none" },
        "regions": regions, "envs": {"QUOTE": "it's $(fine)"}})
}

/// Polls (bounded) until the stand-in holds exactly `want` VMs.
async fn wait_for_vm_count(arm: &ArmStandIn, want: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..200 {
        names = arm.vm_names();
        if names.len() == want {
            return names;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("expected {want} VMs, the stand-in holds {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_launch_creates_a_tagged_spot_vm_that_becomes_a_ready_node() {
    let arm = ArmStandIn::start().await;
    arm.offer("eastus", A10, &["1", "2", "3"]);
    let Some(app) = app_for(&arm, Duration::from_secs(60)).await else {
        return;
    };
    let id = app.launch_id(&a10(true, false, &["eastus"])).await;
    let running = app
        .wait_for_job(&id, |j| j["stage"] == "register" || common::job_finished(j))
        .await;
    assert_eq!(running["status"], "running", "{running:#}");
    let names = arm.vm_names();
    assert_eq!(names.len(), 1, "{names:?}");
    let vm = arm.vm(&names[0]).unwrap();
    let props = &vm["properties"];
    assert_eq!(vm["location"], "eastus");
    assert_eq!(vm["zones"], json!(["1"]));
    assert_eq!(props["provisioningState"], "Succeeded");
    assert_eq!(props["hardwareProfile"]["vmSize"], A10);
    assert_eq!(props["priority"], "Spot");
    assert_eq!(props["evictionPolicy"], "Delete");
    assert_eq!(props["billingProfile"]["maxPrice"], -1.0);
    assert_eq!(vm["tags"]["skylaunch:managed"], "true");
    assert_eq!(vm["tags"]["skylaunch:job-id"], id.as_str());
    assert_eq!(vm["tags"]["skylaunch:node-id"], running["node_id"]);
    let nic = &props["networkProfile"]["networkInterfaceConfigurations"][0]["properties"];
    assert_eq!(nic["deleteOption"], "Delete", "the NIC goes with the VM");
    assert_eq!(
        nic["ipConfigurations"][0]["properties"]["subnet"]["id"],
        subnet("eastus")
    );
    assert_eq!(
        nic["ipConfigurations"][0]["properties"]["publicIPAddressConfiguration"]["properties"]
            ["deleteOption"],
        "Delete"
    );
    assert_eq!(
        props["storageProfile"]["osDisk"]["deleteOption"], "Delete",
        "no disk keeps billing"
    );
    assert_eq!(
        props["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"],
        SSH_KEY
    );
    let attempt = &running["attempts"][0];
    assert_eq!(attempt["cloud"], "azure");
    assert_eq!(attempt["region"], "eastus");
    assert_eq!(attempt["zone"], "1");
    assert_eq!(attempt["instance_type"], A10);
    assert_eq!(attempt["market"], "spot");
    assert_eq!(attempt["outcome"], "succeeded");

    let script = arm.custom_data(&names[0]);
    assert_eq!(
        played_vm::exported(&script, "QUOTE"),
        "it's $(fine)",
        "user values stay values"
    );
    let token = played_vm::exported(&script, "SKYLAUNCH_NODE_TOKEN");
    assert_eq!(token.len(), 64);
    assert!(
        !vm.to_string().contains(&token),
        "the token is in no tag or property Azure shows"
    );
    let logs = app
        .get(&format!("/admin/launch-jobs/{id}/logs"), Some(ADMIN_TOKEN))
        .await
        .body
        .to_string();
    assert!(!logs.contains(&token));
    assert!(
        !logs.contains(
            props["osProfile"]["customData"]
                .as_str()
                .unwrap_or("custom data")
        ),
        "nor the custom data that carries it"
    );
    assert!(
        !logs.contains(CLIENT_SECRET),
        "the Azure secret is never logged"
    );

    let played = played_vm::play_vm(&script, "azure", "eastus", A10);
    let done = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert!(!done.to_string().contains(&token));
    let node_id = done["node_id"].as_str().unwrap();
    let r = app.delete_node(node_id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Deleting the node deletes the VM; Azure finishes a delete it accepted on its own.
    wait_for_vm_count(&arm, 0).await;
    drop(played);
}

/// A launch taken over after a crash, while its VM runs and its agent has not registered yet,
/// waits for that VM instead of creating a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_taken_over_after_a_crash_keeps_its_running_vm() {
    let arm = ArmStandIn::start().await;
    arm.offer("eastus", A10, &["1", "2", "3"]);
    let Some(app) = app_with(&arm, Duration::from_secs(60), |c| {
        c.job_lease = Duration::from_secs(2)
    })
    .await
    else {
        return;
    };
    let id = app.launch_id(&a10(true, false, &["eastus"])).await;
    app.wait_for_job(&id, |j| j["stage"] == "register").await;
    let names = wait_for_vm_count(&arm, 1).await;
    let first_base = app.base.clone();

    let app = app.crash_and_restart().await;
    app.wait_for_log(&id, "takes it over").await;
    // The VM boots now. Its agent reaches the restarted control plane (in production both sit
    // behind one public address).
    let script = arm.custom_data(&names[0]).replace(&first_base, &app.base);
    let played = played_vm::play_vm(&script, "azure", "eastus", A10);
    let done = app.wait_for_followed_launch(&id).await;
    assert_eq!(arm.vm_names(), names, "no second VM");
    let node_id = done["node_id"].as_str().unwrap();
    app.delete_node(node_id).await;
    drop(played);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_errors_move_through_zones_and_regions_and_failed_vms_are_deleted() {
    let arm = ArmStandIn::start().await;
    arm.offer("eastus", A10, &["1", "2", "3"]);
    arm.restrict_zone("eastus", A10, "3");
    arm.offer("westus2", A10, &[]);
    // Zone 1 accepts the create, then its operation fails (how Azure reports allocation).
    arm.fault(Fault::failed_operation(
        "AllocationFailed",
        "Allocation failed. We do not have sufficient capacity for the requested VM size in this region. Read more about improving likelihood of allocation success at http://aka.ms/allocation-guidance",
        creates_in_zone("1"),
    ));
    // Zone 2 refuses at once.
    arm.fault(Fault::answer(
        409,
        "SkuNotAvailable",
        "The requested VM size for resource 'Following SKUs have failed for Capacity Restrictions: Standard_NV36ads_A10_v5' is currently not available in location 'eastus'. Please try another size or deploy to a different location or different zone.",
        creates_in_zone("2"),
    ));
    let Some(app) = app_for(&arm, Duration::from_secs(2)).await else {
        return;
    };
    let id = app
        .launch_id(&a10(false, false, &["eastus", "westus2"]))
        .await;
    let job = app.wait_for_job(&id, common::job_finished).await;
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "zone 3 is restricted: {job:#}");
    assert_eq!(
        (&attempts[0]["zone"], &attempts[0]["outcome"]),
        (&json!("1"), &json!("failed"))
    );
    assert!(attempts[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("AllocationFailed"));
    assert_eq!(attempts[1]["zone"], "2");
    assert!(attempts[1]["reason"]
        .as_str()
        .unwrap()
        .starts_with("SkuNotAvailable"));
    assert_eq!(attempts[2]["region"], "westus2");
    assert_eq!(
        attempts[2]["zone"],
        Value::Null,
        "a size without zones is tried once per region"
    );
    assert_eq!(attempts[2]["outcome"], "succeeded");
    assert_eq!(attempts[2]["market"], "on_demand");
    assert_eq!(
        job["error"]["code"], "registration_timeout",
        "nobody played this VM: {job:#}"
    );
    // Azure finishes a delete it accepted on its own.
    wait_for_vm_count(&arm, 0).await;
    // The VM the failed zone-1 create left behind was deleted before zone 2 was tried.
    let calls = arm.calls();
    let position = |method: &str, suffix: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(method) && c.ends_with(suffix))
            .unwrap_or_else(|| panic!("no {method} …{suffix} in {calls:?}"))
    };
    assert!(
        position("DELETE", "-1") < position("PUT", "-2"),
        "{calls:?}"
    );
}

/// Every ARM error the provider maps, through the real SDK: what it does to the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mapped_arm_error_leads_to_its_outcome() {
    let arm = ArmStandIn::start().await;
    arm.offer("eastus", A10, &["1", "2", "3"]);
    let quota = "Operation could not be completed as it results in exceeding approved standardNVADSA10v5Family Cores quota. Additional details - Deployment Model: Resource Manager, Location: eastus, Current Limit: 36, Current Usage: 36, Additional Required: 36, (Minimum) New Limit Required: 72.";
    let spot_quota = "Operation could not be completed as it results in exceeding approved Low Priority Cores quota. Additional details - Deployment Model: Resource Manager, Location: eastus, Current Limit: 0, Current Usage: 0, Additional Required: 36, (Minimum) New Limit Required: 36.";
    let denied = format!("The client '{CLIENT_ID}' with object id '{CLIENT_ID}' does not have authorization to perform action 'Microsoft.Compute/virtualMachines/write' over scope '/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}' or the scope is invalid. If access was recently granted, please refresh your credentials.");
    // (fault, spot, fallback, expected job error code or "succeeded", attempts made)
    let cases: Vec<(Fault, bool, bool, &str, usize)> = vec![
        (
            Fault::failed_operation("ZonalAllocationFailed", "Allocation failed. We do not have sufficient capacity for the requested VM size in this zone.", any_create()),
            false, false, "capacity_unavailable", 3,
        ),
        (
            Fault::failed_operation("OverconstrainedAllocationRequest", "Allocation failed. VM(s) with the following constraints cannot be allocated, because the condition is too restrictive.", any_create()),
            true, false, "spot_capacity_unavailable", 3,
        ),
        (Fault::answer(409, "OperationNotAllowed", quota, any_create()), false, false, "quota_exceeded", 1),
        (Fault::answer(409, "OperationNotAllowed", spot_quota, any_create()), true, false, "quota_exceeded", 1),
        (
            Fault::answer(409, "OperationNotAllowed", spot_quota, creates_with_priority("Spot")),
            true, true, "succeeded", 2,
        ),
        (Fault::answer(403, "AuthorizationFailed", &denied, any_create()), false, false, "credentials_invalid", 1),
        (
            Fault::answer(401, "InvalidAuthenticationToken", "The access token is invalid.", any_create()),
            false, false, "credentials_invalid", 1,
        ),
        (
            Fault::answer(404, "ResourceGroupNotFound", "Resource group 'skylaunch-test' could not be found.", any_create()),
            false, false, "invalid_request", 1,
        ),
        (
            Fault::answer(429, "TooManyRequests", "The request is being throttled as the limit has been reached for operation type - Write_30Min.", any_create()).times(2),
            false, false, "succeeded", 1,
        ),
        (
            Fault::answer(500, "InternalServerError", "An internal execution error occurred. Please retry later.", any_create()).times(1),
            false, false, "succeeded", 1,
        ),
        (
            Fault::answer(400, "InvalidParameter", "The value of parameter imageReference.sku is invalid.", any_create()),
            false, false, "internal", 1,
        ),
    ];
    for (fault, spot, fallback, expected, attempts) in cases {
        let label = format!("{} (spot {spot}, fallback {fallback})", fault.code);
        arm.clear_faults();
        arm.fault(fault);
        let Some(app) = app_for(&arm, Duration::from_millis(500)).await else {
            return;
        };
        let id = app.launch_id(&a10(spot, fallback, &["eastus"])).await;
        let job = app.wait_for_job(&id, common::job_finished).await;
        let tried = job["attempts"].as_array().unwrap();
        assert_eq!(tried.len(), attempts, "{label}: {job:#}");
        if expected == "succeeded" {
            // Accepted in the end; the VM then never registers (nobody plays it).
            let last = tried.last().unwrap();
            assert_eq!(last["outcome"], "succeeded", "{label}: {job:#}");
            assert_eq!(job["error"]["code"], "registration_timeout", "{label}");
            if spot && fallback {
                assert_eq!(tried[0]["market"], "spot");
                assert_eq!(last["market"], "on_demand", "{label}");
            }
        } else {
            assert_eq!(job["error"]["code"], expected, "{label}: {job:#}");
            if expected != "internal" {
                assert!(
                    !job["error"]["suggestions"].as_array().unwrap().is_empty(),
                    "{label}"
                );
            }
            if expected == "quota_exceeded" {
                let message = job["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains("in use") && message.contains("36 more"),
                    "{label}: the numbers are quoted: {message}"
                );
            }
        }
        assert!(
            wait_for_vm_count(&arm, 0).await.is_empty(),
            "{label}: nothing is left running"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_client_secret_is_credentials_invalid_before_any_vm() {
    let arm = ArmStandIn::start().await;
    arm.offer("eastus", A10, &["1"]);
    arm.refuse_credentials();
    let Some(app) = app_for(&arm, Duration::from_secs(60)).await else {
        return;
    };
    let id = app.launch_id(&a10(false, false, &["eastus"])).await;
    let job = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(job["error"]["code"], "credentials_invalid", "{job:#}");
    assert!(
        job["error"]["raw"]
            .as_str()
            .unwrap()
            .contains("AADSTS7000215"),
        "Entra ID's own words are kept: {job:#}"
    );
    assert!(job["attempts"].as_array().unwrap().is_empty());
    assert!(!job.to_string().contains(CLIENT_SECRET));
    assert!(arm.vm_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_the_create_deletes_the_vm() {
    let arm = ArmStandIn::start().await;
    arm.offer("eastus", A10, &["1"]);
    arm.operations_take(Duration::from_secs(3600));
    let Some(app) = app_for(&arm, Duration::from_secs(60)).await else {
        return;
    };
    let id = app.launch_id(&a10(false, false, &["eastus"])).await;
    wait_for_vm_count(&arm, 1).await;
    arm.operations_take(Duration::from_millis(100));
    let r = app.cancel(&id).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let job = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(job["status"], "cancelled", "{job:#}");
    // The VM being created is deleted.
    wait_for_vm_count(&arm, 0).await;
    assert!(
        arm.calls().iter().any(|c| c.starts_with("DELETE")),
        "{:?}",
        arm.calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_sweeper_deletes_tagged_vms_no_launch_accounts_for_and_notices_vanished_ones() {
    let arm = ArmStandIn::start().await;
    arm.offer("eastus", A10, &["1"]);
    let Some(app) = app_with(&arm, Duration::from_secs(60), |c| {
        c.orphan_sweep_interval = Duration::from_millis(300);
        c.orphan_grace = Duration::from_secs(600);
    })
    .await
    else {
        return;
    };
    // A launch that reaches ready (the test plays its VM): the sweeper must leave it alone.
    let id = app.launch_id(&a10(false, false, &["eastus"])).await;
    let running = app.wait_for_job(&id, |j| j["stage"] == "register").await;
    let live_vm = arm.vm_names().pop().unwrap();
    let played = played_vm::play_vm(&arm.custom_data(&live_vm), "azure", "eastus", A10);
    let ready = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(ready["status"], "succeeded", "{ready:#}");

    // Behind skylaunch's back: an old VM tagged as this installation's that no job knows, a
    // young one (inside the grace period), and two without the tag.
    let installation = app.installation_id();
    assert_eq!(
        arm.vm(&live_vm).unwrap()["tags"]["skylaunch:installation"],
        installation.as_str()
    );
    let managed = |job: &str| json!({"skylaunch:managed": "true", "skylaunch:installation": installation, "skylaunch:job-id": job});
    arm.insert_vm("orphan-old", "eastus", managed("no-such-job"), 3600);
    arm.insert_vm("orphan-young", "eastus", managed("no-such-job-either"), 0);
    arm.insert_vm(
        "someone-elses-vm",
        "eastus",
        json!({"owner": "data-team"}),
        3600,
    );
    arm.insert_vm("untagged-vm", "westus2", json!({}), 3600);
    // A failed placement of the launch that succeeded, left behind: the node does not run on it.
    arm.insert_vm("left-behind", "eastus", managed(&id), 3600);
    // Azure gave no creation time: the grace period runs from when the sweeper first saw it.
    arm.insert_vm("timeless", "eastus", managed("unknown-job"), 3600);
    arm.forget_creation_time("timeless");

    let event = app
        .wait_for_cloud_event("orphan_terminated", "orphan-old")
        .await;
    assert_eq!(event["cloud"], "azure");
    assert_eq!(event["region"], "eastus");
    assert_eq!(event["job_id"], "no-such-job");
    app.wait_for_cloud_event("orphan_terminated", "left-behind")
        .await;
    let left = wait_for_vm_count(&arm, 5).await;
    assert!(!left.contains(&"orphan-old".to_string()), "{left:?}");
    for kept in [
        "orphan-young",
        "timeless",
        "someone-elses-vm",
        "untagged-vm",
        live_vm.as_str(),
    ] {
        assert!(left.contains(&kept.to_string()), "{kept} is kept: {left:?}");
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("skylaunch_orphans_terminated_total{cloud=\"azure\"} 2"),
        "{metrics}"
    );

    // The node's VM is evicted (spot, eviction policy Delete) or deleted in the portal.
    arm.remove_vm(&live_vm);
    let node_id = running["node_id"].as_str().unwrap();
    app.wait_for_vanished(node_id, &live_vm).await;
    drop(played);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_requests_the_configuration_cannot_run_are_refused_before_queueing() {
    // Not configured at all.
    let Some(bare) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let r = bare
        .post(
            "/admin/launch-jobs",
            Some(ADMIN_TOKEN),
            &a10(false, false, &["eastus"]),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["error"]["field"], "provider");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("SKYLAUNCH_AZURE_SUBSCRIPTION_ID"),
        "{message}"
    );

    // Configured, but not for that region, or for that GPU.
    let arm = ArmStandIn::start().await;
    let Some(app) = app_for(&arm, Duration::from_secs(60)).await else {
        return;
    };
    let r = app
        .post(
            "/admin/launch-jobs",
            Some(ADMIN_TOKEN),
            &a10(false, false, &["westus3"]),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["error"]["field"], "regions");
    assert_eq!(r.body["error"]["suggestions"], json!(["eastus", "westus2"]));
    let mut l4 = a10(false, false, &["eastus"]);
    l4["gpu"] = "L4".into();
    let r = app.post("/admin/launch-jobs", Some(ADMIN_TOKEN), &l4).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["error"]["field"], "gpu");
    let jobs = app.get("/admin/launch-jobs", Some(ADMIN_TOKEN)).await.body;
    assert_eq!(jobs["jobs"], json!([]), "nothing was queued");
    assert!(arm.calls().is_empty(), "Azure was not called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_without_an_operation_url_is_followed_through_the_vms_own_state() {
    let arm = ArmStandIn::start().await;
    arm.offer("eastus", A10, &["1", "2"]);
    arm.answer_creates_without_operation();
    arm.fault(Fault::failed_operation(
        "ZonalAllocationFailed",
        "Allocation failed. We do not have sufficient capacity for the requested VM size in this zone.",
        creates_in_zone("1"),
    ));
    let Some(app) = app_for(&arm, Duration::from_secs(60)).await else {
        return;
    };
    let id = app.launch_id(&a10(false, false, &["eastus"])).await;
    let job = app
        .wait_for_job(&id, |j| j["stage"] == "register" || common::job_finished(j))
        .await;
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{job:#}");
    assert!(
        attempts[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("ZonalAllocationFailed"),
        "the instance view names the failure: {job:#}"
    );
    assert_eq!(attempts[1]["outcome"], "succeeded");
    let calls = arm.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("GET") && c.ends_with("-1")),
        "the VM itself was polled: {calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_never_finishes_provisioning_is_a_launch_timeout_and_is_deleted() {
    let arm = ArmStandIn::start().await;
    arm.offer("eastus", A10, &["1"]);
    arm.operations_take(Duration::from_secs(3600));
    let Some(app) = app_with(&arm, Duration::from_secs(60), |c| {
        c.provision_timeout = Duration::from_secs(2);
    })
    .await
    else {
        return;
    };
    let id = app.launch_id(&a10(false, false, &["eastus"])).await;
    wait_for_vm_count(&arm, 1).await;
    // Deletes are quick again; the create stays stuck.
    arm.operations_take(Duration::from_millis(100));
    let job = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(job["error"]["code"], "launch_timeout", "{job:#}");
    wait_for_vm_count(&arm, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_page_on_another_host_gets_no_token_and_judges_nothing() {
    let arm = ArmStandIn::start().await;
    arm.point_next_links_elsewhere();
    let Some(app) = app_with(&arm, Duration::from_secs(60), |c| {
        c.orphan_sweep_interval = Duration::from_millis(200);
        c.orphan_grace = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let managed = json!({"skylaunch:managed": "true", "skylaunch:job-id": "no-such-job"});
    for name in ["orphan-a", "orphan-b", "orphan-c"] {
        arm.insert_vm(name, "eastus", managed.clone(), 3600);
    }
    // Let several sweeps run: each reads the first page, then refuses to follow the link.
    for _ in 0..100 {
        let lists = arm
            .calls()
            .iter()
            .filter(|c| c.starts_with("GET") && c.ends_with("/virtualMachines"))
            .count();
        if lists >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        arm.bearer_tokens_seen_by_login(),
        0,
        "the token stays with ARM"
    );
    assert_eq!(
        wait_for_vm_count(&arm, 3).await.len(),
        3,
        "a partial listing deletes nothing"
    );
    let events = app.get("/admin/cloud-events", Some(ADMIN_TOKEN)).await.body;
    assert_eq!(events["events"], json!([]));
    let metrics = app.metrics().await;
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("skylaunch_orphan_sweep_failures_total{cloud=\"azure\"} "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(failures >= 1, "the blind sweeps are counted: {metrics}");
}

/// Production and staging share one subscription and resource group, each with its own
/// database: each sweeps only what it made, and a VM tagged before installations were is
/// reported, not deleted, until the operator lets the sweeper have those too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_installation_sweeps_only_its_own_vms_and_keeps_untold_ones() {
    let arm = ArmStandIn::start().await;
    arm.offer("eastus", A10, &["1"]);
    let sweep_often = |c: &mut skylaunch::config::ServeConfig| {
        c.orphan_sweep_interval = Duration::from_millis(200);
        c.orphan_grace = Duration::from_secs(1);
    };
    let Some(production) = app_with(&arm, Duration::from_secs(60), sweep_often).await else {
        return;
    };
    let Some(staging) = app_with(&arm, Duration::from_secs(60), sweep_often).await else {
        return;
    };
    let (production_id, staging_id) = (production.installation_id(), staging.installation_id());
    assert_ne!(production_id, staging_id, "each database has its own id");

    // Each has a launch waiting for its agent: a VM the other's database does not know.
    let production_job = production.launch_id(&a10(false, false, &["eastus"])).await;
    production
        .wait_for_job(&production_job, |j| j["stage"] == "register")
        .await;
    let production_vm = wait_for_vm_count(&arm, 1).await.pop().unwrap();
    let staging_job = staging.launch_id(&a10(false, false, &["eastus"])).await;
    staging
        .wait_for_job(&staging_job, |j| j["stage"] == "register")
        .await;
    let staging_vm = wait_for_vm_count(&arm, 2)
        .await
        .into_iter()
        .find(|name| *name != production_vm)
        .unwrap();
    for (vm, installation) in [(&production_vm, &production_id), (&staging_vm, &staging_id)] {
        assert_eq!(
            arm.vm(vm).unwrap()["tags"]["skylaunch:installation"],
            installation.as_str()
        );
    }

    // Behind their backs: an old orphan of each, and one tagged before installations were.
    let orphan_of = |installation: &str| json!({"skylaunch:managed": "true", "skylaunch:installation": installation, "skylaunch:job-id": "no-such-job"});
    arm.insert_vm(
        "production-orphan",
        "eastus",
        orphan_of(&production_id),
        3600,
    );
    arm.insert_vm("staging-orphan", "eastus", orphan_of(&staging_id), 3600);
    arm.insert_vm(
        "legacy-vm",
        "eastus",
        json!({"skylaunch:managed": "true", "skylaunch:job-id": "made-before-installations"}),
        3600,
    );
    production
        .wait_for_cloud_event("orphan_terminated", "production-orphan")
        .await;
    staging
        .wait_for_cloud_event("orphan_terminated", "staging-orphan")
        .await;
    for app in [&production, &staging] {
        let kept = app
            .wait_for_cloud_event("legacy_orphan_kept", "legacy-vm")
            .await;
        assert_eq!(kept["cloud"], "azure");
        assert_eq!(kept["job_id"], "made-before-installations");
    }
    // A second orphan of each, deleted by its own: both swept again after the reports.
    for (app, installation, name) in [
        (&production, &production_id, "production-orphan-2"),
        (&staging, &staging_id, "staging-orphan-2"),
    ] {
        arm.insert_vm(name, "eastus", orphan_of(installation), 3600);
        app.wait_for_cloud_event("orphan_terminated", name).await;
    }
    for (app, others) in [
        (&production, ["staging-orphan", staging_vm.as_str()]),
        (&staging, ["production-orphan", production_vm.as_str()]),
    ] {
        for other in others {
            assert_eq!(
                app.cloud_events_for(other).await,
                Vec::<Value>::new(),
                "the other installation's VMs are not judged"
            );
        }
        assert_eq!(
            app.cloud_events_for("legacy-vm").await.len(),
            1,
            "an untold VM is reported once"
        );
    }
    let mut left = wait_for_vm_count(&arm, 3).await;
    left.sort();
    let mut expected = vec![
        "legacy-vm".to_string(),
        production_vm.clone(),
        staging_vm.clone(),
    ];
    expected.sort();
    assert_eq!(left, expected, "only the orphans were deleted");

    // The operator lets production have the untold ones too.
    let production = production
        .restart_with(|c| c.orphan_sweep_legacy = true)
        .await;
    production
        .wait_for_cloud_event("orphan_terminated", "legacy-vm")
        .await;
    let left = wait_for_vm_count(&arm, 2).await;
    assert!(
        left.contains(&staging_vm) && left.contains(&production_vm),
        "{left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_azure_check_reads_subscription_group_and_subnets_and_names_what_is_wrong() {
    let arm = ArmStandIn::start().await;
    let Some(app) = app_for(&arm, Duration::from_secs(30)).await else {
        return;
    };
    let ready = app.provider_verdict("azure", false).await;
    assert_eq!(ready["ready"], true, "{ready}");
    let checks: Vec<&str> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        [
            "settings",
            "credential",
            "subscription",
            "resource_group",
            "subnet",
            "subnet"
        ]
    );
    assert_eq!(ready["details"]["regions"], json!(["eastus", "westus2"]));

    // A subnet's virtual network is deleted: the check names that subnet.
    arm.delete_vnet("skylaunch-westus2");
    let missing = app.provider_verdict("azure", true).await;
    assert_eq!(missing["ready"], false);
    assert_eq!(missing["error"]["code"], "invalid_request", "{missing}");
    assert_eq!(
        missing["error"]["title"],
        "The configured subnet does not exist"
    );
    assert!(missing["error"]["message"]
        .as_str()
        .unwrap()
        .contains("skylaunch-westus2"));
    assert!(missing["error"]["suggestions"]
        .to_string()
        .contains("SKYLAUNCH_AZURE_SUBNETS"));

    // Entra ID refuses the service principal: a fresh control plane's check says so.
    arm.refuse_credentials();
    let Some(refused) = app_for(&arm, Duration::from_secs(30)).await else {
        return;
    };
    let verdict = refused.provider_verdict("azure", false).await;
    assert_eq!(verdict["error"]["code"], "credentials_invalid", "{verdict}");
    assert_eq!(verdict["checks"][1]["name"], "credential");
}
