//! Tests of the CA, identities and their checks together.

use crate::*;
use std::time::{Duration, SystemTime};
use x509_parser::prelude::*;

const DAY: Duration = Duration::from_secs(86400);

fn issue(ca: &RootCa, cluster: &ClusterId, role: Role) -> (NodeId, IssuedCert) {
    let key = NodeKey::generate().unwrap();
    let node = NodeId::generate();
    let cert = ca
        .sign_node(&key.csr_der().unwrap(), &node, role, cluster, 90 * DAY)
        .unwrap();
    (node, cert)
}

#[test]
fn node_certificate_carries_ca_chosen_names() {
    let ca = RootCa::generate(20 * 365 * DAY).unwrap();
    let cluster = ClusterId::generate();
    let (node, issued) = issue(&ca, &cluster, Role::Worker);
    let (_, cert) = X509Certificate::from_der(&issued.cert_der).unwrap();
    let s = cert.subject();
    assert_eq!(
        s.iter_common_name().next().unwrap().as_str().unwrap(),
        node.as_str()
    );
    assert_eq!(
        s.iter_organizational_unit()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "shoal-worker"
    );
    assert_eq!(
        s.iter_organization().next().unwrap().as_str().unwrap(),
        cluster.as_str()
    );
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(
        sans.contains(&"DNSName(shoal-worker)".to_string()),
        "{sans:?}"
    );
    assert!(sans.contains(&format!("DNSName({node})")), "{sans:?}");
    assert!(
        sans.contains(&format!("URI(spiffe://{cluster}/node/{node})")),
        "{sans:?}"
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    let want = (90 * DAY + CERT_BACKDATE).as_secs() as i64;
    assert!((life - want).abs() <= 2, "life {life}s, want {want}s");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        cert.validity().not_before.timestamp() < now - 60,
        "backdated"
    );
}

#[test]
fn csr_subject_is_ignored() {
    // A CSR that asks to be a manager named "evil" gets what the CA decides.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["shoal-manager".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "evil");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "shoal-manager");
    let csr = params.serialize_request(&key).unwrap();
    let ca = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let node = NodeId::generate();
    let issued = ca
        .sign_node(csr.der(), &node, Role::Worker, &cluster, DAY)
        .unwrap();
    let trust = ClusterTrust::new(cluster, &[ca.cert_der().to_vec()]).unwrap();
    let id = trust
        .verify(&issued.cert_der, &[], SystemTime::now())
        .unwrap();
    assert_eq!(id.role(), Role::Worker);
    assert_eq!(id.node_id(), &node);
}

#[test]
fn verified_certificate_becomes_identity() {
    let ca = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let (node, issued) = issue(&ca, &cluster, Role::Manager);
    let trust = ClusterTrust::new(cluster.clone(), &[ca.cert_der().to_vec()]).unwrap();
    let id = trust
        .verify(&issued.cert_der, &[], SystemTime::now())
        .unwrap();
    assert_eq!(id.node_id(), &node);
    assert_eq!(id.role(), Role::Manager);
    assert_eq!(id.cluster_id(), &cluster);
    assert_eq!(id.serial(), issued.serial);
}

#[test]
fn certificate_of_another_ca_with_same_names_is_refused() {
    let ca = RootCa::generate(DAY).unwrap();
    let other = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let (_, forged) = issue(&other, &cluster, Role::Manager);
    let trust = ClusterTrust::new(cluster, &[ca.cert_der().to_vec()]).unwrap();
    let err = trust
        .verify(&forged.cert_der, &[], SystemTime::now())
        .unwrap_err();
    assert!(err.to_string().contains("chain check failed"), "{err}");
}

#[test]
fn certificate_of_another_cluster_is_refused() {
    let ca = RootCa::generate(DAY).unwrap();
    let (_, cert) = issue(&ca, &ClusterId::generate(), Role::Worker);
    let trust = ClusterTrust::new(ClusterId::generate(), &[ca.cert_der().to_vec()]).unwrap();
    let err = trust
        .verify(&cert.cert_der, &[], SystemTime::now())
        .unwrap_err();
    assert!(err.to_string().contains("is for cluster"), "{err}");
}

