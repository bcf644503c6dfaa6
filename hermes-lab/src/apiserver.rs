//! A fake Kubernetes API server for pod mode's tests: it serves Pods the way the real one does
//! to a client that lists and watches them (kube-rs' watcher):
//!
//! - `GET /api/v1/pods` (and `/api/v1/namespaces/NS/pods`) lists, with `metadata.resourceVersion`;
//!   `GET /api/v1/namespaces/NS/pods/NAME` gets one pod (or 404);
//! - `...?watch=true&resourceVersion=N` streams the events after N as newline-delimited JSON
//!   (`ADDED`, `MODIFIED`, `DELETED`; an object that stops or starts matching the selectors is
//!   `DELETED` or `ADDED`), chunked, until the client leaves or [`ApiServer::break_watches`];
//!   a version older than the history kept ([`ApiServer::compact`]) gets an `ERROR` event with
//!   a 410 Gone status, as etcd's compaction causes;
//! - `labelSelector` (`key`, `!key`, `key=value`, `key!=value`) and `fieldSelector`
//!   (`spec.nodeName`, `metadata.name`, `metadata.namespace`, with `=` or `!=`) are honoured;
//! - `PATCH /api/v1/namespaces/NS/pods/NAME/status` with a strategic merge patch sets
//!   `status.conditions` by their `type`, as the kubelet's and the agent's patches do (other
//!   patch types are refused: a JSON merge patch would replace the whole list).
//!
//! Plain HTTP: clients reach it through a kubeconfig ([`ApiServer::kubeconfig`]).
use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};

#[derive(Default)]
struct State {
    version: u64,
    pods: BTreeMap<(String, String), Value>,
    /// Events after `compacted`: version, type, the object before (if any) and after.
    events: Vec<(u64, &'static str, Option<Value>, Value)>,
    compacted: u64,
    /// Bumped to end every watch.
    generation: u64,
    requests: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    /// Applies a strategic merge patch to a pod's `status`: its conditions are merged by
    /// `type`, every other field replaced. The pod as stored after it, if there is one.
    /// A patch whose `metadata.uid` is not the pod's is refused (`Err`), as the real server
    /// refuses it: that pod was made anew under the same name.
    fn patch_status(
        &self,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Option<Result<Value, ()>> {
        let mut state = self.state.lock().unwrap();
        let key = (namespace.to_owned(), name.to_owned());
        let before = state.pods.get(&key)?.clone();
        let uid = &patch["metadata"]["uid"];
        if !uid.is_null() && *uid != before["metadata"]["uid"] {
            return Some(Err(()));
        }
        let mut pod = before.clone();
        for (field, value) in patch["status"].as_object().into_iter().flatten() {
            if field != "conditions" {
                pod["status"][field] = value.clone();
                continue;
            }
            let mut conditions = pod["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for condition in value.as_array().into_iter().flatten() {
                match conditions
                    .iter_mut()
                    .find(|c| c["type"] == condition["type"])
                {
                    Some(old) => {
                        for (k, v) in condition.as_object().into_iter().flatten() {
                            old[k] = v.clone();
                        }
                    }
                    None => conditions.push(condition.clone()),
                }
            }
            pod["status"]["conditions"] = Value::Array(conditions);
        }
        state.version += 1;
        let version = state.version;
        pod["metadata"]["resourceVersion"] = json!(version.to_string());
        state.pods.insert(key, pod.clone());
        state
            .events
            .push((version, "MODIFIED", Some(before), pod.clone()));
        self.changed.notify_all();
        Some(Ok(pod))
    }
}

/// The fake API server; it stops when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl ApiServer {
    /// Serves on `bind` (port 0: any).
    pub fn start(bind: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                version: 1000,
                ..State::default()
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let for_thread = Arc::clone(&shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if for_thread.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&for_thread);
                std::thread::spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
        });
        Ok(Self { addr, shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig that points at this server.
    pub fn kubeconfig(&self, path: &Path) -> io::Result<()> {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "lab", "cluster": { "server": format!("http://{}", self.addr) } }],
            "users": [{ "name": "lab", "user": {} }],
            "contexts": [{ "name": "lab", "context": { "cluster": "lab", "user": "lab" } }],
            "current-context": "lab",
        });
        std::fs::write(path, config.to_string())
    }

    /// Creates or replaces a pod (`metadata.namespace` and `metadata.name` name it); returns
    /// it as stored, with its new `resourceVersion`.
    pub fn apply(&self, mut pod: Value) -> Value {
        let mut state = self.shared.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        pod["apiVersion"] = json!("v1");
        pod["kind"] = json!("Pod");
        pod["metadata"]["resourceVersion"] = json!(version.to_string());
        let key = key_of(&pod);
        let before = state.pods.insert(key, pod.clone());
        let kind = if before.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.events.push((version, kind, before, pod.clone()));
        self.shared.changed.notify_all();
        pod
    }

    /// The pod as stored.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Value> {
        let state = self.shared.state.lock().unwrap();
        state
            .pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Deletes a pod (at once, as after its grace period).
    pub fn delete(&self, namespace: &str, name: &str) {
        let mut state = self.shared.state.lock().unwrap();
        if let Some(mut pod) = state.pods.remove(&(namespace.to_owned(), name.to_owned())) {
            state.version += 1;
            let version = state.version;
            pod["metadata"]["resourceVersion"] = json!(version.to_string());
            state.events.push((version, "DELETED", None, pod));
            self.shared.changed.notify_all();
        }
    }

    /// Forgets the history: a watch resuming from before now gets 410 Gone and must list anew.
    pub fn compact(&self) {
        let mut state = self.shared.state.lock().unwrap();
        state.version += 1;
        state.compacted = state.version;
        state.events.clear();
    }

    /// Ends every watch stream (the client resumes from its last version).
    pub fn break_watches(&self) {
        self.shared.state.lock().unwrap().generation += 1;
        self.shared.changed.notify_all();
    }

    /// Request lines seen so far (method and target).
    pub fn requests(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().requests.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.break_watches();
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

fn key_of(pod: &Value) -> (String, String) {
    let meta = &pod["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&meta["namespace"]), text(&meta["name"]))
}

/// One requirement of a label selector.
#[derive(Debug)]
enum Label {
    Exists(String),
    Absent(String),
    Equals(String, String),
    Differs(String, String),
}

/// What a request selects.
#[derive(Default, Debug)]
struct Selectors {
    labels: Vec<Label>,
    fields: Vec<(String, bool, String)>,
    namespace: Option<String>,
}

impl Selectors {
    fn matches(&self, pod: &Value) -> bool {
        let meta = &pod["metadata"];
        if let Some(namespace) = &self.namespace
            && meta["namespace"].as_str() != Some(namespace)
        {
            return false;
        }
        for requirement in &self.labels {
            let label = |key: &str| meta["labels"][key].as_str();
            let ok = match requirement {
                Label::Exists(key) => label(key).is_some(),
                Label::Absent(key) => label(key).is_none(),
                Label::Equals(key, value) => label(key) == Some(value.as_str()),
                Label::Differs(key, value) => label(key) != Some(value.as_str()),
            };
            if !ok {
                return false;
            }
        }
        for (field, equal, value) in &self.fields {
            let actual = match field.as_str() {
                "spec.nodeName" => pod["spec"]["nodeName"].as_str(),
                "metadata.name" => meta["name"].as_str(),
                "metadata.namespace" => meta["namespace"].as_str(),
                _ => return false,
            }
            .unwrap_or_default();
            if (actual == value) != *equal {
                return false;
            }
        }
        true
    }
}

fn parse_labels(text: &str) -> Vec<Label> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|term| {
            let term = term.trim();
            if let Some((key, value)) = term.split_once("!=") {
                Label::Differs(key.into(), value.into())
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                Label::Equals(key.into(), value.into())
            } else if let Some(key) = term.strip_prefix('!') {
                Label::Absent(key.into())
            } else {
                Label::Exists(term.into())
            }
        })
        .collect()
}

