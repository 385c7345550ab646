//! A local stand-in for Azure Resource Manager and Microsoft Entra ID's token endpoint, on
//! 127.0.0.1, answering the REST calls the Azure SDK makes for native Azure launches, shaped as
//! Azure documents them:
//! - `POST /{tenant}/oauth2/v2.0/token`: client-credentials tokens (`invalid_client` when told
//!   to refuse);
//! - `GET .../providers/Microsoft.Compute/skus`: resource SKUs with zones and restrictions;
//! - `PUT/GET/DELETE .../virtualMachines/{name}` and the resource group's VM list (paged with
//!   `nextLink`), creates and deletes being long-running operations: 201/202 with an
//!   `Azure-AsyncOperation` URL that answers `InProgress`, then `Succeeded` or `Failed` with the
//!   ARM error;
//! - ARM error bodies `{"error": {"code", "message"}}` for unknown subscriptions and resource
//!   groups, bad tokens, and injected faults.
//!
//! No VM boots: a created VM is a record. Tests read what skylaunch asked for (custom data
//! included, which real Azure never returns) from the stand-in's state.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub const SUBSCRIPTION: &str = "6b1f2a3c-5d4e-4f60-8a7b-0123456789ab";
pub const RESOURCE_GROUP: &str = "skylaunch-test";
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "3d3e1f9a-7b2c-4e5d-9f80-112233445566";
pub const CLIENT_SECRET: &str = "test-client-secret";

/// One request as a fault sees it.
pub struct Call<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a Value,
}

/// An injected failure: for matching calls, `times` times (or always).
pub struct Fault {
    pub matches: Box<dyn Fn(&Call) -> bool + Send + Sync>,
    /// The HTTP status of a synchronous error answer.
    pub status: u16,
    pub code: String,
    pub message: String,
    /// Accept the create, then end its long-running operation `Failed` with this error (how
    /// Azure reports allocation failures), leaving a failed VM behind.
    pub in_operation: bool,
    pub times: Option<u32>,
}

impl Fault {
    /// A synchronous ARM error answer to matching calls.
    pub fn answer(
        status: u16,
        code: &str,
        message: &str,
        matches: impl Fn(&Call) -> bool + Send + Sync + 'static,
    ) -> Fault {
        Fault {
            matches: Box::new(matches),
            status,
            code: code.into(),
            message: message.into(),
            in_operation: false,
            times: None,
        }
    }

    /// A create accepted, whose operation then fails with `code`.
    pub fn failed_operation(
        code: &str,
        message: &str,
        matches: impl Fn(&Call) -> bool + Send + Sync + 'static,
    ) -> Fault {
        Fault {
            in_operation: true,
            ..Fault::answer(200, code, message, matches)
        }
    }

    pub fn times(mut self, n: u32) -> Fault {
        self.times = Some(n);
        self
    }
}

/// A VM create in `zone`.
pub fn creates_in_zone(zone: &'static str) -> impl Fn(&Call) -> bool + Send + Sync {
    move |c: &Call| c.method == "PUT" && c.body["zones"] == json!([zone])
}

/// A VM create of the given priority (`Spot` or `Regular`).
pub fn creates_with_priority(priority: &'static str) -> impl Fn(&Call) -> bool + Send + Sync {
    move |c: &Call| c.method == "PUT" && c.body["properties"]["priority"] == priority
}

pub fn any_create() -> impl Fn(&Call) -> bool + Send + Sync {
    |c: &Call| c.method == "PUT"
}

struct Vm {
    doc: Value,
    custom_data: String,
}

enum OperationKind {
    Create,
    Update,
    Delete,
}

struct Operation {
    vm: String,
    kind: OperationKind,
    /// When Azure finishes it, polled or not.
    done_at: std::time::Instant,
    error: Option<(String, String)>,
    settled: bool,
}

#[derive(Default)]
struct ArmState {
    vms: BTreeMap<String, Vm>,
    operations: HashMap<String, Operation>,
    faults: Vec<Fault>,
    /// SKU documents by (region, size).
    skus: BTreeMap<(String, String), Value>,
    tokens: HashSet<String>,
    refuse_credentials: bool,
    /// How long a new operation runs.
    operation_time: std::time::Duration,
    /// `METHOD path` of every ARM call, in order.
    calls: Vec<String>,
    /// Creates answer without `Azure-AsyncOperation` (clients poll the VM itself).
    creates_without_operation: bool,
    /// VM lists point their `nextLink` at the Entra ID host.
    next_link_elsewhere: bool,
    /// Requests the Entra ID host received carrying a bearer token.
    bearer_tokens_seen_by_login: u32,
    /// Virtual networks deleted (their subnets are not found).
    deleted_vnets: HashSet<String>,
}

