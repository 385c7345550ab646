//! Launch jobs through the native AWS provider: the real aws-sdk-ec2 against moto's EC2 server on
//! 127.0.0.1. moto never refuses for capacity, quota or credentials, so a small fault-injecting
//! proxy in front of it answers chosen RunInstances calls with EC2's own XML error body. No VM
//! can boot here, so where a test needs the node to come up it plays the VM: it reads the
//! instance's user data back from EC2 and starts the real agent with those values.

mod common;
mod played_vm;
mod standins;

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::{Backend, Moto, TestApp, ADMIN_TOKEN};
use serde_json::{json, Value};

/// Which RunInstances calls fail: those whose form body contains `when`, `times` times (or
/// always), with EC2's `code` and `message`.
#[derive(Clone)]
struct Fault {
    when: String,
    code: String,
    message: String,
    times: Option<u32>,
}

type Faults = Arc<Mutex<Vec<Fault>>>;

fn fault(when: &str, code: &str, message: &str) -> Fault {
    Fault {
        when: when.into(),
        code: code.into(),
        message: message.into(),
        times: None,
    }
}

#[derive(Clone)]
struct Proxy {
    moto: String,
    faults: Faults,
    http: reqwest::Client,
}

async fn forward(
    State(proxy): State<Proxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body);
    if text.contains("Action=RunInstances") {
        let hit = {
            let mut faults = proxy.faults.lock().unwrap();
            let found = faults
                .iter_mut()
                .find(|f| text.contains(f.when.as_str()) && f.times != Some(0));
            found.map(|f| {
                if let Some(n) = f.times.as_mut() {
                    *n -= 1;
                }
                (f.code.clone(), f.message.clone())
            })
        };
        if let Some((code, message)) = hit {
            // As EC2 answers: the request id in the body and in the x-amzn-requestid header.
            let request_id = format!("fault-{}", uuid::Uuid::new_v4().simple());
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>"
            );
            return (
                StatusCode::BAD_REQUEST,
                [
                    ("content-type", "text/xml".to_string()),
                    ("x-amzn-requestid", request_id),
                ],
                xml,
            )
                .into_response();
        }
    }
    let mut req = proxy.http.request(
        method,
        format!(
            "{}{}",
            proxy.moto,
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        ),
    );
    for (name, value) in headers.iter() {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    let res = req.body(body).send().await.expect("moto answers");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.unwrap();
    let mut out = (status, bytes).into_response();
    if let Some(ct) = headers.get("content-type") {
        out.headers_mut().insert("content-type", ct.clone());
    }
    out
}

struct Aws {
    _moto: Moto,
    endpoint: String,
    faults: Faults,
}

async fn aws() -> Option<Aws> {
    static ENV: Once = Once::new();
    ENV.call_once(|| {
        // moto accepts any keys; these also keep the SDK from ever asking a real metadata service.
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    });
    let moto = common::moto().await?;
    let faults: Faults = Arc::default();
    let proxy = Proxy {
        moto: moto.url.clone(),
        faults: faults.clone(),
        http: reqwest::Client::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new().fallback(forward).with_state(proxy);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Some(Aws {
        _moto: moto,
        endpoint,
        faults,
    })
}

async fn ec2(endpoint: &str) -> aws_sdk_ec2::Client {
    let config = skylaunch::launch::providers::aws::provider::sdk_loader(Some(endpoint))
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    aws_sdk_ec2::Client::new(&config)
}

async fn app_for(aws: &Aws, registration_timeout: Duration) -> Option<TestApp> {
    app_with(aws, registration_timeout, |_| {}).await
}

async fn app_with(
    aws: &Aws,
    registration_timeout: Duration,
    tweak: impl FnOnce(&mut skylaunch::config::ServeConfig),
) -> Option<TestApp> {
    let db = common::TestDb::new(Backend::Sqlite).await?;
    let mut config = common::test_config(&db);
    // The stand-in VMs run on this machine: their model servers are on loopback.
    config.allow_loopback_endpoints = true;
    tweak(&mut config);
    let client = ec2(&aws.endpoint).await;
    let images = client
        .describe_images()
        .send()
        .await
        .expect("moto lists images");
    config.aws_ami = images
        .images()
        .first()
        .and_then(|i| i.image_id())
        .map(|id| skylaunch::launch::providers::aws::catalog::AmiChoice {
            by_region: [("us-east-1".to_string(), id.to_string())].into(),
            ..Default::default()
        });
    config.aws_endpoint_url = Some(aws.endpoint.clone());
    config.registration_timeout = registration_timeout;
    Some(TestApp::start(db, config).await)
}

fn l4(spot: bool, fallback: bool) -> Value {
    json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "provider": "aws", "gpu": "L4", "use_spot": spot,
        "spot_fallback": if fallback { "on_demand" } else { "none" }, "regions": ["us-east-1"], "envs": {"QUOTE": "it's $(fine)"}})
}