fn parse_fields(text: &str) -> Vec<(String, bool, String)> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .filter_map(|term| {
            if let Some((key, value)) = term.split_once("!=") {
                Some((key.into(), false, value.into()))
            } else {
                let (key, value) = term.split_once("==").or_else(|| term.split_once('='))?;
                Some((key.into(), true, value.into()))
            }
        })
        .collect()
}

/// `%XX` and `+` decoded.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // A request that never ends ends its connection (watches only write).
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // The rest of the head; only PATCHes have a body.
    let (mut length, mut content_type) = (0, String::new());
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "content-type" => content_type = value.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    shared
        .state
        .lock()
        .unwrap()
        .requests
        .push(format!("{method} {target}"));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query: BTreeMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (unescape(k), unescape(v)))
        .collect();
    let mut selectors = Selectors::default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let ["api", "v1", "namespaces", namespace, "pods", name, "status"] = segments.as_slice() {
        if method != "PATCH" {
            return answer(stream, 405, &status(405, "MethodNotAllowed", "PATCH only"));
        }
        if content_type != "application/strategic-merge-patch+json" {
            let why = format!("{content_type}: only strategic merge patches are served");
            return answer(stream, 415, &status(415, "UnsupportedMediaType", &why));
        }
        if length > 1 << 20 {
            return answer(
                stream,
                413,
                &status(413, "RequestEntityTooLarge", "over 1 MiB"),
            );
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
            return answer(stream, 400, &status(400, "BadRequest", "not JSON"));
        };
        return match shared.patch_status(namespace, name, &patch) {
            Some(Ok(pod)) => answer(stream, 200, &pod),
            Some(Err(())) => answer(stream, 409, &status(409, "Conflict", "uid precondition")),
            None => answer(stream, 404, &status(404, "NotFound", "pods not found")),
        };
    }
    if let ["api", "v1", "namespaces", namespace, "pods", name] = segments.as_slice() {
        let pod = shared
            .state
            .lock()
            .unwrap()
            .pods
            .get(&((*namespace).to_owned(), (*name).to_owned()))
            .cloned();
        return match pod {
            Some(pod) => answer(stream, 200, &pod),
            None => answer(stream, 404, &status(404, "NotFound", "pods not found")),
        };
    }
    match segments.as_slice() {
        ["api", "v1", "pods"] => {}
        ["api", "v1", "namespaces", namespace, "pods"] => {
            selectors.namespace = Some((*namespace).to_owned())
        }
        _ => {
            return answer(
                stream,
                404,
                &status(404, "NotFound", "not served by the fake"),
            );
        }
    }
    if method != "GET" {
        return answer(stream, 405, &status(405, "MethodNotAllowed", "read only"));
    }
    selectors.labels = query
        .get("labelSelector")
        .map_or_else(Vec::new, |s| parse_labels(s));
    selectors.fields = query
        .get("fieldSelector")
        .map_or_else(Vec::new, |s| parse_fields(s));
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let from = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        watch(stream, shared, &selectors, from)
    } else {
        let state = shared.state.lock().unwrap();
        let items: Vec<Value> = state
            .pods
            .values()
            .filter(|pod| selectors.matches(pod))
            .cloned()
            .collect();
        let list = json!({
            "apiVersion": "v1",
            "kind": "PodList",
            "metadata": { "resourceVersion": state.version.to_string() },
            "items": items,
        });
        drop(state);
        answer(stream, 200, &list)
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code })
}