#[derive(Clone)]
pub struct ArmStandIn {
    state: Arc<Mutex<ArmState>>,
    /// Azure Resource Manager.
    pub url: String,
    /// Microsoft Entra ID (the token authority), on a host of its own as in Azure.
    pub login_url: String,
}

impl ArmStandIn {
    pub async fn start() -> ArmStandIn {
        let bind = || async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            (listener, url)
        };
        let (arm_listener, url) = bind().await;
        let (login_listener, login_url) = bind().await;
        let arm = ArmStandIn {
            state: Arc::new(Mutex::new(ArmState {
                operation_time: std::time::Duration::from_millis(100),
                ..ArmState::default()
            })),
            url,
            login_url,
        };
        let router = axum::Router::new().fallback(handle).with_state(arm.clone());
        tokio::spawn(async move { axum::serve(arm_listener, router).await.expect("serve") });
        let login = axum::Router::new().fallback(login).with_state(arm.clone());
        tokio::spawn(async move { axum::serve(login_listener, login).await.expect("serve") });
        arm
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ArmState> {
        self.state.lock().expect("stand-in lock")
    }

    /// Offers `size` in `region` in these zones (none: only without a zone).
    pub fn offer(&self, region: &str, size: &str, zones: &[&str]) {
        let doc = json!({
            "resourceType": "virtualMachines",
            "name": size,
            "tier": "Standard",
            "size": size.trim_start_matches("Standard_"),
            "family": "standardNVADSA10v5Family",
            "locations": [region],
            "locationInfo": [{"location": region, "zones": zones, "zoneDetails": []}],
            "capabilities": [{"name": "GPUs", "value": "1"}],
            "restrictions": []
        });
        self.lock()
            .skus
            .insert((region.to_string(), size.to_string()), doc);
    }

    /// The subscription may not use `size` in `zone` of `region`.
    pub fn restrict_zone(&self, region: &str, size: &str, zone: &str) {
        let mut state = self.lock();
        let doc = state
            .skus
            .get_mut(&(region.to_string(), size.to_string()))
            .expect("offered first");
        doc["restrictions"]
            .as_array_mut()
            .expect("array")
            .push(json!({
                "type": "Zone", "values": [region],
                "restrictionInfo": {"locations": [region], "zones": [zone]},
                "reasonCode": "NotAvailableForSubscription"
            }));
    }