#[test]
fn expired_certificate_is_refused() {
    let ca = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .sign_node(
            &key.csr_der().unwrap(),
            &NodeId::generate(),
            Role::Worker,
            &cluster,
            MIN_CERT_EXPIRY,
        )
        .unwrap();
    let trust = ClusterTrust::new(cluster, &[ca.cert_der().to_vec()]).unwrap();
    let later = SystemTime::now() + Duration::from_secs(120);
    assert!(trust.verify(&cert.cert_der, &[], later).is_err());
}

#[test]
fn short_expiry_and_bad_csr_are_refused() {
    let ca = RootCa::generate(DAY).unwrap();
    let key = NodeKey::generate().unwrap();
    let c = ClusterId::generate();
    let n = NodeId::generate();
    let err = ca
        .sign_node(
            &key.csr_der().unwrap(),
            &n,
            Role::Worker,
            &c,
            Duration::from_secs(59),
        )
        .unwrap_err();
    assert!(err.to_string().contains("minimum of 1 minute"), "{err}");
    let err = ca
        .sign_node(
            &key.csr_der().unwrap(),
            &n,
            Role::Worker,
            &c,
            Duration::from_secs(u64::MAX / 4),
        )
        .unwrap_err();
    assert!(err.to_string().contains("maximum of 20 years"), "{err}");
    let err = ca
        .sign_node(b"garbage", &n, Role::Worker, &c, DAY)
        .unwrap_err();
    assert!(matches!(err, PkiError::BadCsr(_)), "{err}");
}

#[test]
fn root_round_trips_through_pem() {
    let ca = RootCa::generate(DAY).unwrap();
    let again = RootCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(again.cert_der(), ca.cert_der());
    assert_eq!(again.digest(), ca.digest());
    assert_eq!(ca.digest().len(), 50);
    let cluster = ClusterId::generate();
    let (_, cert) = issue(&again, &cluster, Role::Worker);
    let trust = ClusterTrust::new(cluster, &[ca.cert_der().to_vec()]).unwrap();
    assert!(trust.verify(&cert.cert_der, &[], SystemTime::now()).is_ok());
}

#[test]
fn csr_key_matches_only_its_own_certificate() {
    let ca = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .sign_node(
            &key.csr_der().unwrap(),
            &NodeId::generate(),
            Role::Worker,
            &cluster,
            DAY,
        )
        .unwrap();
    assert!(csr_matches_cert(&key.csr_der().unwrap(), &cert.cert_der).unwrap());
    let other = NodeKey::generate().unwrap();
    assert!(!csr_matches_cert(&other.csr_der().unwrap(), &cert.cert_der).unwrap());
}

#[test]
fn a_rotated_roots_leaves_verify_through_the_cross_signed_root() {
    let cluster = ClusterId::generate();
    let old = RootCa::generate(20 * 365 * DAY).unwrap();
    let new = RootCa::generate_named(20 * 365 * DAY, "shoal-ca 2").unwrap();
    let cross = old.cross_sign(&new).unwrap();
    let (_, leaf) = issue(&new, &cluster, Role::Worker);
    let (_, old_leaf) = issue(&old, &cluster, Role::Worker);
    let now = SystemTime::now();
    let only_old = ClusterTrust::new(cluster.clone(), &[old.cert_der().to_vec()]).unwrap();
    let only_new = ClusterTrust::new(cluster.clone(), &[new.cert_der().to_vec()]).unwrap();
    let both = ClusterTrust::new(
        cluster.clone(),
        &[old.cert_der().to_vec(), new.cert_der().to_vec()],
    )
    .unwrap();
    let cross_der = rustls::pki_types::CertificateDer::from(cross.clone());
    // A node that trusts only the old root accepts the new root's leaf with the
    // cross-signed certificate, and not without it.
    only_old
        .verify(&leaf.cert_der, std::slice::from_ref(&cross_der), now)
        .unwrap();
    assert!(only_old.verify(&leaf.cert_der, &[], now).is_err());
    only_new.verify(&leaf.cert_der, &[], now).unwrap();
    both.verify(&leaf.cert_der, &[], now).unwrap();
    both.verify(&old_leaf.cert_der, &[], now).unwrap();
    // Once the old root is dropped, its leaves are refused.
    assert!(only_new.verify(&old_leaf.cert_der, &[], now).is_err());
    // The cross-signed certificate names the new root's key and subject.
    assert_eq!(
        cert_key_digest(&cross).unwrap(),
        cert_key_digest(new.cert_der()).unwrap()
    );
    let c = CertSummary::parse(&cross).unwrap();
    assert!(c.subject.contains("shoal-ca 2"), "{}", c.subject);
    assert!(c.issuer.contains("CN=shoal-ca") && !c.issuer.contains("2"));
}

