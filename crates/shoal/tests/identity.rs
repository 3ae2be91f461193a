//! Issue #24 point 6: every task's own X.509 identity (an SVID). Two services of
//! Debian's openssl authenticate each other with mutual TLS and read each other's
//! service name; the identity is renewed without restarting the task; a node gets one
//! only for its own tasks that are to run, and it passes for no node and no user.

mod common;

use common::raw::{self, Identity};
use common::*;
use std::time::Duration;

const DIR: &str = "/run/secrets/shoal";

/// The ID of the first task of `service` that is running.
fn running_task(tb: &shoal_testbed::Testbed, service: &str) -> String {
    shoal_testbed::wait_for(Duration::from_secs(60), || {
        let out = tb
            .cli_ok(0, &["service", "ps", "--format", "json", service])
            .ok()?;
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|t| {
                t["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.to_lowercase().starts_with("running"))
            })
            .and_then(|t| t["ID"].as_str().map(str::to_string))
    })
    .unwrap_or_else(|| panic!("no running task of {service}\n{}", tb.all_logs()))
}

fn exec(tb: &shoal_testbed::Testbed, task: &str, script: &str) -> shoal_testbed::CliOutput {
    tb.cli(0, &["task", "exec", task, "sh", "-c", script])
}

#[test]
fn two_services_authenticate_each_other_with_their_workload_identities() {
    let tb = ha_cluster(1, 2);
    let tar = shoal_testbed::debian_rootfs_tar(tb.dir(), "openssl", &["openssl"]).unwrap();
    for i in 0..3 {
        tb.cli_ok(
            i,
            &["image", "import", tar.to_str().unwrap(), "openssl:latest"],
        )
        .unwrap();
    }
    // Short certificates: renewed at half their life, about 30 s.
    tb.cli_ok(0, &["update", "--workload-cert-expiry", "1m"])
        .unwrap();
    let cluster = {
        let info: serde_json::Value =
            serde_json::from_str(&tb.cli_ok(0, &["info", "--format", "json"]).unwrap()).unwrap();
        info["ClusterID"].as_str().unwrap().to_string()
    };
    tb.cli_ok(0, &["network", "create", "mesh"]).unwrap();
    let files = format!("-cert {DIR}/svid.pem -key {DIR}/svid.key -CAfile {DIR}/bundle.pem");
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "tlsserver",
            "--network",
            "mesh",
            "--constraint",
            &format!("node.hostname=={}", tb.nodes[1].name),
            "openssl",
            "sh",
            "-c",
            &format!(
                "exec openssl s_server -accept 8443 {files} -Verify 1 -verify_return_error -www"
            ),
        ],
    )
    .unwrap();
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "tlsclient",
            "--network",
            "mesh",
            "--constraint",
            &format!("node.hostname=={}", tb.nodes[2].name),
            "openssl",
            "sleep",
            "100000",
        ],
    )
    .unwrap();
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "anonymous",
            "--no-identity",
            "--network",
            "mesh",
            "openssl",
            "sleep",
            "100000",
        ],
    )
    .unwrap();
    let server = running_task(&tb, "tlsserver");
    let client = running_task(&tb, "tlsclient");
    let anonymous = running_task(&tb, "anonymous");

    // The client's files: an SVID naming its service, in a read-only directory.
    let o = exec(
        &tb,
        &client,
        &format!("openssl x509 -noout -ext subjectAltName -in {DIR}/svid.pem"),
    );
    assert!(o.success, "{}", o.stderr);
    let client_id = format!("spiffe://{cluster}/stack/_/service/tlsclient");
    assert!(
        o.stdout.contains(&format!("URI:{client_id}")),
        "{}",
        o.stdout
    );
    let o = exec(&tb, &client, &format!("echo x > {DIR}/svid.pem"));
    assert!(!o.success, "the identity is writable");
    let o = exec(&tb, &anonymous, &format!("ls {DIR}"));
    assert!(
        !o.success,
        "a task with --no-identity has {DIR}: {}",
        o.stdout
    );

    // Mutual TLS: the server (which demands a client certificate) shows the client's
    // identity, and the client checks the server's against the bundle and reads its name.
    let call = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -connect tlsserver:8443 {files} -verify_return_error -ign_eof -quiet 2>&1"
    );
    let talk = || {
        shoal_testbed::wait_for(Duration::from_secs(30), || {
            let o = exec(&tb, &client, &call);
            o.stdout.contains("Client certificate").then_some(o.stdout)
        })
        .unwrap_or_else(|| panic!("{}", exec(&tb, &client, &call).stdout))
    };
    let page = talk();
    assert!(page.contains(&format!("URI:{client_id}")), "{page}");
    let o = exec(
        &tb,
        &client,
        &format!("openssl s_client -connect tlsserver:8443 {files} -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"),
    );
    assert!(
        o.stdout
            .contains(&format!("URI:spiffe://{cluster}/stack/_/service/tlsserver")),
        "{}{}",
        o.stdout,
        o.stderr
    );
    // Without a certificate the server refuses the client.
    let o = exec(
        &tb,
        &client,
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -connect tlsserver:8443 -CAfile {DIR}/bundle.pem -ign_eof -quiet 2>&1"),
    );
    assert!(!o.stdout.contains("Client certificate"), "{}", o.stdout);

    // Renewed before it expires, in place: same task, a new certificate, still working.
    let serial = |t: &str| {
        exec(
            &tb,
            t,
            &format!("openssl x509 -noout -serial -in {DIR}/svid.pem"),
        )
        .stdout
        .trim()
        .to_string()
    };
    let before = serial(&client);
    let renewed = shoal_testbed::wait_for(Duration::from_secs(90), || {
        let now = serial(&client);
        (!now.is_empty() && now != before).then_some(now)
    });
    assert!(renewed.is_some(), "not renewed in 90 s\n{}", tb.all_logs());
    assert_eq!(
        running_task(&tb, "tlsclient"),
        client,
        "the task was replaced"
    );
    let page = talk();
    assert!(page.contains(&format!("URI:{client_id}")), "{page}");

    // A node gets an identity only for its own tasks, and only while they are to run.
    let worker1 = Identity::of_node(&tb, 1);
    let worker2 = Identity::of_node(&tb, 2);
    let (svid, resp) = raw::issue_workload(&tb, 1, &worker1, &server).unwrap();
    assert_eq!(
        resp.spiffe_id,
        format!("spiffe://{cluster}/stack/_/service/tlsserver")
    );
    let e = raw::issue_workload(&tb, 2, &worker2, &server)
        .err()
        .expect("a worker got the identity of another worker's task");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("is not assigned to node"),
        "{}",
        e.message()
    );
    // An SVID is no node certificate: the managers' listener ends the handshake.
    assert!(
        raw::heartbeat(&tb, 1, &svid).is_err(),
        "a workload certificate made a node's call"
    );
    assert!(
        tb.log(0)
            .contains("workload certificate of service tlsserver"),
        "the manager does not say why it refused the SVID"
    );
    tb.cli_ok(0, &["service", "rm", "tlsserver"]).unwrap();
    let refused = shoal_testbed::wait_for(Duration::from_secs(30), || {
        raw::issue_workload(&tb, 1, &worker1, &server).err()
    })
    .unwrap();
    assert!(
        matches!(
            refused.code(),
            tonic::Code::NotFound | tonic::Code::FailedPrecondition
        ),
        "{refused:?}"
    );
}
