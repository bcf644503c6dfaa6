//! What the manifests in `deploy/` must keep for a real cluster (issue 20), beyond the API's
//! schemas: the kubelet's SIGKILL comes after the agent's own bound on its stop; the
//! host-network agents run only on the nodes that have an id; the agent's container needs no
//! `privileged`; one image, pulled the same way, everywhere.
use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::Deserialize as _;
use serde_norway::Value;

/// The agent's default `--grace-period`.
const DEFAULT_GRACE: Duration = Duration::from_secs(20);
/// What the pod's grace must leave beyond the agent's: its exit after the stop, the kubelet's
/// own delays.
const MARGIN: Duration = Duration::from_secs(5);

/// The objects of every manifest in `deploy/`, by file name.
fn manifests() -> BTreeMap<String, Vec<Value>> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(&deploy).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let objects = serde_norway::Deserializer::from_str(&text)
            .map(|document| Value::deserialize(document).unwrap())
            .filter(|object| !object.is_null())
            .collect();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        all.insert(name, objects);
    }
    all
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|o| o["kind"].as_str() == Some(kind))
        .collect()
}

/// A duration as the agent's flags take it: `500ms`, `20s`, `2m`.
fn duration(text: &str) -> Duration {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().unwrap();
    match unit {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        other => panic!("unit {other} in {text}"),
    }
}

/// The containers of a workload's pod, init containers first.
fn containers(workload: &Value) -> Vec<&Value> {
    let pod = &workload["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .flat_map(|key| pod[*key].as_sequence().into_iter().flatten())
        .collect()
}

/// The agent's grace period as its container gets it: `env`, else a ConfigMap of `envFrom`.
fn grace(container: &Value, objects: &[Value]) -> Duration {
    let env = container["env"].as_sequence().into_iter().flatten();
    let from_env = env
        .filter(|v| v["name"].as_str() == Some("HERMES_GRACE_PERIOD"))
        .find_map(|v| v["value"].as_str());
    let from_maps = || {
        let sources = container["envFrom"].as_sequence().into_iter().flatten();
        sources
            .filter_map(|s| s["configMapRef"]["name"].as_str())
            .find_map(|name| {
                of_kind(objects, "ConfigMap")
                    .into_iter()
                    .find(|m| m["metadata"]["name"].as_str() == Some(name))
                    .and_then(|m| m["data"]["HERMES_GRACE_PERIOD"].as_str())
            })
    };
    from_env.or_else(from_maps).map_or(DEFAULT_GRACE, duration)
}

#[test]
fn the_pods_grace_period_outlasts_the_agents_stop() {
    let mut checked = 0;
    for (file, objects) in manifests() {
        for daemonset in of_kind(&objects, "DaemonSet") {
            let pod = &daemonset["spec"]["template"]["spec"];
            // Kubernetes' default is 30 s.
            let pods =
                Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
            let agent = &pod["containers"][0];
            let grace = grace(agent, &objects);
            assert!(
                pods >= grace + MARGIN,
                "{file}: terminationGracePeriodSeconds is {pods:?}, the agent's grace period \
                 {grace:?}: the kubelet would kill it before its stop ends"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2, "the two DaemonSets (host network and pod mode)");
}

#[test]
fn host_network_agents_run_only_on_nodes_with_an_id_and_unprivileged() {
    let manifests = manifests();
    let objects = &manifests["daemonset.yaml"];
    let daemonset = of_kind(objects, "DaemonSet")[0];
    let pod = &daemonset["spec"]["template"]["spec"];
    let selector = pod["nodeSelector"].as_mapping().expect("a nodeSelector");
    assert!(!selector.is_empty(), "an empty nodeSelector");
    let agent = &pod["containers"][0];
    let security = &agent["securityContext"];
    assert_ne!(
        security["privileged"].as_bool(),
        Some(true),
        "the agent is privileged"
    );
    let added: Vec<&str> = security["capabilities"]["add"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        added,
        ["BPF", "NET_ADMIN"],
        "the set tests/image.rs runs with"
    );
    assert!(
        security["capabilities"]["drop"]
            .as_sequence()
            .is_some_and(|drop| drop.iter().any(|c| c.as_str() == Some("ALL"))),
        "the other capabilities are not dropped"
    );
}

#[test]
fn one_image_pulled_the_same_way_everywhere() {
    let mut images = BTreeMap::new();
    for (file, objects) in manifests() {
        let workloads = [
            of_kind(&objects, "DaemonSet"),
            of_kind(&objects, "StatefulSet"),
        ];
        for workload in workloads.concat() {
            for container in containers(workload) {
                let name = container["name"].as_str().unwrap_or_default();
                let image = container["image"].as_str().unwrap_or_default();
                if workload["kind"] == "StatefulSet" && !image.contains("hermes-agent") {
                    continue; // the app's own
                }
                let policy = container["imagePullPolicy"].as_str();
                assert!(policy.is_some(), "{file}: {name} has no imagePullPolicy");
                images.insert(
                    (image.to_owned(), policy.map(str::to_owned)),
                    format!("{file}: {name}"),
                );
            }
        }
    }
    assert_eq!(
        images.len(),
        1,
        "more than one agent image or pull policy: {images:?}"
    );
}

/// A pod that gates on `hermes.io/ready` is Ready only once its group has a leader, and a group
/// of N forms only once N pods are there: a StatefulSet that makes its pods one after the
/// other (the default, OrderedReady) would wait for the first for ever.
#[test]
fn a_statefulset_gating_on_its_group_makes_its_pods_at_once() {
    let mut checked = 0;
    for (file, objects) in manifests() {
        for set in of_kind(&objects, "StatefulSet") {
            let template = &set["spec"]["template"];
            let gates = template["spec"]["readinessGates"].as_sequence();
            let gated = gates.is_some_and(|gates| {
                gates
                    .iter()
                    .any(|g| g["conditionType"].as_str() == Some("hermes.io/ready"))
            });
            let size: u64 = template["metadata"]["annotations"]["hermes.io/group-size"]
                .as_str()
                .map_or(1, |size| size.parse().unwrap());
            if gated && size > 1 {
                assert_eq!(
                    set["spec"]["podManagementPolicy"].as_str(),
                    Some("Parallel"),
                    "{file}: its pods would wait for each other"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "the example StatefulSet gates on its group");
}