#[test]
fn an_operator_root_must_be_one_ca_certificate_with_its_key_and_a_year_of_life() {
    let a = RootCa::generate(20 * 365 * DAY).unwrap();
    let b = RootCa::generate(20 * 365 * DAY).unwrap();
    let ok = RootCa::from_operator_pem(&a.cert_pem(), &a.key_pem()).unwrap();
    assert!(ok.same_key(&a));
    assert!(!ok.same_key(&b));
    let err = |r: Result<RootCa, PkiError>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let two = format!("{}{}", a.cert_pem(), b.cert_pem());
    assert!(err(RootCa::from_operator_pem(&two, &a.key_pem())).contains("holds 2 certificates"));
    assert!(
        err(RootCa::from_operator_pem(&a.cert_pem(), &b.key_pem())).contains("key does not belong")
    );
    let short = RootCa::generate(30 * DAY).unwrap();
    assert!(err(RootCa::from_operator_pem(
        &short.cert_pem(),
        &short.key_pem()
    ))
    .contains("expires within a year"));
    let cluster = ClusterId::generate();
    let (_, leaf) = issue(&a, &cluster, Role::Worker);
    assert!(err(RootCa::from_operator_pem(&leaf.cert_pem, &a.key_pem()))
        .contains("not a CA certificate"));
    assert!(err(RootCa::from_operator_pem("garbage", &a.key_pem())).contains("CERTIFICATE"));
}

#[test]
fn key_digests_of_a_csr_and_its_certificate_agree() {
    let ca = RootCa::generate(20 * 365 * DAY).unwrap();
    let key = NodeKey::generate().unwrap();
    let csr = key.csr_der().unwrap();
    let cert = ca
        .sign_node(
            &csr,
            &NodeId::generate(),
            Role::Worker,
            &ClusterId::generate(),
            DAY,
        )
        .unwrap();
    assert_eq!(
        csr_key_digest(&csr).unwrap(),
        cert_key_digest(&cert.cert_der).unwrap()
    );
    assert_eq!(cert.key_digest, cert_key_digest(&cert.cert_der).unwrap());
    let other = NodeKey::generate().unwrap().csr_der().unwrap();
    assert_ne!(
        csr_key_digest(&other).unwrap(),
        cert_key_digest(&cert.cert_der).unwrap()
    );
}

/// A leaf signed by a root whose key the test holds, with names the test chooses.
fn crafted_leaf(
    root_cert: &rcgen::Certificate,
    root_key: &rcgen::KeyPair,
    cn: &str,
    ou: &str,
    o: &str,
    dns: &[&str],
) -> Vec<u8> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer};
    let mut p =
        CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationalUnitName, ou);
    dn.push(DnType::OrganizationName, o);
    p.distinguished_name = dn;
    p.subject_alt_names.push(rcgen::SanType::URI(
        format!("spiffe://{o}/node/{cn}").try_into().unwrap(),
    ));
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = Issuer::from_ca_cert_der(root_cert.der(), root_key).unwrap();
    p.signed_by(&key, &issuer).unwrap().der().to_vec()
}

