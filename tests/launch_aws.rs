//! Launch jobs through the native AWS provider: the real aws-sdk-ec2 against moto's EC2 server on
//! 127.0.0.1. moto never refuses for capacity, quota or credentials, so a small fault-injecting
//! proxy in front of it answers chosen RunInstances calls with EC2's own XML error body. No VM
//! can boot here, so where a test needs the node to come up it plays the VM: it reads the
//! instance's user data back from EC2 and starts the real agent with those values.

mod common;
mod played_vm;

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
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
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
    let r = app
        .delete(&format!("/admin/nodes/{node_id}"), Some(ADMIN_TOKEN))
        .await;
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
    app.delete(&format!("/admin/nodes/{node_id}"), Some(ADMIN_TOKEN))
        .await;
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

    // Behind skylaunch's back: one instance tagged as skylaunch's that no job knows, one untagged.
    let client = ec2(&aws.endpoint).await;
    let ami = client.describe_images().send().await.unwrap().images()[0]
        .image_id()
        .unwrap()
        .to_string();
    let start = |tags: Vec<(&str, &str)>| {
        let client = client.clone();
        let ami = ami.clone();
        let tags: Vec<(String, String)> = tags
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        async move {
            let mut spec = aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance);
            for (k, v) in tags {
                spec = spec.tags(aws_sdk_ec2::types::Tag::builder().key(k).value(v).build());
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
    };
    let orphan = start(vec![
        ("skylaunch:managed", "true"),
        ("skylaunch:job-id", "no-such-job"),
    ])
    .await;
    let bystander = start(vec![("Name", "someone-elses-vm")]).await;

    let state = |id: String| {
        let client = client.clone();
        async move {
            let out = client
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
    };
    let mut orphan_state = String::new();
    for _ in 0..100 {
        orphan_state = state(orphan.clone()).await;
        if orphan_state != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        matches!(orphan_state.as_str(), "shutting-down" | "terminated"),
        "the orphan is terminated: {orphan_state}"
    );
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
        state(bystander.clone()).await,
        "running",
        "an untagged instance is never touched"
    );
    assert_eq!(
        state(instance_id.clone()).await,
        "running",
        "a live node's instance is not an orphan"
    );

    // The node's instance is deleted in the console: the node is marked terminated with the reason.
    client
        .terminate_instances()
        .instance_ids(&instance_id)
        .send()
        .await
        .unwrap();
    let node_id = running["node_id"].as_str().unwrap();
    app.wait_for_vanished(node_id, &instance_id).await;
    drop(vm);
}
