//! An in-test Kubernetes API server for ConfigMaps and EndpointSlices: enough of the real
//! list/watch wire protocol for kube's watcher, so the real binaries can be pointed at it
//! through a kubeconfig. No cluster runs on the test machines; this is what the ConfigMap
//! source and the proxy's `--member-service` are tested against.
//!
//! What it serves, as the real API server does (see `../shared/KUBERNETES.md`):
//! - `GET /api/v1/namespaces/NS/configmaps?fieldSelector=metadata.name%3DNAME`: a
//!   `ConfigMapList` with the list's `resourceVersion`;
//! - the same with `watch=true&resourceVersion=RV`: HTTP 200, then one JSON event per line
//!   (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`), starting with every change after `RV`;
//! - `GET /api/v1/namespaces/NS/configmaps/NAME`: the object, or a 404 `Status`;
//! - the same for `GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices`, filtered by
//!   `labelSelector=kubernetes.io/service-name%3DNAME` as the EndpointSlice controller labels
//!   them;
//! - `PUT /api/v1/namespaces/NS/configmaps/NAME`: replaces the ConfigMap when the body's
//!   `metadata.resourceVersion` is the stored one, else `409 Conflict` (optimistic
//!   concurrency, as the real server does); [`ApiServer::conflict_next_puts`] makes another
//!   writer get in first;
//! - a watch from a compacted version, or [`ApiServer::expire_watches`]: an in-stream
//!   `ERROR` event with a `Status` of code 410, after which the client must re-list;
//! - [`ApiServer::end_watches`]: streams that end cleanly, to be resumed by the client.
//!
//! Every request is recorded, so tests can assert what the client asked for.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use stickyroute_relay::urlencoded;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

type ApiBody = BoxBody<Bytes, Infallible>;

/// The running server, its state and a kubeconfig that points at it.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    dir: TempDir,
}

struct Shared {
    state: Mutex<State>,
    changes: broadcast::Sender<Change>,
}

#[derive(Default)]
struct State {
    resource_version: u64,
    /// `(resource, namespace, name)` → the object as the API returns it.
    objects: BTreeMap<(Resource, String, String), Value>,
    /// Every change, for watches that start from an older version.
    history: Vec<Event>,
    /// Watches from a version below this one get "410 Gone" (the history was compacted).
    oldest_watchable: u64,
    /// Answer every request with 403, as with missing RBAC.
    forbidden: bool,
    /// PUTs still to be beaten by another writer (see [`ApiServer::conflict_next_puts`]).
    conflicting_puts: u32,
    /// PUTs answered 409.
    conflicts: u32,
    requests: Vec<String>,
}

#[derive(Clone)]
struct Event {
    resource_version: u64,
    resource: Resource,
    namespace: String,
    name: String,
    /// The object's `kubernetes.io/service-name` label, for label-selected watches.
    service: Option<String>,
    line: String,
}

/// The kinds of object served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Resource {
    ConfigMap,
    EndpointSlice,
}

impl Resource {
    fn kind(self) -> &'static str {
        match self {
            Resource::ConfigMap => "ConfigMap",
            Resource::EndpointSlice => "EndpointSlice",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::ConfigMap => "v1",
            Resource::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Resource::ConfigMap => "configmaps",
            Resource::EndpointSlice => "endpointslices",
        }
    }
}