    pub fn fault(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Creates answer without an `Azure-AsyncOperation` header from now on.
    pub fn answer_creates_without_operation(&self) {
        self.lock().creates_without_operation = true;
    }

    /// VM lists point their `nextLink` at the Entra ID host from now on.
    pub fn point_next_links_elsewhere(&self) {
        self.lock().next_link_elsewhere = true;
    }

    /// How many requests carrying a bearer token the Entra ID host received.
    pub fn bearer_tokens_seen_by_login(&self) -> u32 {
        self.lock().bearer_tokens_seen_by_login
    }

    /// Entra ID answers `invalid_client` to every token request from now on.
    /// Deletes a virtual network of the resource group: its subnets are not found any more
    /// (every other one the tests name, `<vnet>/subnets/nodes`, exists).
    pub fn delete_vnet(&self, name: &str) {
        self.state
            .lock()
            .unwrap()
            .deleted_vnets
            .insert(name.to_string());
    }

    pub fn refuse_credentials(&self) {
        self.lock().refuse_credentials = true;
    }

    /// New operations (creates, deletes) take this long.
    pub fn operations_take(&self, time: std::time::Duration) {
        self.lock().operation_time = time;
    }

    /// A VM as ARM shows it (custom data removed, as Azure does).
    pub fn vm(&self, name: &str) -> Option<Value> {
        let mut state = self.lock();
        settle(&mut state);
        state.vms.get(name).map(|v| v.doc.clone())
    }

    pub fn vm_names(&self) -> Vec<String> {
        let mut state = self.lock();
        settle(&mut state);
        state.vms.keys().cloned().collect()
    }

    /// The bootstrap script a VM was created with, decoded.
    pub fn custom_data(&self, name: &str) -> String {
        let state = self.lock();
        let encoded = &state.vms.get(name).expect("vm exists").custom_data;
        let bytes = aws_smithy_types::base64::decode(encoded).expect("custom data is base64");
        String::from_utf8(bytes).expect("utf-8 script")
    }

    /// Every `METHOD path` ARM answered, in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Creates a running VM behind skylaunch's back, `age_s` seconds old.
    pub fn insert_vm(&self, name: &str, region: &str, tags: Value, age_s: i64) {
        let created = skylaunch::clock::now_ms() - age_s * 1000;
        let doc = json!({
            "name": name,
            "id": vm_id(name),
            "type": "Microsoft.Compute/virtualMachines",
            "location": region,
            "tags": tags,
            "properties": {
                "hardwareProfile": {"vmSize": "Standard_NV36ads_A10_v5"},
                "provisioningState": "Succeeded",
                "vmId": uuid::Uuid::new_v4().to_string(),
                "timeCreated": skylaunch::clock::rfc3339(created)
            }
        });
        self.lock().vms.insert(
            name.to_string(),
            Vm {
                doc,
                custom_data: String::new(),
            },
        );
    }

    /// Makes a VM's document lack `timeCreated` (older VMs have none).
    pub fn forget_creation_time(&self, name: &str) {
        if let Some(vm) = self.lock().vms.get_mut(name) {
            if let Some(props) = vm.doc["properties"].as_object_mut() {
                props.remove("timeCreated");
            }
        }
    }

    /// Deletes a VM behind skylaunch's back (a spot eviction, or someone in the portal).
    pub fn remove_vm(&self, name: &str) {
        self.lock().vms.remove(name);
    }
}

fn vm_id(name: &str) -> String {
    format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Compute/virtualMachines/{name}")
}

fn arm_error(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).expect("status");
    let mut response = (
        status,
        [("content-type", "application/json; charset=utf-8")],
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert("retry-after", "0".parse().expect("header"));
    }
    response
}