#[test]
fn a_forged_or_inconsistent_role_is_refused_even_under_a_trusted_root() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa};
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut rp = CertificateParams::new(Vec::<String>::new()).unwrap();
    rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = rp.self_signed(&root_key).unwrap();
    let cluster = ClusterId::generate();
    let trust = ClusterTrust::new(cluster.clone(), &[root.der().to_vec()]).unwrap();
    let node = NodeId::generate();
    let (n, c) = (node.as_str(), cluster.as_str());
    let now = SystemTime::now();
    let check = |der: Vec<u8>| trust.verify(&der, &[], now).map_err(|e| e.to_string());

    // Consistent names under the trusted root: accepted (the harness is sound).
    let ok = check(crafted_leaf(
        &root,
        &root_key,
        n,
        "shoal-worker",
        c,
        &["shoal-worker", n],
    ));
    assert_eq!(ok.unwrap().role(), Role::Worker);
    // OU says manager, SANs say worker.
    let e = check(crafted_leaf(
        &root,
        &root_key,
        n,
        "shoal-manager",
        c,
        &["shoal-worker", n],
    ))
    .unwrap_err();
    assert!(e.contains("does not match role"), "{e}");
    // A role that does not exist.
    let e = check(crafted_leaf(
        &root,
        &root_key,
        n,
        "shoal-admin",
        c,
        &["shoal-admin", n],
    ))
    .unwrap_err();
    assert!(e.contains("unknown role OU"), "{e}");
}

fn issue_user(ca: &RootCa, cluster: &ClusterId, name: &str) -> (NodeKey, IssuedCert) {
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .sign_user(
            &key.csr_der().unwrap(),
            &UserName::parse(name).unwrap(),
            cluster,
            DAY / 2,
        )
        .unwrap();
    (key, cert)
}

#[test]
fn user_certificate_names_the_user_and_no_host_and_is_for_clients_only() {
    let ca = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let (_, issued) = issue_user(&ca, &cluster, "alice");
    let (_, cert) = X509Certificate::from_der(&issued.cert_der).unwrap();
    let s = cert.subject();
    assert_eq!(
        s.iter_common_name().next().unwrap().as_str().unwrap(),
        "alice"
    );
    assert_eq!(
        s.iter_organizational_unit()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "shoal-user"
    );
    assert_eq!(
        s.iter_organization().next().unwrap().as_str().unwrap(),
        cluster.as_str()
    );
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|g| g.to_string())
        .collect();
    assert_eq!(names, [format!("URI(spiffe://{cluster}/user/alice)")]);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!cert.is_ca());
}

#[test]
fn a_user_certificate_never_passes_for_a_node_nor_a_node_certificate_for_a_user() {
    let ca = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let trust = ClusterTrust::new(cluster.clone(), &[ca.cert_der().to_vec()]).unwrap();
    let now = SystemTime::now();
    let (_, user) = issue_user(&ca, &cluster, "alice");
    let (node, worker) = issue(&ca, &cluster, Role::Worker);
    let (manager, mgr) = issue(&ca, &cluster, Role::Manager);

    let id = trust.verify_user(&user.cert_der, &[], now).unwrap();
    assert_eq!(id.name().as_str(), "alice");
    assert_eq!(id.cluster_id(), &cluster);
    assert_eq!(id.serial(), user.serial);
    assert_eq!(id.key_digest(), user.key_digest);
    assert_eq!(
        trust.verify_peer(&user.cert_der, &[], now).unwrap(),
        Peer::User(id)
    );
    let e = trust
        .verify(&user.cert_der, &[], now)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("user certificate of alice") && e.contains("cannot act as a node"),
        "{e}"
    );

    for (cert, who, role) in [(worker, node, "worker"), (mgr, manager, "manager")] {
        let e = trust
            .verify_user(&cert.cert_der, &[], now)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("certificate of {role} node {who}"))
                && e.contains("cannot act as a user")
                && e.contains("shoal login"),
            "{e}"
        );
        assert!(matches!(
            trust.verify_peer(&cert.cert_der, &[], now).unwrap(),
            Peer::Node(n) if n.node_id() == &who
        ));
    }
}