/// One endpoint of an EndpointSlice, for [`ApiServer::apply_endpoint_slice`].
#[derive(Debug, Clone)]
pub struct SliceEndpoint {
    pub pod: String,
    pub ip: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl SliceEndpoint {
    /// A ready pod.
    pub fn ready(pod: &str, ip: &str) -> Self {
        Self {
            pod: pod.to_owned(),
            ip: ip.to_owned(),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// A pod being deleted that still passes its readiness probe.
    pub fn terminating(pod: &str, ip: &str) -> Self {
        Self {
            ready: false,
            terminating: true,
            ..Self::ready(pod, ip)
        }
    }

    /// A pod that fails its readiness probe.
    pub fn not_ready(pod: &str, ip: &str) -> Self {
        Self {
            ready: false,
            serving: false,
            ..Self::ready(pod, ip)
        }
    }
}

#[derive(Clone)]
enum Change {
    Event(Event),
    Bookmark(u64),
    Expire,
    End,
}

impl ApiServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind API server");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                resource_version: 100,
                ..State::default()
            }),
            changes: broadcast::channel(1024).0,
        });
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{addr}\n\
                 users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
                 current-context: test\n"
            ),
        )
        .expect("write kubeconfig");
        Self {
            addr,
            shared,
            task,
            dir,
        }
    }

    /// A kubeconfig whose cluster is this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Creates or replaces the ConfigMap, like `kubectl apply`: an `ADDED` or `MODIFIED`
    /// event with a new resourceVersion.
    pub fn apply(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        self.put(Resource::ConfigMap, namespace, name, json!({}), |object| {
            object["data"] = Value::Object(data);
        });
    }

    /// Creates or replaces an EndpointSlice of `service`, as the EndpointSlice controller
    /// writes them (label `kubernetes.io/service-name`, endpoints with `targetRef` and
    /// conditions).
    pub fn apply_endpoint_slice(
        &self,
        namespace: &str,
        name: &str,
        service: &str,
        endpoints: &[SliceEndpoint],
    ) {
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|e| {
                json!({
                    "addresses": [e.ip],
                    "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                    "targetRef": {"kind": "Pod", "namespace": namespace, "name": e.pod},
                })
            })
            .collect();
        let labels = json!({"kubernetes.io/service-name": service});
        self.put(Resource::EndpointSlice, namespace, name, labels, |object| {
            object["addressType"] = Value::from("IPv4");
            object["endpoints"] = Value::Array(endpoints);
            object["ports"] = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
        });
    }

    fn put(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        labels: Value,
        fill: impl FnOnce(&mut Value),
    ) {
        let mut state = self.shared.lock();
        state.resource_version += 1;
        let version = state.resource_version;
        let key = (resource, namespace.to_owned(), name.to_owned());
        let kind = if state.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let mut object = json!({
            "apiVersion": resource.api_version(),
            "kind": resource.kind(),
            "metadata": {
                "name": name,
                "namespace": namespace,
                "resourceVersion": version.to_string(),
                "uid": format!("uid-{}-{namespace}-{name}", resource.plural()),
                "labels": labels,
            },
        });
        fill(&mut object);
        state.objects.insert(key, object.clone());
        self.shared.record(&mut state, kind, resource, object);
    }

    /// Deletes the ConfigMap: a `DELETED` event.
    pub fn delete(&self, namespace: &str, name: &str) {
        self.remove(Resource::ConfigMap, namespace, name);
    }

    /// Deletes an EndpointSlice: a `DELETED` event.
    pub fn delete_endpoint_slice(&self, namespace: &str, name: &str) {
        self.remove(Resource::EndpointSlice, namespace, name);
    }

    fn remove(&self, resource: Resource, namespace: &str, name: &str) {
        let mut state = self.shared.lock();
        let Some(mut object) =
            state
                .objects
                .remove(&(resource, namespace.to_owned(), name.to_owned()))
        else {
            panic!("no {} {namespace}/{name} to delete", resource.kind());
        };
        state.resource_version += 1;
        object["metadata"]["resourceVersion"] = Value::from(state.resource_version.to_string());
        self.shared.record(&mut state, "DELETED", resource, object);
    }

    /// Sends a `BOOKMARK` with the current resourceVersion to every open watch.
    pub fn bookmark(&self) {
        let version = self.shared.lock().resource_version;
        let _ = self.shared.changes.send(Change::Bookmark(version));
    }

    /// Compacts the history: open watches get an in-stream `ERROR` 410 and end, and a
    /// watch from any version up to now gets the same, so the client has to re-list.
    pub fn expire_watches(&self) {
        let mut state = self.shared.lock();
        state.oldest_watchable = state.resource_version + 1;
        state.history.clear();
        let _ = self.shared.changes.send(Change::Expire);
    }

    /// Ends every open watch stream cleanly (as the server does at `timeoutSeconds`).
    pub fn end_watches(&self) {
        let _ = self.shared.changes.send(Change::End);
    }

    /// Answers every request with 403 Forbidden while `on`.
    pub fn forbid(&self, on: bool) {
        self.shared.lock().forbidden = on;
    }

    /// The next `n` replacements find the ConfigMap changed by another writer just before
    /// (it is written again, unchanged, with a new resourceVersion) and get 409 Conflict.
    pub fn conflict_next_puts(&self, n: u32) {
        self.shared.lock().conflicting_puts = n;
    }

    /// Replacements answered 409 Conflict so far.
    pub fn conflicts(&self) -> u32 {
        self.shared.lock().conflicts
    }

    /// The ConfigMap's `data[key]`, if it has one.
    pub fn data(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        self.shared
            .lock()
            .objects
            .get(&(Resource::ConfigMap, namespace.to_owned(), name.to_owned()))
            .and_then(|o| o["data"][key].as_str().map(str::to_owned))
    }

    /// `METHOD PATH?QUERY` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// The requests that were lists (not watches).
    pub fn lists(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| !r.contains("watch=true"))
            .collect()
    }

    /// The requests that were watches.
    pub fn watches(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.contains("watch=true"))
            .collect()
    }

    /// Open watch streams right now.
    pub fn open_watches(&self) -> usize {
        self.shared.changes.receiver_count()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.shared.changes.send(Change::End);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, state: &mut State, kind: &str, resource: Resource, object: Value) {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let event = Event {
            resource_version: state.resource_version,
            resource,
            namespace: text(&object["metadata"]["namespace"]),
            name: text(&object["metadata"]["name"]),
            service: object["metadata"]["labels"]["kubernetes.io/service-name"]
                .as_str()
                .map(str::to_owned),
            line: json!({"type": kind, "object": object}).to_string() + "\n",
        };
        state.history.push(event.clone());
        // Sent while the state is locked, so a watch that starts meanwhile sees every event
        // exactly once: either in its backlog or on the channel.
        let _ = self.changes.send(Change::Event(event));
    }
}