/// Instances launched for a job: (id, state, lifecycle, zone).
async fn instances_of(
    endpoint: &str,
    job_id: &str,
) -> Vec<(String, String, Option<String>, String)> {
    let out = ec2(endpoint)
        .await
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:skylaunch:job-id")
                .values(job_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap().to_string(),
                i.state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
                    .unwrap_or_default(),
                i.instance_lifecycle().map(|l| l.as_str().to_string()),
                i.placement()
                    .and_then(|p| p.availability_zone())
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

async fn user_data(endpoint: &str, instance_id: &str) -> String {
    let out = ec2(endpoint)
        .await
        .describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let encoded = out.user_data().and_then(|u| u.value()).unwrap().to_string();
    String::from_utf8(aws_smithy_types::base64::decode(encoded).unwrap()).unwrap()
}

fn exported(script: &str, key: &str) -> String {
    played_vm::exported(script, key)
}

fn play_vm(script: &str) -> played_vm::PlayedVm {
    played_vm::play_vm(script, "aws", "us-east-1", "g6.xlarge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_launch_starts_a_tagged_spot_instance_that_becomes_a_ready_node() {
    let Some(aws) = aws().await else { return };
    let Some(app) = app_for(&aws, Duration::from_secs(60)).await else {
        return;
    };
    let job = app.launch(&l4(true, false)).await;
    let id = job["id"].as_str().unwrap().to_string();
    let running = app
        .wait_for_job(&id, |j| j["stage"] == "register" || common::job_finished(j))
        .await;
    assert_eq!(running["status"], "running", "{running:#}");
    let instances = instances_of(&aws.endpoint, &id).await;
    assert_eq!(instances.len(), 1, "{instances:?}");
    let (instance_id, state, lifecycle, zone) = &instances[0];
    assert_eq!(state, "running");
    assert_eq!(lifecycle.as_deref(), Some("spot"));
    let attempt = &running["attempts"][0];
    assert_eq!(attempt["cloud"], "aws");
    assert_eq!(attempt["zone"], zone.as_str());
    assert_eq!(attempt["instance_type"], "g6.xlarge");
    assert_eq!(attempt["market"], "spot");
    assert_eq!(attempt["outcome"], "succeeded");

    let described = ec2(&aws.endpoint)
        .await
        .describe_instances()
        .instance_ids(instance_id.as_str())
        .send()
        .await
        .unwrap();
    let group_id = described.reservations()[0].instances()[0].security_groups()[0]
        .group_id()
        .unwrap()
        .to_string();
    let groups = ec2(&aws.endpoint)
        .await
        .describe_security_groups()
        .group_ids(&group_id)
        .send()
        .await
        .unwrap();
    let rules = groups.security_groups()[0].ip_permissions();
    assert_eq!(rules.len(), 1, "only the model port is open: {rules:?}");
    assert_eq!(rules[0].from_port(), Some(8000));
    assert_eq!(
        rules[0].ip_ranges()[0].cidr_ip(),
        Some("127.0.0.1/32"),
        "only to the control plane"
    );

    let script = user_data(&aws.endpoint, instance_id).await;
    assert_eq!(
        exported(&script, "QUOTE"),
        "it's $(fine)",
        "user values stay values"
    );
    assert_eq!(
        exported(&script, "MODEL_ID"),
        "meta-llama/Llama-3.1-8B-Instruct"
    );
    let token = exported(&script, "SKYLAUNCH_NODE_TOKEN");
    assert_eq!(token.len(), 64);
    let tags = ec2(&aws.endpoint)
        .await
        .describe_tags()
        .send()
        .await
        .unwrap();
    assert!(
        !format!("{tags:?}").contains(&token),
        "the token is not in any tag"
    );
    assert!(!app
        .get(&format!("/admin/launch-jobs/{id}/logs"), Some(ADMIN_TOKEN))
        .await
        .body
        .to_string()
        .contains(&token));

    let vm = play_vm(&script);
    let done = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let node_id = done["node_id"].as_str().unwrap();
    let r = app.delete_node(node_id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let after = instances_of(&aws.endpoint, &id).await;
    assert!(
        matches!(after[0].1.as_str(), "shutting-down" | "terminated"),
        "deleting the node terminates the VM: {after:?}"
    );
    drop(vm);
}

/// A launch taken over after a crash, while its instance runs and its agent has not registered
/// yet, waits for that instance instead of starting a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_taken_over_after_a_crash_keeps_its_running_instance() {
    let Some(aws) = aws().await else { return };
    let Some(app) = app_with(&aws, Duration::from_secs(60), |c| {
        c.job_lease = Duration::from_secs(2)
    })
    .await
    else {
        return;
    };
    let job = app.launch(&l4(true, false)).await;
    let id = job["id"].as_str().unwrap().to_string();
    app.wait_for_job(&id, |j| j["stage"] == "register").await;
    let instances = instances_of(&aws.endpoint, &id).await;
    assert_eq!(instances.len(), 1, "{instances:?}");
    let instance_id = instances[0].0.clone();
    let first_base = app.base.clone();

    let app = app.crash_and_restart().await;
    app.wait_for_log(&id, "takes it over").await;
    // The instance boots now. Its agent reaches the restarted control plane (in production both
    // sit behind one public address).
    let script = user_data(&aws.endpoint, &instance_id)
        .await
        .replace(&first_base, &app.base);
    let vm = play_vm(&script);
    let done = app.wait_for_followed_launch(&id).await;
    let after = instances_of(&aws.endpoint, &id).await;
    assert_eq!(after.len(), 1, "no second instance: {after:?}");
    assert_eq!(after[0].1, "running");
    let node_id = done["node_id"].as_str().unwrap();
    app.delete_node(node_id).await;
    drop(vm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_error_moves_to_the_next_zone_and_a_silent_vm_is_terminated() {
    let Some(aws) = aws().await else { return };
    aws.faults.lock().unwrap().push(fault(
        "Placement.AvailabilityZone=us-east-1a",
        "InsufficientInstanceCapacity",
        "We currently do not have sufficient g6.xlarge capacity in the Availability Zone you requested (us-east-1a).",
    ));
    let Some(app) = app_for(&aws, Duration::from_secs(2)).await else {
        return;
    };
    let id = app.launch_id(&l4(false, false)).await;
    let job = app.wait_for_job(&id, common::job_finished).await;
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["zone"], "us-east-1a");
    assert_eq!(attempts[0]["outcome"], "failed");
    assert!(
        attempts[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("InsufficientInstanceCapacity"),
        "{}",
        attempts[0]
    );
    assert_eq!(attempts[1]["zone"], "us-east-1b");
    assert_eq!(attempts[1]["outcome"], "succeeded");
    assert_eq!(attempts[1]["market"], "on_demand");
    assert_eq!(
        job["error"]["code"], "registration_timeout",
        "nobody played this VM: {job:#}"
    );
    let instances = instances_of(&aws.endpoint, &id).await;
    assert_eq!(instances.len(), 1);
    assert!(
        matches!(instances[0].1.as_str(), "shutting-down" | "terminated"),
        "a failed launch never keeps billing: {instances:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_refusal_falls_back_to_on_demand() {
    let Some(aws) = aws().await else { return };
    aws.faults.lock().unwrap().push(fault(
        "InstanceMarketOptions.MarketType=spot",
        "SpotMaxPriceTooLow",
        "Your Spot request price of 0.1 is lower than the minimum required Spot request fulfillment price of 0.35.",
    ));
    let Some(app) = app_for(&aws, Duration::from_secs(2)).await else {
        return;
    };
    let id = app.launch_id(&l4(true, true)).await;
    let job = app.wait_for_job(&id, common::job_finished).await;
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["market"], "spot");
    assert_eq!(attempts[0]["outcome"], "failed");
    let last = attempts.last().unwrap();
    assert_eq!(last["market"], "on_demand");
    assert_eq!(last["outcome"], "succeeded");
    assert_eq!(
        attempts.iter().filter(|a| a["market"] == "spot").count(),
        1,
        "spot is not retried in every zone after a spot refusal"
    );
}

/// Every EC2 error the provider maps, through the real SDK: what it does to the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mapped_ec2_error_leads_to_its_outcome() {
    let Some(aws) = aws().await else { return };
    // (code, times it fails, expected job error code or "succeeded", attempts made; 0 = several)
    let cases: &[(&str, Option<u32>, &str, usize)] = &[
        ("VcpuLimitExceeded", None, "quota_exceeded", 1),
        ("InstanceLimitExceeded", None, "quota_exceeded", 1),
        ("AuthFailure", None, "credentials_invalid", 1),
        ("UnauthorizedOperation", None, "credentials_invalid", 1),
        ("OptInRequired", None, "credentials_invalid", 1),
        ("InsufficientHostCapacity", None, "capacity_unavailable", 0),
        ("Unsupported", None, "capacity_unavailable", 0),
        (
            "MaxSpotInstanceCountExceeded",
            None,
            "spot_capacity_unavailable",
            1,
        ),
        ("RequestLimitExceeded", Some(2), "succeeded", 1),
        ("InternalError", Some(1), "succeeded", 1),
        ("InvalidParameterCombination", None, "internal", 1),
    ];
    for &(code, times, expected, attempts) in cases {
        {
            let mut faults = aws.faults.lock().unwrap();
            faults.clear();
            faults.push(Fault {
                times,
                ..fault("Action=RunInstances", code, &format!("simulated {code}"))
            });
        }
        let Some(app) = app_for(&aws, Duration::from_millis(500)).await else {
            return;
        };
        let spot = code == "MaxSpotInstanceCountExceeded";
        let id = app.launch_id(&l4(spot, false)).await;
        let job = app.wait_for_job(&id, common::job_finished).await;
        let tried = job["attempts"].as_array().unwrap();
        if expected == "succeeded" {
            // Retried until EC2 accepted; the VM then never registers (nobody plays it).
            assert_eq!(tried.len(), 1, "{code}: {job:#}");
            assert_eq!(
                tried[0]["outcome"], "succeeded",
                "{code}: retried until accepted"
            );
            assert_eq!(job["error"]["code"], "registration_timeout", "{code}");
        } else {
            assert_eq!(job["error"]["code"], expected, "{code}: {job:#}");
            if expected != "internal" {
                assert!(
                    !job["error"]["suggestions"].as_array().unwrap().is_empty(),
                    "{code}"
                );
            }
            if attempts == 0 {
                assert!(
                    tried.len() > 1,
                    "{code} moves on to the next zones: {job:#}"
                );
            } else {
                assert_eq!(tried.len(), attempts, "{code}: {job:#}");
            }
            if matches!(
                expected,
                "quota_exceeded" | "credentials_invalid" | "internal"
            ) {
                assert!(
                    job["error"]["raw"].as_str().unwrap().contains("fault-"),
                    "{code}: the AWS request id is kept"
                );
            }
        }
        let live: Vec<_> = instances_of(&aws.endpoint, &id)
            .await
            .into_iter()
            .filter(|i| i.1 == "running" || i.1 == "pending")
            .collect();
        assert!(live.is_empty(), "{code}: nothing is left running: {live:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_sweeper_terminates_unaccounted_instances_and_notices_vanished_ones() {
    let Some(aws) = aws().await else { return };
    let Some(app) = app_with(&aws, Duration::from_secs(60), |c| {
        c.orphan_sweep_interval = Duration::from_millis(500);
        c.orphan_grace = Duration::from_millis(1);
    })
    .await
    else {
        return;
    };
    // A launch that reaches ready (the test plays its VM): the sweeper must leave it alone.
    let id = app.launch_id(&l4(false, false)).await;
    let running = app.wait_for_job(&id, |j| j["stage"] == "register").await;
    let instance_id = instances_of(&aws.endpoint, &id).await[0].0.clone();
    let vm = play_vm(&user_data(&aws.endpoint, &instance_id).await);
    let ready = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(ready["status"], "succeeded", "{ready:#}");

    // Behind skylaunch's back: one instance tagged as this installation's that no job knows,
    // one untagged.
    let installation = app.installation_id();
    let orphan = start_behind_skylaunchs_back(
        &aws.endpoint,
        &[
            ("skylaunch:managed", "true"),
            ("skylaunch:installation", &installation),
            ("skylaunch:job-id", "no-such-job"),
        ],
    )
    .await;
    let bystander =
        start_behind_skylaunchs_back(&aws.endpoint, &[("Name", "someone-elses-vm")]).await;
    wait_for_termination(&aws.endpoint, &orphan).await;
    // The event is recorded after the count, so once it is there the count is too.
    let recorded = app.wait_for_cloud_event("orphan_terminated", &orphan).await;
    assert_eq!(recorded["cloud"], "aws");
    assert_eq!(recorded["job_id"], "no-such-job");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("skylaunch_orphans_terminated_total{cloud=\"aws\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        instance_state(&aws.endpoint, &bystander).await,
        "running",
        "an untagged instance is never touched"
    );
    assert_eq!(
        instance_state(&aws.endpoint, &instance_id).await,
        "running",
        "a live node's instance is not an orphan"
    );

    // The node's instance is deleted in the console: the node is marked terminated with the reason.
    ec2(&aws.endpoint)
        .await
        .terminate_instances()
        .instance_ids(&instance_id)
        .send()
        .await
        .unwrap();
    let node_id = running["node_id"].as_str().unwrap();
    app.wait_for_vanished(node_id, &instance_id).await;
    drop(vm);
}

/// Starts an instance with these tags directly on EC2, as someone else (or an older skylaunch)
/// would; returns its id.
async fn start_behind_skylaunchs_back(endpoint: &str, tags: &[(&str, &str)]) -> String {
    let client = ec2(endpoint).await;
    let ami = client.describe_images().send().await.unwrap().images()[0]
        .image_id()
        .unwrap()
        .to_string();
    let mut spec = aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(aws_sdk_ec2::types::ResourceType::Instance);
    for (k, v) in tags {
        spec = spec.tags(aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build());
    }
    let out = client
        .run_instances()
        .image_id(ami)
        .instance_type(aws_sdk_ec2::types::InstanceType::G6Xlarge)
        .min_count(1)
        .max_count(1)
        .tag_specifications(spec.build())
        .send()
        .await
        .unwrap();
    out.instances()[0].instance_id().unwrap().to_string()
}

/// An instance's state name (`running`, `shutting-down`, `terminated`, …).
async fn instance_state(endpoint: &str, id: &str) -> String {
    let out = ec2(endpoint)
        .await
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    out.reservations()[0].instances()[0]
        .state()
        .unwrap()
        .name()
        .unwrap()
        .as_str()
        .to_string()
}

/// Polls (bounded) until the instance is no longer running, and says it was terminated.
async fn wait_for_termination(endpoint: &str, id: &str) {
    let mut state = String::new();
    for _ in 0..100 {
        state = instance_state(endpoint, id).await;
        if state != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        matches!(state.as_str(), "shutting-down" | "terminated"),
        "{id} is terminated: {state}"
    );
}

/// The value of one tag of an EC2 resource, from a DescribeInstances or DescribeVolumes answer.
fn tag_value<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launched_instance_serves_metadata_only_over_imdsv2_to_the_vm_itself() {
    let Some(aws) = aws().await else { return };
    let Some(app) = app_for(&aws, Duration::from_secs(60)).await else {
        return;
    };
    let id = app.launch_id(&l4(false, false)).await;
    app.wait_for_job(&id, |j| j["stage"] == "register").await;
    let instance_id = instances_of(&aws.endpoint, &id).await[0].0.clone();
    let described = ec2(&aws.endpoint)
        .await
        .describe_instances()
        .instance_ids(&instance_id)
        .send()
        .await
        .unwrap();
    // moto echoes the options RunInstances asked for (EC2 itself reports them the same way).
    let options = described.reservations()[0].instances()[0]
        .metadata_options()
        .expect("DescribeInstances reports the metadata options");
    assert_eq!(
        options.http_tokens(),
        Some(&aws_sdk_ec2::types::HttpTokensState::Required),
        "IMDSv1 is refused: {options:?}"
    );
    assert_eq!(
        options.http_put_response_hop_limit(),
        Some(1),
        "a token cannot cross a second hop: {options:?}"
    );
    assert_eq!(
        options.http_endpoint(),
        Some(&aws_sdk_ec2::types::InstanceMetadataEndpointState::Enabled),
        "the agent still reads its placement: {options:?}"
    );
}

/// Production and staging share one AWS account, each with its own database: each sweeps only
/// what it made, and an instance tagged before installations were is reported, not terminated,
/// until the operator lets the sweeper have those too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_installation_sweeps_only_its_own_instances_and_keeps_untold_ones() {
    let Some(aws) = aws().await else { return };
    let sweep_often = |c: &mut skylaunch::config::ServeConfig| {
        c.orphan_sweep_interval = Duration::from_millis(300);
        c.orphan_grace = Duration::from_millis(1);
    };
    let Some(production) = app_with(&aws, Duration::from_secs(60), sweep_often).await else {
        return;
    };
    let Some(staging) = app_with(&aws, Duration::from_secs(60), sweep_often).await else {
        return;
    };
    let (production_id, staging_id) = (production.installation_id(), staging.installation_id());
    assert_ne!(production_id, staging_id, "each database has its own id");

    // Each has a launch waiting for its agent: an instance the other's database does not know.
    let production_job = production.launch_id(&l4(false, false)).await;
    production
        .wait_for_job(&production_job, |j| j["stage"] == "register")
        .await;
    let staging_job = staging.launch_id(&l4(false, false)).await;
    staging
        .wait_for_job(&staging_job, |j| j["stage"] == "register")
        .await;
    let production_vm = instances_of(&aws.endpoint, &production_job).await[0]
        .0
        .clone();
    let staging_vm = instances_of(&aws.endpoint, &staging_job).await[0].0.clone();
    let client = ec2(&aws.endpoint).await;
    let described = client
        .describe_instances()
        .instance_ids(&production_vm)
        .send()
        .await
        .unwrap();
    assert_eq!(
        tag_value(
            described.reservations()[0].instances()[0].tags(),
            "skylaunch:installation"
        ),
        Some(production_id.as_str())
    );
    let volumes = client
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(&production_vm)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(!volumes.volumes().is_empty(), "{volumes:?}");
    for volume in volumes.volumes() {
        assert_eq!(
            tag_value(volume.tags(), "skylaunch:installation"),
            Some(production_id.as_str()),
            "the volumes carry the tags too: {volume:?}"
        );
    }

    // Behind their backs: an orphan of each, and one tagged before installations were.
    let orphan_of = |installation: &str| {
        let endpoint = aws.endpoint.clone();
        let installation = installation.to_string();
        async move {
            start_behind_skylaunchs_back(
                &endpoint,
                &[
                    ("skylaunch:managed", "true"),
                    ("skylaunch:installation", &installation),
                    ("skylaunch:job-id", "no-such-job"),
                ],
            )
            .await
        }
    };
    let production_orphan = orphan_of(&production_id).await;
    let staging_orphan = orphan_of(&staging_id).await;
    let legacy = start_behind_skylaunchs_back(
        &aws.endpoint,
        &[
            ("skylaunch:managed", "true"),
            ("skylaunch:job-id", "made-before-installations"),
        ],
    )
    .await;

    production
        .wait_for_cloud_event("orphan_terminated", &production_orphan)
        .await;
    staging
        .wait_for_cloud_event("orphan_terminated", &staging_orphan)
        .await;
    wait_for_termination(&aws.endpoint, &production_orphan).await;
    wait_for_termination(&aws.endpoint, &staging_orphan).await;
    for app in [&production, &staging] {
        let kept = app
            .wait_for_cloud_event("legacy_orphan_kept", &legacy)
            .await;
        assert_eq!(kept["cloud"], "aws");
        assert!(
            kept["message"]
                .as_str()
                .unwrap()
                .contains("SKYLAUNCH_ORPHAN_SWEEP_LEGACY"),
            "{kept:#}"
        );
    }
    // A second orphan of each, terminated by its own: both swept again after the reports.
    for (app, installation) in [(&production, &production_id), (&staging, &staging_id)] {
        let orphan = orphan_of(installation).await;
        app.wait_for_cloud_event("orphan_terminated", &orphan).await;
    }
    for (app, others) in [
        (&production, [&staging_orphan, &staging_vm]),
        (&staging, [&production_orphan, &production_vm]),
    ] {
        for other in others {
            assert_eq!(
                app.cloud_events_for(other).await,
                Vec::<Value>::new(),
                "the other installation's instances are not judged"
            );
        }
        assert_eq!(
            app.cloud_events_for(&legacy).await.len(),
            1,
            "an untold instance is reported once"
        );
    }
    for id in [&production_vm, &staging_vm, &legacy] {
        assert_eq!(
            instance_state(&aws.endpoint, id).await,
            "running",
            "{id} is left running"
        );
    }
    let metrics = production.metrics().await;
    assert!(
        metrics.contains("skylaunch_orphans_terminated_total{cloud=\"aws\"} 2"),
        "{metrics}"
    );

    // The operator lets production have the untold ones too.
    let production = production
        .restart_with(|c| c.orphan_sweep_legacy = true)
        .await;
    production
        .wait_for_cloud_event("orphan_terminated", &legacy)
        .await;
    wait_for_termination(&aws.endpoint, &legacy).await;
    assert_eq!(
        instance_state(&aws.endpoint, &staging_vm).await,
        "running",
        "still never the other installation's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_aws_ready_by_a_dry_run_and_names_the_missing_permission_when_denied() {
    let Some(aws) = aws().await else { return };
    let images = ec2(&aws.endpoint)
        .await
        .describe_images()
        .send()
        .await
        .unwrap();
    let ami = images.images()[0].image_id().unwrap().to_string();
    let ami_choice = format!("us-east-1={ami}");
    let envs = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("SKYLAUNCH_AWS_ENDPOINT_URL", aws.endpoint.as_str()),
        ("SKYLAUNCH_AWS_AMI", ami_choice.as_str()),
        ("SKYLAUNCH_SKY_BIN", "/nonexistent/bin/sky"),
    ];
    let out = standins::doctor::run(&[], &envs, true).await;
    assert_eq!(out.code, 0, "AWS can launch: {}", out.stderr);
    let verdict = out.of("aws");
    assert_eq!(verdict["ready"], true, "{verdict}");
    assert_eq!(verdict["details"]["region"], "us-east-1");
    let checks: Vec<(&str, bool)> = verdict["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["ok"] == true))
        .collect();
    assert_eq!(
        checks,
        [
            ("credentials", true),
            ("region", true),
            ("image", true),
            ("dry_run", true)
        ]
    );
    assert!(
        verdict["checks"][3]["detail"]
            .as_str()
            .unwrap()
            .contains("would be allowed"),
        "{verdict}"
    );
    // Nothing was started by the check.
    let running = ec2(&aws.endpoint)
        .await
        .describe_instances()
        .send()
        .await
        .unwrap();
    assert!(
        running.reservations().is_empty(),
        "a dry run starts nothing"
    );

    // The account loses ec2:RunInstances: EC2 answers the dry run UnauthorizedOperation.
    aws.faults.lock().unwrap().push(fault(
        "DryRun=true",
        "UnauthorizedOperation",
        "You are not authorized to perform this operation.",
    ));
    let out = standins::doctor::run(&[], &envs, true).await;
    assert_eq!(out.code, 1, "only local can launch now: {}", out.stderr);
    let verdict = out.of("aws");
    assert_eq!(verdict["ready"], false);
    assert_eq!(verdict["error"]["code"], "credentials_invalid", "{verdict}");
    assert!(verdict["error"]["message"]
        .as_str()
        .unwrap()
        .contains("UnauthorizedOperation"));
    assert!(
        verdict["error"]["suggestions"]
            .to_string()
            .contains("ec2:RunInstances"),
        "{verdict}"
    );
    assert_eq!(verdict["checks"][3]["name"], "dry_run");
    assert_eq!(verdict["checks"][3]["ok"], false);

    // The admin API gives the same verdicts, and a refresh sees the permission come back.
    let app = app_for(&aws, Duration::from_secs(30)).await.unwrap();
    let denied = app.provider_verdict("aws", false).await;
    assert_eq!(denied["error"]["code"], "credentials_invalid", "{denied}");
    aws.faults.lock().unwrap().clear();
    let allowed = app.provider_verdict("aws", true).await;
    assert_eq!(allowed["ready"], true, "{allowed}");
}