#[test]
fn a_user_certificate_of_another_cluster_or_ca_or_past_its_life_is_refused() {
    let ca = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let trust = ClusterTrust::new(cluster.clone(), &[ca.cert_der().to_vec()]).unwrap();
    let now = SystemTime::now();
    let (_, foreign) = issue_user(&ca, &ClusterId::generate(), "alice");
    let e = trust.verify_user(&foreign.cert_der, &[], now).unwrap_err();
    assert!(e.to_string().contains("is for cluster"), "{e}");
    let (_, other_ca) = issue_user(&RootCa::generate(DAY).unwrap(), &cluster, "alice");
    let e = trust.verify_peer(&other_ca.cert_der, &[], now).unwrap_err();
    assert!(e.to_string().contains("chain check failed"), "{e}");
    let (_, mine) = issue_user(&ca, &cluster, "alice");
    assert!(trust.verify_user(&mine.cert_der, &[], now).is_ok());
    let e = trust
        .verify_user(&mine.cert_der, &[], now + DAY)
        .unwrap_err();
    assert!(e.to_string().contains("chain check failed"), "{e}");
}

#[test]
fn user_names_are_checked() {
    for good in ["alice", "a", "ops.team_1-b", &"a".repeat(63)] {
        assert!(UserName::parse(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "Alice",
        "1alice",
        "al ice",
        "al/ice",
        "é",
        &"a".repeat(64),
        "-a",
    ] {
        let e = UserName::parse(bad).unwrap_err().to_string();
        assert!(e.contains("invalid user name"), "{bad}: {e}");
    }
}

/// A user leaf signed by a root the test holds, with names and uses the test chooses.
fn crafted_user(
    root_cert: &rcgen::Certificate,
    root_key: &rcgen::KeyPair,
    cluster: &str,
    uri: &str,
    dns: &[&str],
    server: bool,
) -> Vec<u8> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer};
    let mut p =
        CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "alice");
    dn.push(DnType::OrganizationalUnitName, "shoal-user");
    dn.push(DnType::OrganizationName, cluster);
    p.distinguished_name = dn;
    p.subject_alt_names
        .push(rcgen::SanType::URI(uri.to_string().try_into().unwrap()));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if server {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = Issuer::from_ca_cert_der(root_cert.der(), root_key).unwrap();
    p.signed_by(&key, &issuer).unwrap().der().to_vec()
}

#[test]
fn a_user_certificate_with_a_host_name_a_server_use_or_another_name_is_refused() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa};
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut rp = CertificateParams::new(Vec::<String>::new()).unwrap();
    rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = rp.self_signed(&root_key).unwrap();
    let cluster = ClusterId::generate();
    let trust = ClusterTrust::new(cluster.clone(), &[root.der().to_vec()]).unwrap();
    let c = cluster.as_str();
    let uri = format!("spiffe://{c}/user/alice");
    let now = SystemTime::now();
    let check = |der: Vec<u8>| trust.verify_user(&der, &[], now).map_err(|e| e.to_string());

    // The harness is sound: consistent names are accepted.
    assert!(check(crafted_user(&root, &root_key, c, &uri, &[], false)).is_ok());
    let e = check(crafted_user(
        &root,
        &root_key,
        c,
        &uri,
        &["shoal-manager"],
        false,
    ))
    .unwrap_err();
    assert!(e.contains("names the host shoal-manager"), "{e}");
    let e = check(crafted_user(&root, &root_key, c, &uri, &[], true)).unwrap_err();
    assert!(e.contains("client authentication only"), "{e}");
    let bob = format!("spiffe://{c}/user/bob");
    let e = check(crafted_user(&root, &root_key, c, &bob, &[], false)).unwrap_err();
    assert!(e.contains("must be exactly"), "{e}");
    let node_uri = format!("spiffe://{c}/node/alice");
    let e = check(crafted_user(&root, &root_key, c, &node_uri, &[], false)).unwrap_err();
    assert!(e.contains("must be exactly"), "{e}");
}