/// What a request asks for.
struct Query {
    resource: Resource,
    namespace: String,
    name: Option<String>,
    /// `labelSelector=kubernetes.io/service-name=NAME`.
    service: Option<String>,
    /// `GET .../NAME`: one object, not a list.
    single: bool,
    watch: bool,
    resource_version: Option<u64>,
    timeout: Option<Duration>,
}

impl Query {
    fn matches(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        service: Option<&str>,
    ) -> bool {
        resource == self.resource
            && namespace == self.namespace
            && self.name.as_deref().is_none_or(|n| n == name)
            && self.service.as_deref().is_none_or(|s| Some(s) == service)
    }
}

fn parse(req: &Request<Incoming>) -> Option<Query> {
    let path = req.uri().path();
    let (resource, path) = if let Some(rest) = path.strip_prefix("/api/v1/namespaces/") {
        (Resource::ConfigMap, rest)
    } else {
        (
            Resource::EndpointSlice,
            path.strip_prefix("/apis/discovery.k8s.io/v1/namespaces/")?,
        )
    };
    let (namespace, rest) = path.split_once(&format!("/{}", resource.plural()))?;
    let name = rest
        .strip_prefix('/')
        .filter(|n| !n.is_empty() && !n.contains('/'));
    if name.is_none() && !rest.is_empty() {
        return None;
    }
    let mut query = Query {
        resource,
        namespace: namespace.to_owned(),
        name: name.map(str::to_owned),
        service: None,
        single: name.is_some(),
        watch: false,
        resource_version: None,
        timeout: None,
    };
    for (key, value) in urlencoded::pairs(req.uri().query().unwrap_or("")) {
        match key.as_str() {
            "fieldSelector" => query.name = value.strip_prefix("metadata.name=").map(str::to_owned),
            "labelSelector" => {
                query.service = value
                    .strip_prefix("kubernetes.io/service-name=")
                    .map(str::to_owned);
            }
            "watch" => query.watch = value == "true" || value == "1",
            "resourceVersion" => query.resource_version = value.parse().ok(),
            "timeoutSeconds" => query.timeout = value.parse().ok().map(Duration::from_secs),
            _ => {}
        }
    }
    Some(query)
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<ApiBody> {
    let forbidden = {
        let mut state = shared.lock();
        state
            .requests
            .push(format!("{} {}", req.method(), req.uri()));
        state.forbidden
    };
    if forbidden {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "forbidden: User \"system:serviceaccount:test:stickyroute\" cannot list this resource",
        );
    }
    if req.method() == Method::PUT {
        return match parse(&req).filter(|q| q.single && q.resource == Resource::ConfigMap) {
            Some(query) => replace(shared, &query, req).await,
            None => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "only ConfigMaps are replaced here",
            ),
        };
    }
    let Some(query) = parse(&req).filter(|_| req.method() == Method::GET) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if query.single {
        get_one(shared, &query)
    } else if query.watch {
        watch(shared, query)
    } else {
        list(shared, &query)
    }
}

fn get_one(shared: &Shared, query: &Query) -> Response<ApiBody> {
    let state = shared.lock();
    let key = (
        query.resource,
        query.namespace.clone(),
        query.name.clone().unwrap_or_default(),
    );
    match state.objects.get(&key) {
        Some(object) => json_response(StatusCode::OK, object.to_string()),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{} \"{}\" not found", query.resource.plural(), key.2),
        ),
    }
}

