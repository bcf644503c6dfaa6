//! Which pod a process belongs to, from its cgroup (`/proc/<pid>/cgroup`), as the kubelet names
//! pod cgroups, with either cgroup driver and on cgroup v1, v2 or both:
//!
//! - cgroupfs: `/kubepods[/burstable|/besteffort]/pod<uid>/<container id>`;
//! - systemd: `/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid, - as _>.slice/
//!   <runtime>-<container id>.scope` (`cri-containerd-`, `crio-`, `docker-`).
//!
//! Anything may come before the `kubepods` part (a node inside a container has a parent).

/// Where in pod `uid`'s cgroup a process is: `Some(container id)` if in a container's cgroup,
/// `Some(None)` if in the pod's own; `None` if not in the pod at all.
pub fn container_in_pod(cgroup_file: &str, uid: &str) -> Option<Option<String>> {
    let cgroupfs = format!("pod{uid}");
    let systemd = format!("-pod{}.slice", uid.replace('-', "_"));
    for line in cgroup_file.lines() {
        // `hierarchy-id:controllers:path`; the path may itself hold colons.
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let under_kubepods = parts[..i].iter().any(|p| p.starts_with("kubepods"));
            let is_pod = (*part == cgroupfs && under_kubepods)
                || (part.starts_with("kubepods") && part.ends_with(&systemd));
            if is_pod {
                return Some(parts.get(i + 1).map(|c| container_id(c)));
            }
        }
    }
    None
}

/// The runtime's container id in a container's cgroup name.
fn container_id(part: &str) -> String {
    let part = part.strip_suffix(".scope").unwrap_or(part);
    for prefix in ["cri-containerd-", "crio-", "docker-", "containerd-"] {
        if let Some(id) = part.strip_prefix(prefix) {
            return id.to_owned();
        }
    }
    part.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b8a3c1e-5f6d-4e2a-9c7b-1d2e3f4a5b6c";

    #[test]
    fn kubelet_shapes() {
        let cgroupfs = format!("0::/kubepods/besteffort/pod{UID}/abc123\n");
        assert_eq!(
            container_in_pod(&cgroupfs, UID),
            Some(Some("abc123".into()))
        );
        let guaranteed = format!("4:memory:/kubepods/pod{UID}/def\n0::/\n");
        assert_eq!(container_in_pod(&guaranteed, UID), Some(Some("def".into())));
        let uid_ = UID.replace('-', "_");
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-abc123.scope\n"
        );
        assert_eq!(container_in_pod(&systemd, UID), Some(Some("abc123".into())));
        let crio =
            format!("1:name=systemd:/kubepods.slice/kubepods-pod{uid_}.slice/crio-fff.scope\n");
        assert_eq!(container_in_pod(&crio, UID), Some(Some("fff".into())));
        let pod_level = format!("0::/kubelet.slice/kubepods/burstable/pod{UID}\n");
        assert_eq!(container_in_pod(&pod_level, UID), Some(None));
    }

    #[test]
    fn other_pods_and_lookalikes_are_not_the_pod() {
        let other = "0::/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/abc\n";
        assert_eq!(container_in_pod(other, UID), None);
        // The uid's name outside kubepods is not the kubelet's cgroup.
        let outside = format!("0::/user.slice/pod{UID}/abc\n");
        assert_eq!(container_in_pod(&outside, UID), None);
        let prefix = format!("0::/kubepods/besteffort/pod{UID}x/abc\n");
        assert_eq!(container_in_pod(&prefix, UID), None);
        assert_eq!(container_in_pod("garbage", UID), None);
        assert_eq!(container_in_pod("", UID), None);
    }
}