fn json_response(status: StatusCode, body: Value, headers: &[(&str, String)]) -> Response {
    let mut response = (
        status,
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response();
    for (name, value) in headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    response
}

async fn handle(
    State(arm): State<ArmStandIn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let mut state = arm.lock();
    settle(&mut state);
    state.calls.push(format!("{method} {path}"));
    if !bearer.is_some_and(|t| state.tokens.contains(&t)) {
        return arm_error(
            401,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        );
    }
    if !query.contains("api-version=") {
        return arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return arm_error(
                    400,
                    "InvalidRequestContent",
                    &format!("The request content was invalid and could not be deserialized: {e}"),
                )
            }
        }
    };
    let call = Call {
        method: method.as_str(),
        path: &path,
        body: &body,
    };
    let fault = state
        .faults
        .iter_mut()
        .find(|f| f.times != Some(0) && (f.matches)(&call))
        .map(|f| {
            if let Some(n) = f.times.as_mut() {
                *n -= 1;
            }
            (f.status, f.code.clone(), f.message.clone(), f.in_operation)
        });
    if let Some((status, code, message, false)) = &fault {
        return arm_error(*status, code, message);
    }
    let failing = fault.map(|(_, code, message, _)| (code, message));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let is = |i: usize, s: &str| segments.get(i).is_some_and(|x| x.eq_ignore_ascii_case(s));
    if !is(0, "subscriptions") {
        return arm_error(
            404,
            "InvalidResourceType",
            "The resource type could not be found.",
        );
    }
    if segments.get(1) != Some(&SUBSCRIPTION) {
        return arm_error(
            404,
            "SubscriptionNotFound",
            &format!(
                "The subscription '{}' could not be found.",
                segments.get(1).unwrap_or(&"")
            ),
        );
    }
    let base = arm.url.clone();
    match (method.as_str(), segments.len()) {
        ("GET", 5) if is(2, "providers") && is(3, "Microsoft.Compute") && is(4, "skus") => {
            let location = query_value(&query, "$filter")
                .and_then(|f| f.split('\'').nth(1).map(str::to_string))
                .unwrap_or_default();
            let value: Vec<Value> = state
                .skus
                .iter()
                .filter(|((region, _), _)| location.is_empty() || *region == location)
                .map(|(_, doc)| doc.clone())
                .collect();
            json_response(StatusCode::OK, json!({ "value": value }), &[])
        }
        ("GET", 8) if is(2, "providers") && is(4, "locations") && is(6, "operations") => {
            operation_status(&mut state, segments[7])
        }
        ("GET", 2) => json_response(
            StatusCode::OK,
            json!({"id": format!("/subscriptions/{SUBSCRIPTION}"), "subscriptionId": SUBSCRIPTION,
                   "displayName": "skylaunch tests", "state": "Enabled"}),
            &[],
        ),
        ("GET", 4) | ("GET", 10) if is(2, "resourceGroups") => {
            if !segments[3].eq_ignore_ascii_case(RESOURCE_GROUP) {
                return arm_error(
                    404,
                    "ResourceGroupNotFound",
                    &format!("Resource group '{}' could not be found.", segments[3]),
                );
            }
            if segments.len() == 4 {
                return json_response(
                    StatusCode::OK,
                    json!({"id": path, "name": RESOURCE_GROUP, "location": "eastus",
                           "properties": {"provisioningState": "Succeeded"}}),
                    &[],
                );
            }
            let subnet = is(4, "providers")
                && is(5, "Microsoft.Network")
                && is(6, "virtualNetworks")
                && is(8, "subnets")
                && segments[9] == "nodes"
                && !state.deleted_vnets.contains(segments[7]);
            if !subnet {
                return arm_error(404, "NotFound", &format!("Resource {path} not found."));
            }
            json_response(
                StatusCode::OK,
                json!({"id": path, "name": "nodes", "properties": {"addressPrefix": "10.0.0.0/24", "provisioningState": "Succeeded"}}),
                &[],
            )
        }
        (_, n) if (n == 7 || n == 8) && is(2, "resourceGroups") => {
            if !segments[3].eq_ignore_ascii_case(RESOURCE_GROUP) {
                return arm_error(
                    404,
                    "ResourceGroupNotFound",
                    &format!("Resource group '{}' could not be found.", segments[3]),
                );
            }
            if !(is(4, "providers") && is(5, "Microsoft.Compute") && is(6, "virtualMachines")) {
                return arm_error(
                    404,
                    "InvalidResourceType",
                    "The resource type could not be found.",
                );
            }
            match (method.as_str(), segments.get(7)) {
                ("GET", None) => list_vms(&state, &base, &arm.login_url, &query),
                ("PUT", Some(name)) => put_vm(&mut state, &base, name, &body, failing),
                ("GET", Some(name)) => match state.vms.get(*name) {
                    Some(vm) => {
                        let mut doc = vm.doc.clone();
                        if query.contains("instanceView") {
                            doc["properties"]["instanceView"] = instance_view(&state, name, &doc);
                        }
                        json_response(StatusCode::OK, doc, &[])
                    }
                    None => not_found(name),
                },
                ("DELETE", Some(name)) => delete_vm(&mut state, &base, name),
                _ => arm_error(405, "MethodNotAllowed", "The method is not allowed."),
            }
        }
        _ => arm_error(
            404,
            "InvalidResourceType",
            "The resource type could not be found.",
        ),
    }
}

fn not_found(name: &str) -> Response {
    arm_error(
        404,
        "ResourceNotFound",
        &format!("The Resource 'Microsoft.Compute/virtualMachines/{name}' under resource group '{RESOURCE_GROUP}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"),
    )
}

fn query_value(query: &str, key: &str) -> Option<String> {
    reqwest::Url::parse(&format!("http://q/?{query}"))
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.to_string())
}

/// Microsoft Entra ID: only the token endpoint.
async fn login(
    State(arm): State<ArmStandIn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if headers.contains_key("authorization") {
        arm.lock().bearer_tokens_seen_by_login += 1;
    }
    if method == Method::POST && uri.path().ends_with("/oauth2/v2.0/token") {
        return token(&arm, uri.path(), &body);
    }
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": "invalid_request", "error_description": "AADSTS900561: The endpoint only accepts POST requests."}),
        &[],
    )
}