fn answer(mut stream: TcpStream, code: u16, body: &Value) -> io::Result<()> {
    let body = body.to_string();
    write!(
        stream,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn chunk(stream: &mut TcpStream, event: &Value) -> io::Result<()> {
    let line = event.to_string() + "\n";
    write!(stream, "{:x}\r\n{line}\r\n", line.len())?;
    stream.flush()
}

fn watch(
    mut stream: TcpStream,
    shared: &Shared,
    selectors: &Selectors,
    from: u64,
) -> io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )?;
    let mut state = shared.state.lock().unwrap();
    if from < state.compacted {
        drop(state);
        chunk(
            &mut stream,
            &json!({ "type": "ERROR", "object": status(410, "Expired", "too old resource version") }),
        )?;
        return stream.write_all(b"0\r\n\r\n");
    }
    let generation = state.generation;
    let mut sent = from;
    loop {
        let events: Vec<Value> = state
            .events
            .iter()
            .filter(|(version, ..)| *version > sent)
            .filter_map(|(_, kind, before, after)| {
                let was = before.as_ref().is_some_and(|b| selectors.matches(b));
                let is = selectors.matches(after);
                let kind = match (*kind, was, is) {
                    ("DELETED", ..) if is => "DELETED",
                    ("DELETED", ..) => return None,
                    (_, false, true) => "ADDED",
                    (_, true, true) => "MODIFIED",
                    (_, true, false) => "DELETED",
                    _ => return None,
                };
                Some(json!({ "type": kind, "object": after }))
            })
            .collect();
        sent = state.version;
        drop(state);
        for event in &events {
            chunk(&mut stream, event)?;
        }
        state = shared.state.lock().unwrap();
        while state.version == sent
            && state.generation == generation
            && !shared.stop.load(Ordering::Relaxed)
        {
            state = shared
                .changed
                .wait_timeout(state, Duration::from_millis(500))
                .unwrap()
                .0;
        }
        if state.generation != generation || shared.stop.load(Ordering::Relaxed) {
            drop(state);
            return stream.write_all(b"0\r\n\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let pod = json!({ "metadata": { "name": "a", "namespace": "n",
            "labels": { "hermes.io/group": "g" } }, "spec": { "nodeName": "w1" } });
        let mut s = Selectors {
            labels: parse_labels("hermes.io/group"),
            ..Default::default()
        };
        assert!(s.matches(&pod));
        s.fields = parse_fields("spec.nodeName=w1");
        assert!(s.matches(&pod));
        s.fields = parse_fields("spec.nodeName=w2");
        assert!(!s.matches(&pod));
        s.fields = parse_fields("spec.nodeName!=w2");
        assert!(s.matches(&pod));
        s.labels = parse_labels("hermes.io/group=h");
        assert!(!s.matches(&pod));
        s.labels = parse_labels("!hermes.io/group");
        assert!(!s.matches(&pod));
        assert_eq!(unescape("spec.nodeName%3Dw1"), "spec.nodeName=w1");
    }
}