/// Runs a TLS handshake in memory; the error of whichever side refused.
fn handshake(client: rustls::ClientConfig, server: rustls::ServerConfig) -> Result<(), String> {
    let name = rustls::pki_types::ServerName::try_from(MANAGER_SERVER_NAME).unwrap();
    let mut c = rustls::ClientConnection::new(std::sync::Arc::new(client), name).unwrap();
    let mut s = rustls::ServerConnection::new(std::sync::Arc::new(server)).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets()
            .map_err(|e| format!("server: {e}"))?;
        let mut buf = Vec::new();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut &buf[..]).unwrap();
        c.process_new_packets()
            .map_err(|e| format!("client: {e}"))?;
        if !c.is_handshaking() && !s.is_handshaking() {
            // The client's last flight (its certificate) reaches the server.
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
            return Ok(());
        }
    }
    Err("the handshake did not finish".into())
}

#[test]
fn a_user_certificate_is_accepted_as_a_client_and_cannot_serve() {
    install_crypto_provider();
    let ca = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let trust = ClusterTrust::new(cluster.clone(), &[ca.cert_der().to_vec()]).unwrap();
    let (mkey, mgr) = {
        let key = NodeKey::generate().unwrap();
        let cert = ca
            .sign_node(
                &key.csr_der().unwrap(),
                &NodeId::generate(),
                Role::Manager,
                &cluster,
                DAY / 2,
            )
            .unwrap();
        (key, cert)
    };
    let (ukey, user) = issue_user(&ca, &cluster, "alice");
    let server = |chain: &IssuedCert, key: &NodeKey| {
        server_config(
            &trust,
            std::slice::from_ref(&chain.cert_der),
            &key.pkcs8_der(),
            None,
        )
        .unwrap()
    };
    let client = |chain: &IssuedCert, key: &NodeKey| {
        client_config(
            trust.roots(),
            Some((std::slice::from_ref(&chain.cert_der), &key.pkcs8_der())),
        )
        .unwrap()
    };
    // A user's client reaches a manager.
    handshake(client(&user, &ukey), server(&mgr, &mkey)).unwrap();
    // A manager's client does not take a user's certificate for a manager's.
    let e = handshake(client(&mgr, &mkey), server(&user, &ukey)).unwrap_err();
    assert!(e.starts_with("client:"), "{e}");
}

#[test]
fn a_workload_certificate_is_an_svid_and_neither_a_node_nor_a_user() {
    let ca = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let trust = ClusterTrust::new(cluster.clone(), &[ca.cert_der().to_vec()]).unwrap();
    let key = NodeKey::generate().unwrap();
    let issued = ca
        .sign_workload(
            &key.csr_der().unwrap(),
            &cluster,
            Some("shop"),
            "shop_web",
            Duration::from_secs(3600),
        )
        .unwrap();
    let (_, cert) = X509Certificate::from_der(&issued.cert_der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|g| g.to_string())
        .collect();
    assert_eq!(
        names,
        [format!(
            "URI(spiffe://{cluster}/stack/shop/service/shop_web)"
        )]
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && eku.server_auth);
    assert!(!cert.is_ca());
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
    // A task in no stack: "_".
    let plain = ca
        .sign_workload(
            &key.csr_der().unwrap(),
            &cluster,
            None,
            "web",
            Duration::from_secs(3600),
        )
        .unwrap();
    let (_, c) = X509Certificate::from_der(&plain.cert_der).unwrap();
    let san = c.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names[0].to_string(),
        format!("URI(spiffe://{cluster}/stack/_/service/web)")
    );
    // Never a node, never a user.
    let now = SystemTime::now();
    let e = trust
        .verify(&issued.cert_der, &[], now)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("workload certificate of service shop_web")
            && e.contains("cannot act as a node"),
        "{e}"
    );
    let e = trust
        .verify_user(&issued.cert_der, &[], now)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot act as a user"), "{e}");
    assert!(trust.verify_peer(&issued.cert_der, &[], now).is_err());
    // A name that cannot be a SPIFFE path segment is refused.
    let e = ca
        .sign_workload(
            &key.csr_der().unwrap(),
            &cluster,
            Some("a/b"),
            "web",
            Duration::from_secs(3600),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot name a workload identity"), "{e}");
}