fn token(arm: &ArmStandIn, path: &str, body: &[u8]) -> Response {
    let form = String::from_utf8_lossy(body).to_string();
    let field = |k: &str| query_value(&form, k).unwrap_or_default();
    let mut state = arm.lock();
    let tenant_ok = path.trim_start_matches('/').starts_with(TENANT);
    let valid = tenant_ok
        && !state.refuse_credentials
        && field("grant_type") == "client_credentials"
        && field("client_id") == CLIENT_ID
        && field("client_secret") == CLIENT_SECRET
        && field("scope") == format!("{}/.default", arm.url);
    if !valid {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({
                "error": "invalid_client",
                "error_description": format!("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{CLIENT_ID}'. Trace ID: 0000 Correlation ID: 0000 Timestamp: 2026-11-24 00:00:00Z"),
                "error_codes": [7000215],
                "timestamp": "2026-11-24 00:00:00Z",
                "trace_id": uuid::Uuid::new_v4().to_string(),
                "correlation_id": uuid::Uuid::new_v4().to_string()
            }),
            &[],
        );
    }
    let access_token = format!("eyJ0eXAi.{}", uuid::Uuid::new_v4().simple());
    state.tokens.insert(access_token.clone());
    json_response(
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": access_token}),
        &[],
    )
}

fn operation_url(base: &str, region: &str, id: &str) -> String {
    format!("{base}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Compute/locations/{region}/operations/{id}?p={}&api-version=2024-07-01", uuid::Uuid::new_v4())
}

fn new_operation(
    state: &mut ArmState,
    vm: &str,
    kind: OperationKind,
    error: Option<(String, String)>,
) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let done_at = std::time::Instant::now() + state.operation_time;
    state.operations.insert(
        id.clone(),
        Operation {
            vm: vm.to_string(),
            kind,
            done_at,
            error,
            settled: false,
        },
    );
    id
}

/// Applies every operation whose time has come, as Azure would whether anyone polls or not.
fn settle(state: &mut ArmState) {
    let now = std::time::Instant::now();
    let due: Vec<(String, bool, bool)> = state
        .operations
        .iter()
        .filter(|(_, op)| !op.settled && op.done_at <= now)
        .filter(|(_, op)| !matches!(op.kind, OperationKind::Update))
        .map(|(_, op)| {
            (
                op.vm.clone(),
                matches!(op.kind, OperationKind::Create),
                op.error.is_some(),
            )
        })
        .collect();
    for op in state.operations.values_mut() {
        if op.done_at <= now {
            op.settled = true;
        }
    }
    for (vm, create, failed) in due {
        if create {
            if let Some(v) = state.vms.get_mut(&vm) {
                v.doc["properties"]["provisioningState"] =
                    json!(if failed { "Failed" } else { "Succeeded" });
            }
        } else {
            state.vms.remove(&vm);
        }
    }
}