/// `PUT .../configmaps/NAME`: optimistic concurrency on `metadata.resourceVersion`.
async fn replace(shared: &Shared, query: &Query, req: Request<Incoming>) -> Response<ApiBody> {
    let Ok(body) = req.into_body().collect().await else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "unreadable body");
    };
    let Ok(mut object) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not JSON",
        );
    };
    let name = query.name.clone().unwrap_or_default();
    let key = (Resource::ConfigMap, query.namespace.clone(), name.clone());
    let mut state = shared.lock();
    let Some(stored) = state.objects.get(&key).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("configmaps \"{name}\" not found"),
        );
    };
    if state.conflicting_puts > 0 {
        // Another writer got in first: the same object, a new version.
        state.conflicting_puts -= 1;
        state.resource_version += 1;
        let mut beaten = stored.clone();
        beaten["metadata"]["resourceVersion"] = Value::from(state.resource_version.to_string());
        state.objects.insert(key.clone(), beaten.clone());
        shared.record(&mut state, "MODIFIED", Resource::ConfigMap, beaten);
    }
    let current = state.objects[&key]["metadata"]["resourceVersion"].clone();
    if object["metadata"]["resourceVersion"] != current {
        state.conflicts += 1;
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on configmaps \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    state.resource_version += 1;
    object["metadata"]["resourceVersion"] = Value::from(state.resource_version.to_string());
    state.objects.insert(key, object.clone());
    shared.record(&mut state, "MODIFIED", Resource::ConfigMap, object.clone());
    json_response(StatusCode::OK, object.to_string())
}

fn list(shared: &Shared, query: &Query) -> Response<ApiBody> {
    let state = shared.lock();
    let items: Vec<&Value> = state
        .objects
        .iter()
        .filter(|((resource, namespace, name), object)| {
            let service = object["metadata"]["labels"]["kubernetes.io/service-name"].as_str();
            query.matches(*resource, namespace, name, service)
        })
        .map(|(_, object)| object)
        .collect();
    let body = json!({
        "apiVersion": query.resource.api_version(),
        "kind": format!("{}List", query.resource.kind()),
        "metadata": {"resourceVersion": state.resource_version.to_string()},
        "items": items,
    });
    json_response(StatusCode::OK, body.to_string())
}

fn watch(shared: &Shared, query: Query) -> Response<ApiBody> {
    let (lines, body) = mpsc::channel::<Bytes>(64);
    let resource = query.resource;
    let since = query.resource_version.unwrap_or(0);
    let timeout = query.timeout.unwrap_or(Duration::from_secs(290));
    let matches =
        move |e: &Event| query.matches(e.resource, &e.namespace, &e.name, e.service.as_deref());
    let (backlog, mut changes, expired) = {
        let state = shared.lock();
        let expired = since < state.oldest_watchable;
        let backlog: Vec<Bytes> = state
            .history
            .iter()
            .filter(|e| e.resource_version > since && matches(e))
            .map(|e| Bytes::from(e.line.clone()))
            .collect();
        (backlog, shared.changes.subscribe(), expired)
    };
    tokio::spawn(async move {
        if expired {
            let _ = lines.send(gone(since)).await;
            return;
        }
        for line in backlog {
            if lines.send(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let change = tokio::select! {
                change = changes.recv() => change,
                () = &mut deadline => return,
            };
            let line = match change {
                Ok(Change::Event(event)) if matches(&event) => Bytes::from(event.line),
                Ok(Change::Event(_)) => continue,
                Ok(Change::Bookmark(version)) => Bytes::from(
                    json!({"type": "BOOKMARK", "object": {
                        "apiVersion": resource.api_version(), "kind": resource.kind(),
                        "metadata": {"resourceVersion": version.to_string()},
                    }})
                    .to_string()
                        + "\n",
                ),
                Ok(Change::Expire) => {
                    let _ = lines.send(gone(since)).await;
                    return;
                }
                Ok(Change::End) | Err(_) => return,
            };
            if lines.send(line).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(body, |mut body| async move {
        body.recv()
            .await
            .map(|line| (Ok::<_, Infallible>(Frame::data(line)), body))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .unwrap_or_else(|_| Response::new(empty()))
}

/// The in-stream "too old resource version" error.
fn gone(since: u64) -> Bytes {
    let line = json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {since}"),
        "reason": "Expired", "code": 410,
    }});
    Bytes::from(line.to_string() + "\n")
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<ApiBody> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    json_response(code, body.to_string())
}

fn json_response(code: StatusCode, body: String) -> Response<ApiBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(empty()))
}

fn empty() -> ApiBody {
    Full::new(Bytes::new()).boxed()
}
