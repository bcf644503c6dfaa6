//! `nginx-proxy`: the log app on loopback behind Debian's nginx as a keep-alive reverse proxy,
//! which clients reach on the node's address: what a conventional proxy costs, next to Hermes'
//! interception.
use std::{net::SocketAddr, path::Path, process::Stdio};

use anyhow::{Context as _, bail};
use hermes_lab::{Node, Process, cluster::PORT};

use super::{Deployment, hermes};
use crate::bench::{api::Api, probe};

const NGINX: &str = "/usr/sbin/nginx";
/// Where nginx listens (the app keeps the protected port on loopback).
const PROXY_PORT: u16 = 8081;

pub fn deploy(bin: &Path) -> anyhow::Result<Deployment> {
    // The log app as a Hermes node runs it, on loopback, without an agent.
    let mut cluster = hermes::cluster(1, bin, &[])?;
    cluster.start_app(1).context("starting the log app")?;
    let node = cluster.lab.node(1);
    let files = tempfile::tempdir().context("creating a temporary directory")?;
    let prefix = files.path();
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, config(prefix, node)).context("writing nginx.conf")?;
    check_config(node, &conf, prefix)?;
    let mut command = node.command(NGINX).context("entering node 1")?;
    command
        .args(["-e", "stderr", "-c"])
        .arg(&conf)
        .arg("-p")
        .arg(prefix)
        .args(["-g", "daemon off;"]);
    let nginx = Process::spawn("nginx on node 1", command)?;
    let target = SocketAddr::new(node.ip.into(), PROXY_PORT);
    probe::wait_answering(target, &Api::LogApp.probe())
        .with_context(|| format!("nginx did not come up; it printed:\n{}", nginx.tail(20)))?;
    Ok(Deployment {
        targets: vec![target],
        api: Api::LogApp,
        app_pids: cluster.app(1).map(|app| app.pid()).into_iter().collect(),
        // The master; the workers that do the proxying are its children.
        proxy_pids: vec![nginx.pid()],
        counts: None,
        nodes: 0,
        _running: Box::new((nginx, cluster, files)),
    })
}

/// `nginx -t`, so that a bad configuration fails with nginx's own explanation.
fn check_config(node: &Node, conf: &Path, prefix: &Path) -> anyhow::Result<()> {
    let output = node
        .command(NGINX)
        .context("entering node 1")?
        .args(["-e", "stderr", "-t", "-c"])
        .arg(conf)
        .arg("-p")
        .arg(prefix)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {NGINX} (install Debian's nginx-light)"))?;
    if !output.status.success() {
        bail!(
            "nginx rejects its configuration {}:\n{}",
            conf.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Everything nginx writes stays under `prefix`, so that it needs nothing from the system's
/// configuration and leaves nothing behind.
fn config(prefix: &Path, node: &Node) -> String {
    let prefix = prefix.display();
    format!(
        r#"# Written by `cargo xtask bench`.
# Root owns the temporary directory; workers running as `nobody` could not use it.
user root;
# One worker per core, like the other setups' processes, which all share the two cores.
worker_processes 2;
pid {prefix}/nginx.pid;
error_log stderr error;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    upstream app {{
        server 127.0.0.1:{PORT};
        # Keep-alive connections to the app, as many as the load generator opens at most: the
        # passthrough agent relays each client connection over one app connection, and nginx
        # with a smaller idle pool would open and close an app connection per request under
        # load, until it runs out of local ports.
        keepalive 1536;
    }}

    server {{
        listen {ip}:{PROXY_PORT};
        location / {{
            proxy_pass http://app;
            # Keep-alive towards the app needs HTTP/1.1 and no `Connection: close`.
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#,
        ip = node.ip
    )
}