fn put_vm(
    state: &mut ArmState,
    base: &str,
    name: &str,
    body: &Value,
    failing: Option<(String, String)>,
) -> Response {
    if let Some(vm) = state.vms.get(name) {
        // ARM PUT is idempotent: the same VM again is an update, itself an operation.
        let doc = vm.doc.clone();
        let region = doc["location"].as_str().unwrap_or_default().to_string();
        let op = new_operation(state, name, OperationKind::Update, None);
        return json_response(
            StatusCode::OK,
            doc,
            &[("azure-asyncoperation", operation_url(base, &region, &op))],
        );
    }
    let required = [
        ("location", &body["location"]),
        ("properties.hardwareProfile.vmSize", &body["properties"]["hardwareProfile"]["vmSize"]),
        ("properties.storageProfile.imageReference", &body["properties"]["storageProfile"]["imageReference"]),
        ("properties.osProfile.adminUsername", &body["properties"]["osProfile"]["adminUsername"]),
        ("properties.osProfile.customData", &body["properties"]["osProfile"]["customData"]),
        (
            "properties.networkProfile.networkInterfaceConfigurations[0].properties.ipConfigurations[0].properties.subnet.id",
            &body["properties"]["networkProfile"]["networkInterfaceConfigurations"][0]["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"],
        ),
    ];
    if let Some((missing, _)) = required.iter().find(|(_, v)| v.is_null()) {
        return arm_error(
            400,
            "InvalidParameter",
            &format!("Required parameter '{missing}' is missing (null)."),
        );
    }
    let linux = &body["properties"]["osProfile"]["linuxConfiguration"];
    if linux["disablePasswordAuthentication"] == true
        && linux["ssh"]["publicKeys"]
            .as_array()
            .is_none_or(|k| k.is_empty())
    {
        return arm_error(
            400,
            "InvalidParameter",
            "Authentication using either SSH or by user name and password must be enabled in Linux profile.",
        );
    }
    let region = body["location"].as_str().unwrap_or_default().to_string();
    let custom_data = body["properties"]["osProfile"]["customData"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut doc = body.clone();
    doc["name"] = json!(name);
    doc["id"] = json!(vm_id(name));
    doc["type"] = json!("Microsoft.Compute/virtualMachines");
    if let Some(os) = doc["properties"]["osProfile"].as_object_mut() {
        os.remove("customData");
    }
    doc["properties"]["provisioningState"] = json!("Creating");
    doc["properties"]["vmId"] = json!(uuid::Uuid::new_v4().to_string());
    doc["properties"]["timeCreated"] = json!(skylaunch::clock::rfc3339(skylaunch::clock::now_ms()));
    state.vms.insert(
        name.to_string(),
        Vm {
            doc: doc.clone(),
            custom_data,
        },
    );
    let op = new_operation(state, name, OperationKind::Create, failing);
    let mut headers = vec![("x-ms-request-id", uuid::Uuid::new_v4().to_string())];
    if !state.creates_without_operation {
        headers.push(("azure-asyncoperation", operation_url(base, &region, &op)));
        headers.push(("retry-after", "0".into()));
    }
    json_response(StatusCode::CREATED, doc, &headers)
}

fn delete_vm(state: &mut ArmState, base: &str, name: &str) -> Response {
    let Some(vm) = state.vms.get_mut(name) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    vm.doc["properties"]["provisioningState"] = json!("Deleting");
    let region = vm.doc["location"].as_str().unwrap_or_default().to_string();
    let op = new_operation(state, name, OperationKind::Delete, None);
    let url = operation_url(base, &region, &op);
    let mut response = StatusCode::ACCEPTED.into_response();
    for (header, value) in [
        ("azure-asyncoperation", url.clone()),
        ("location", url),
        ("retry-after", "0".into()),
    ] {
        response
            .headers_mut()
            .insert(header, value.parse().expect("header value"));
    }
    response
}

fn operation_status(state: &mut ArmState, id: &str) -> Response {
    let Some(op) = state.operations.get(id) else {
        return arm_error(404, "OperationNotFound", "The operation was not found.");
    };
    let at = skylaunch::clock::rfc3339(skylaunch::clock::now_ms());
    let body = match (op.settled, &op.error) {
        (false, _) => {
            return json_response(
                StatusCode::OK,
                json!({"startTime": at, "status": "InProgress", "name": id}),
                &[("retry-after", "0".into())],
            )
        }
        (true, Some((code, message))) => {
            json!({"startTime": at, "endTime": at, "status": "Failed", "name": id,
                   "error": {"code": code, "message": message}})
        }
        (true, None) => {
            json!({"startTime": at, "endTime": at, "status": "Succeeded", "name": id})
        }
    };
    json_response(StatusCode::OK, body, &[])
}

/// The instance view Azure shows with `$expand=instanceView`: a failed provisioning names its
/// error in a `ProvisioningState/failed/<code>` status.
fn instance_view(state: &ArmState, name: &str, doc: &Value) -> Value {
    let failure = state
        .operations
        .values()
        .find(|op| op.vm == name && op.settled && matches!(op.kind, OperationKind::Create))
        .and_then(|op| op.error.clone());
    let mut statuses = vec![];
    match (doc["properties"]["provisioningState"].as_str(), failure) {
        (Some("Failed"), Some((code, message))) => statuses.push(json!({
            "code": format!("ProvisioningState/failed/{code}"), "level": "Error",
            "displayStatus": "Provisioning failed", "message": message
        })),
        (Some(state), _) => statuses.push(json!({
            "code": format!("ProvisioningState/{}", state.to_ascii_lowercase()), "level": "Info",
            "displayStatus": format!("Provisioning {}", state.to_ascii_lowercase())
        })),
        _ => {}
    }
    json!({ "statuses": statuses })
}

fn list_vms(state: &ArmState, base: &str, login: &str, query: &str) -> Response {
    const PAGE: usize = 2;
    let skip: usize = query_value(query, "$skiptoken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let all: Vec<Value> = state.vms.values().map(|v| v.doc.clone()).collect();
    let page: Vec<Value> = all.iter().skip(skip).take(PAGE).cloned().collect();
    let mut body = json!({ "value": page });
    if skip + PAGE < all.len() {
        let host = if state.next_link_elsewhere {
            login.to_string()
        } else {
            base.to_string()
        };
        body["nextLink"] = json!(format!(
            "{host}/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01&$skiptoken={}",
            skip + PAGE
        ));
    }
    json_response(StatusCode::OK, body, &[])
}
